//! `cyb tokenize`, `--data` and resumable runs end to end through the binary: streaming
//! under a memory limit smaller than the input, a Hugging Face tokenizer with a fixed
//! token order for any number of threads, version 1 refusing a large vocabulary,
//! SIGINT saving a snapshot that resumes, a second SIGINT exiting at once, and SIGKILL
//! during saves leaving the newest snapshot whole.

use cyb::shards::{Shard, HEADER_BYTES};
use cyb::train_state::{list_snapshots, load_snapshot};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CYB: &str = env!("CARGO_BIN_EXE_cyb");

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cyb-cli-shards-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// All tokens of the shards in a folder: validation first, then training, in order.
fn read_tokens(dir: &Path, vocab: usize) -> Vec<u32> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort_by_key(|p| (!cyb::shards::is_validation(p), p.clone()));
    let mut out = Vec::new();
    for f in files {
        let shard = Shard::open(&f, vocab).unwrap();
        out.extend((0..shard.len()).map(|i| shard.token(i)));
    }
    out
}

#[test]
fn tokenize_streams_under_a_memory_limit_smaller_than_its_input() {
    let dir = tmpdir("memlimit");
    let readme = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let input = dir.join("big.txt");
    // The binary's own mappings and two threads' windows of pieces (text and tokens)
    // take ~50 MB of address space (it runs at 50 MiB, fails at 40).
    let limit_kb = 80 * 1024;
    let copies = (limit_kb * 1024 * 3 / 2) / readme.len() + 1;
    std::fs::write(&input, readme.repeat(copies)).unwrap();
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(
        size > (limit_kb * 1024) as u64,
        "the input must exceed the limit"
    );
    let out = dir.join("shards");
    // Address space, not resident memory: the strictest limit there is. glibc's malloc
    // is made to spend address space on live buffers only, the same in every run: one
    // arena (a second one reserves 64 MiB at the first allocation of a worker thread,
    // when the address space left allows it, which depends on timing: under load the
    // run then failed or hung) and a fixed mmap threshold (large buffers mapped and
    // unmapped, not kept in a heap whose growth depends on the order of frees).
    // `timeout`: a hang fails the test instead of stalling it.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v {limit_kb} && exec timeout 300 \"$0\" tokenize \"$1\" --bytes \
             --out \"$2\" --val-tokens 5000 --shard-tokens 20000000"
        ))
        .args([CYB, s(&input), s(&out)])
        .env("MALLOC_ARENA_MAX", "1")
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        // The window of pieces in memory grows with the threads: fixed here.
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let tokens = read_tokens(&out, 256);
    assert_eq!(tokens.len() as u64, size);
    let text = std::fs::read(&input).unwrap();
    assert!(tokens.iter().zip(&text).all(|(&t, &b)| t == b as u32));
    let val = Shard::open(&out.join("val_000000.bin"), 256).unwrap();
    assert_eq!(val.len(), 5000);
    assert!(out.join("train_000002.bin").exists());
    // And the same input under the limit fails loudly when the limit is far too low
    // for the binary itself (the limit is real).
    let o = Command::new("bash")
        .arg("-c")
        .arg("ulimit -v 2000 && exec \"$0\" tokenize \"$1\" --bytes --out \"$2\"")
        .args([CYB, s(&input), s(&dir.join("none"))])
        .output()
        .unwrap();
    assert!(!o.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A WordLevel tokenizer.json (whitespace pre-tokenizer) with `<|endoftext|>` = 0,
/// `[UNK]` = 1 and the words `w0`, `w1`, ... from 2 on.
fn word_tokenizer(path: &Path, words: usize) {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    vocab.insert("[UNK]".into(), 1.into());
    for i in 0..words {
        vocab.insert(format!("w{i}"), (i + 2).into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(path, json.to_string()).unwrap();
}

/// Through HF's tokenizer: every file preceded by `<|endoftext|>`, words in input order
/// (several 1 MiB pieces tokenized in parallel), the same bytes for 1 and 3 threads.
#[test]
fn tokenize_with_a_hugging_face_tokenizer_keeps_document_order() {
    let dir = tmpdir("hf");
    let tok = dir.join("tokenizer.json");
    word_tokenizer(&tok, 50);
    let mut want = Vec::new();
    let mut files = Vec::new();
    for (f, n) in [(0usize, 1_000_000usize), (1, 1000)] {
        want.push(0u32);
        let mut text = String::new();
        for i in 0..n {
            let w = (i * 7 + f * 3) % 53; // w50..w52 are unknown
            text.push_str(&format!("w{w}"));
            text.push(if i % 11 == 10 { '\n' } else { ' ' });
            want.push(if w < 50 { w as u32 + 2 } else { 1 });
        }
        let p = dir.join(format!("doc{f}.txt"));
        std::fs::write(&p, text).unwrap();
        files.push(p);
    }
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 3 << 20);
    let mut shard_bytes = Vec::new();
    for threads in ["1", "3"] {
        let out = dir.join(format!("out{threads}"));
        let o = Command::new(CYB)
            .args([
                "tokenize",
                s(&files[0]),
                s(&files[1]),
                "--tokenizer",
                s(&tok),
            ])
            .args([
                "--out",
                s(&out),
                "--val-tokens",
                "1000",
                "--shard-tokens",
                "300000",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(read_tokens(&out, 52), want);
        let meta = cyb::shards::ShardMeta::read(&out).unwrap().unwrap();
        assert_eq!((meta.vocab, meta.eot), (52, Some(0)));
        assert_eq!(meta.val_tokens + meta.train_tokens, want.len() as u64);
        let names = ["val_000000.bin", "train_000000.bin", "train_000002.bin"];
        shard_bytes.push(names.map(|n| std::fs::read(out.join(n)).unwrap()));
    }
    assert_eq!(
        shard_bytes[0], shard_bytes[1],
        "the thread count changed the shards"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_1_refuses_a_vocabulary_above_65535() {
    let dir = tmpdir("v1");
    let tok = dir.join("tokenizer.json");
    word_tokenizer(&tok, 70_000);
    let input = dir.join("t.txt");
    std::fs::write(&input, "w0 w69999 w5\n").unwrap();
    let o = Command::new(CYB)
        .args(["tokenize", s(&input), "--tokenizer", s(&tok), "--out"])
        .arg(dir.join("a"))
        .args(["--shard-version", "1"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("65535") && e.contains("70002"),
        "{e}"
    );
    let o = Command::new(CYB)
        .args(["tokenize", s(&input), "--tokenizer", s(&tok), "--out"])
        .arg(dir.join("b"))
        .args(["--val-tokens", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(dir.join("b/train_000000.bin")).unwrap();
    assert_eq!(bytes[4], 2, "version 2 (u32 tokens)");
    assert_eq!(bytes.len(), HEADER_BYTES + 4 * 4);
    assert_eq!(read_tokens(&dir.join("b"), 70_002), vec![0, 2, 70_001, 7]);
    // A folder with shards already is refused (they would mix with the new ones).
    let o = Command::new(CYB)
        .args(["tokenize", s(&input), "--tokenizer", s(&tok), "--out"])
        .arg(dir.join("b"))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("already holds token shards"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Byte shards of the README for the training tests.
fn shards_for_training(dir: &Path) -> PathBuf {
    let input = dir.join("corpus.txt");
    let readme = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    std::fs::write(&input, readme.repeat(3)).unwrap();
    let out = dir.join("shards");
    let o = Command::new(CYB)
        .args(["tokenize", s(&input), "--bytes", "--out", s(&out)])
        .args(["--val-tokens", "20000"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// `cyb train` on the shards, saving to `save`, its stderr read line by line.
fn spawn_train(shards: &Path, save: &Path, model: &[&str], extra: &[&str]) -> Child {
    Command::new(CYB)
        .args(["train", "--data", s(shards), "--save", s(save)])
        .args([
            "--steps",
            "100000",
            "--eval-every",
            "0",
            "--eval-batches",
            "1",
        ])
        .args(model)
        .args(extra)
        .env("CYB_PROGRESS_SECS", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads `child`'s stderr until a line contains `needle`; returns every line read and
/// the reader to continue with.
fn wait_for_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for l in lines {
        let l = l.unwrap();
        let hit = l.contains(needle);
        seen.push(l);
        if hit {
            return seen;
        }
    }
    panic!("the run ended without printing '{needle}': {seen:#?}");
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

const SMALL: &[&str] = &[
    "--batch",
    "2",
    "--ctx",
    "16",
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
];

/// SIGINT: a snapshot at the next step boundary, exit 130, a message with the command
/// that resumes; that command continues from the snapshot's step.
#[test]
fn sigint_saves_a_snapshot_that_resumes() {
    let dir = tmpdir("sigint");
    let shards = shards_for_training(&dir);
    let save = dir.join("model.safetensors");
    let mut child = spawn_train(&shards, &save, SMALL, &[]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for_line(&mut lines, "step 3/");
    signal(&child, "-INT");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:#?}");
    let text = rest.join("\n");
    let cmd = rest
        .iter()
        .find_map(|l| l.strip_prefix("resume with: "))
        .unwrap_or_else(|| panic!("no resume command: {text}"));
    let snaps = list_snapshots(&save).unwrap();
    assert_eq!(snaps.len(), 1, "{text}");
    let (step, snap) = snaps[0].clone();
    assert!(
        text.contains(&format!("stopped at step {step} of 100000")),
        "{text}"
    );
    assert!(
        cmd.ends_with(&format!("--resume {}", snap.display())),
        "{cmd}"
    );
    assert!(!save.exists(), "the final model is written only at the end");
    let (_, state) = load_snapshot(&snap).unwrap();
    assert_eq!(state.step, step);
    // Resume with the same flags (the printed command) and stop again.
    let mut child = spawn_train(&shards, &save, SMALL, &["--resume", s(&snap)]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for_line(&mut lines, &format!("resuming at step {step} of 100000"));
    wait_for_line(&mut lines, &format!("step {}/", step + 2));
    signal(&child, "-TERM");
    let _: Vec<_> = lines.collect();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let later = list_snapshots(&save).unwrap();
    assert!(later.last().unwrap().0 >= step + 2, "{later:?}");
    // A changed batch size is refused by name.
    let mut other = SMALL.to_vec();
    other[1] = "3";
    let o = Command::new(CYB)
        .args(["train", "--data", s(&shards), "--save", s(&save)])
        .args([
            "--steps",
            "100000",
            "--eval-every",
            "0",
            "--eval-batches",
            "1",
        ])
        .args(&other)
        .args(["--resume", s(&snap)])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("batch: snapshot 2, now 3"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two SIGINTs in a row: the second exits at once, before the step boundary, so
/// nothing is saved and no "stopped" message printed.
#[test]
fn a_second_sigint_exits_at_once() {
    let dir = tmpdir("sigint2");
    let shards = shards_for_training(&dir);
    let save = dir.join("model.safetensors");
    // Steps of ~1 s (0.5 s on an idle machine), so both signals land inside one step.
    let big = [
        "--batch",
        "16",
        "--ctx",
        "64",
        "--d-model",
        "128",
        "--layers",
        "2",
        "--heads",
        "4",
    ];
    let mut child = spawn_train(&shards, &save, &big, &[]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for_line(&mut lines, "step 1/");
    signal(&child, "-INT");
    // Two signals sent at once may merge into one pending signal: let the first land.
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "-INT");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(
        !rest.iter().any(|l| l.contains("stopped at step")),
        "{rest:#?}"
    );
    assert!(list_snapshots(&save).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGKILL at moments spread over runs that save every step: whatever the moment, every
/// snapshot on disk loads (model and state), and the newest resumes.
#[test]
fn sigkill_during_saves_leaves_a_resumable_snapshot() {
    let dir = tmpdir("sigkill");
    let shards = shards_for_training(&dir);
    let save = dir.join("model.safetensors");
    let model = [
        "--batch",
        "2",
        "--ctx",
        "16",
        "--d-model",
        "64",
        "--layers",
        "2",
        "--heads",
        "2",
    ];
    let every = ["--save-every", "1", "--keep", "2"];
    let mut resumed_from = Vec::new();
    for (i, delay_ms) in [0u64, 3, 7, 13, 29, 41].into_iter().enumerate() {
        let mut args = every.to_vec();
        let newest = list_snapshots(&save).unwrap().last().cloned();
        let resume_path;
        if let Some((step, p)) = &newest {
            resume_path = p.display().to_string();
            args.extend(["--resume", &resume_path]);
            resumed_from.push(*step);
        }
        let mut child = spawn_train(&shards, &save, &model, &args);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = newest.as_ref().map_or(0, |n| n.0);
        wait_for_line(&mut lines, &format!("step {}/", first + 2));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(delay_ms) {
            std::hint::spin_loop();
        }
        signal(&child, "-KILL");
        let _ = child.wait().unwrap();
        let snaps = list_snapshots(&save).unwrap();
        assert!(!snaps.is_empty(), "run {i}: no snapshot");
        for (step, p) in &snaps {
            let (_, state) = load_snapshot(p)
                .unwrap_or_else(|e| panic!("run {i}: snapshot {step} does not load: {e}"));
            assert_eq!(state.step, *step);
        }
    }
    assert_eq!(resumed_from.len(), 5);
    assert!(
        resumed_from.windows(2).all(|w| w[0] < w[1]),
        "{resumed_from:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `eval --data --tokens N` reads N validation tokens in order and reports; shards
/// without `shards.json` need `--vocab`; a broken shard is named with its byte offset.
#[test]
fn eval_streams_validation_tokens_and_shards_are_checked() {
    let dir = tmpdir("eval");
    let shards = shards_for_training(&dir);
    let save = dir.join("model.safetensors");
    let o = Command::new(CYB)
        .args(["train", "--data", s(&shards), "--save", s(&save)])
        .args(["--steps", "3", "--eval-batches", "1"])
        .args(SMALL)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let eval = |extra: &[&str]| {
        Command::new(CYB)
            .args(["eval", "--load", s(&save), "--data", s(&shards)])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = eval(&["--tokens", "4000", "--batch", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("4000 validation tokens in order"), "{out}");
    assert!(out.contains("marginal NLL"), "{out}");
    // Without shards.json the vocabulary must be given.
    std::fs::remove_file(shards.join("shards.json")).unwrap();
    let o = eval(&[]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("--vocab"), "{e}");
    let o = eval(&["--vocab", "256"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A truncated shard: its name and the offset of the count that does not match.
    let val = shards.join("val_000000.bin");
    let bytes = std::fs::read(&val).unwrap();
    std::fs::write(&val, &bytes[..bytes.len() - 3]).unwrap();
    let o = eval(&["--vocab", "256"]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("val_000000.bin") && e.contains("byte offset 8"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
