//! `cyb::tokenizer` against Hugging Face's own tokenizer (ids stored by
//! `scripts/make_hf_fixture.py` under `testdata/hf/tiny-gpt2/`), the `--bpe` trainer, the
//! tokenizer that travels with a checkpoint, and the errors for bad tokenizer input.

use cyb::checkpoint_tokenizer::{self, sha256_hex, TokenizerRef, METADATA_KEY};
use cyb::config::{ModelConfig, PauseAttention};
use cyb::cpu::model::Model;
use cyb::data::{DataSource, TokenText};
use cyb::tokenizer::TextTokenizer;
use cyb::CybError;
use std::path::PathBuf;

mod common;

/// Hugging Face's tiny GPT-2 folder (`$CYB_TESTDATA` or the repository's `testdata/`).
fn fixture() -> PathBuf {
    common::testdata_dir().join("hf/tiny-gpt2")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cyb-tok-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Text with everything a byte-level BPE must survive: accents, CJK, emoji, runs of
/// spaces, newlines and tabs.
fn corpus() -> String {
    "The cat sat on the mat. Café déjà vu, naïve façade! 東京は日本の首都です。 \
     Emoji 🎉🚀 fun.  Two  spaces,\n\nnew lines\n\tand tabs; 12345 67.\n"
        .repeat(30)
}

fn tiny_model(vocab: usize) -> Model<f32> {
    let c = ModelConfig {
        vocab,
        d_model: 4,
        n_layer: 1,
        n_head: 2,
        t_max: 3,
        k_max: 1,
        pause_attention: PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    Model::init(c, &mut cyb::rng::seeded(0)).unwrap()
}

/// A stored string, the ids Hugging Face's tokenizer gave for it, and its decode of them.
struct StoredCase {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

/// `tokenizer_ids.json`: `{"cases": [{"text", "ids", "tokens", "decoded"}, ...]}`.
fn stored_cases() -> Vec<StoredCase> {
    let path = fixture().join("tokenizer_ids.json");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("JSON");
    let str_of = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| StoredCase {
            text: str_of(&c["text"]),
            ids: c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|i| u32::try_from(i.as_u64().expect("an id")).expect("a u32 id"))
                .collect(),
            decoded: str_of(&c["decoded"]),
        })
        .collect()
}

#[test]
fn hugging_face_ids_for_every_stored_string() {
    let tok = TextTokenizer::from_file(&fixture().join("tokenizer.json")).unwrap();
    let cases = stored_cases();
    assert!(cases.len() >= 6, "{} stored strings", cases.len());
    assert!(cases.iter().any(|c| c.text.is_empty()), "the empty string");
    for c in &cases {
        let got = tok.encode(&c.text).unwrap();
        assert_eq!(got, c.ids, "ids of {:?}", c.text);
        assert!(got.iter().all(|&i| (i as usize) < tok.vocab()));
        let back = tok.decode(&got).unwrap();
        assert_eq!(back, c.decoded, "Hugging Face's decode of {:?}", c.text);
        assert_eq!(back, c.text, "round trip of {:?}", c.text);
    }
}

#[test]
fn bpe_training_is_deterministic_and_round_trips() {
    let text = corpus();
    let a = TextTokenizer::train_bpe(&text, 400).unwrap();
    let b = TextTokenizer::train_bpe(&text, 400).unwrap();
    assert_eq!(
        a.to_json().unwrap(),
        b.to_json().unwrap(),
        "same text, same tokenizer"
    );
    assert!(a.vocab() > 300 && a.vocab() <= 400, "V = {}", a.vocab());
    let ids = a.encode(&text).unwrap();
    assert!(
        ids.len() * 3 < text.len(),
        "{} ids, {} bytes",
        ids.len(),
        text.len()
    );
    assert_eq!(a.decode(&ids).unwrap(), text);
    // Text it never saw (other scripts, control bytes) still round-trips: every byte
    // is a token.
    for s in [
        "",
        "Ωμέγα ∑ 𝔘𝔫𝔦",
        "\u{0}\u{7f} \r\n",
        "   \n\n\n   x",
        "ÿ🎉",
    ] {
        assert_eq!(a.decode(&a.encode(s).unwrap()).unwrap(), s, "{s:?}");
    }
    // Reports show a leading space and a newline.
    let space_the = a.encode(" the").unwrap();
    assert_eq!(space_the.len(), 1, "' the' is one token");
    assert_eq!(a.display(space_the[0]), "␣the");
    let nl = a.encode("\n").unwrap();
    assert_eq!(a.display(nl[0]), "⏎");
    // Save and load give the same tokenizer.
    let dir = tmpdir("save");
    let path = dir.join("t.json");
    a.save(&path).unwrap();
    let back = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(back.encode(&text).unwrap(), ids);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pieces_keep_split_characters_whole() {
    // A vocabulary too small to hold "東" in one token: its bytes are several tokens.
    let tok = TextTokenizer::train_bpe("ab ab ab", 256).unwrap();
    let ids = tok.encode("x東y").unwrap();
    assert_eq!(ids.len(), 5);
    let pieces = tok.pieces(&ids).unwrap();
    let texts: Vec<&str> = pieces.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["x", "東", "y"]);
    assert_eq!(pieces.iter().map(|p| p.1).collect::<Vec<_>>(), [1, 3, 1]);
    // An unfinished character at the end is kept as its replacement character.
    let pieces = tok.pieces(&ids[..2]).unwrap();
    assert_eq!(pieces, [("x".to_string(), 1), ("\u{FFFD}".to_string(), 1)]);
    // Bytes: one piece per character too.
    let bytes = TextTokenizer::Bytes;
    let ids = bytes.encode("é!").unwrap();
    assert_eq!(
        bytes.pieces(&ids).unwrap(),
        [("é".to_string(), 2), ("!".to_string(), 1)]
    );
}

#[test]
fn bad_tokenizer_input_is_a_clear_error() {
    let dir = tmpdir("bad");
    let good = TextTokenizer::train_bpe(&corpus(), 300).unwrap();
    let json = good.to_json().unwrap().unwrap();
    for (name, bytes) in [
        ("garbage.json", b"not json at all".to_vec()),
        ("truncated.json", json.as_bytes()[..json.len() / 2].to_vec()),
        (
            "wrong.json",
            br#"{"version": "1.0", "model": {"type": "Nope"}}"#.to_vec(),
        ),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = TextTokenizer::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains(name) && e.contains("not a usable Hugging Face tokenizer.json"),
            "{e}"
        );
    }
    let e = TextTokenizer::from_file(&dir.join("missing.json")).unwrap_err();
    assert!(matches!(e, CybError::Io { .. }), "{e}");
    let e = TextTokenizer::train_bpe("abc", 255)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 256"), "{e}");
    // An id outside the vocabulary is an error, not silently dropped.
    let e = good.decode(&[1, good.vocab() as u32]).unwrap_err();
    assert!(matches!(e, CybError::VocabRange { index: 1, .. }), "{e}");

    // A tokenizer without byte fallback or unknown token drops characters it does not
    // know: text made only of those encodes to nothing.
    let letters = std::fs::read(common::testdata_dir().join("tokenizer/letters_ab.json")).unwrap();
    let tok = TextTokenizer::from_json_bytes(&letters).unwrap();
    assert_eq!(tok.vocab(), 2);
    let e = TokenText::with_tokenizer("xyz.txt".into(), &"xyz ".repeat(50), tok, 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("xyz.txt") && e.contains("encodes to nothing"),
        "{e}"
    );
    let empty = TokenText::with_tokenizer("empty".into(), "", good.clone(), 4).unwrap_err();
    assert!(empty.to_string().contains("encodes to nothing"), "{empty}");
    let short = TokenText::with_tokenizer("short".into(), "the cat sat", good, 4).unwrap_err();
    assert!(short.to_string().contains("too few"), "{short}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sparse file of `len` bytes (no disk blocks): "huge" without writing anything.
fn sparse_file(path: &std::path::Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// A `tokenizer.json` (given, beside a checkpoint, in a Hugging Face folder) and a
/// shards folder's `shards.json` larger than this reads whole are refused by size
/// before a byte is read; a device or a FIFO is refused as not a regular file, not read
/// forever.
#[test]
fn huge_tokenizer_and_shard_metadata_files_are_refused_before_reading() {
    use cyb::input_file::{MAX_METADATA_BYTES, MAX_TOKENIZER_BYTES};
    let dir = tmpdir("huge");
    let huge = dir.join("huge.tokenizer.json");
    sparse_file(&huge, MAX_TOKENIZER_BYTES + 1);
    let too_big = |e: &CybError, what: &str| {
        let e = e.to_string();
        assert!(
            e.contains(what) && e.contains("more than the 256.0 MiB this reads whole"),
            "{e}"
        );
    };
    too_big(
        &TextTokenizer::from_file(&huge).unwrap_err(),
        "huge.tokenizer.json",
    );
    let e = TextTokenizer::from_file(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    // The tokenizer file beside a checkpoint, replaced by a huge one.
    let tok = TextTokenizer::train_bpe(&corpus(), 300).unwrap();
    let ckpt = dir.join("m.safetensors");
    checkpoint_tokenizer::save(&ckpt, &tiny_model(tok.vocab()), &tok).unwrap();
    sparse_file(&dir.join("m.tokenizer.json"), MAX_TOKENIZER_BYTES + 1);
    too_big(
        &checkpoint_tokenizer::load(&ckpt).unwrap_err(),
        "m.tokenizer.json",
    );

    // A Hugging Face folder whose tokenizer.json is huge.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), hf.join(f)).unwrap();
    }
    sparse_file(&hf.join("tokenizer.json"), MAX_TOKENIZER_BYTES + 1);
    let opts = cyb::hf_import::ImportOptions::default();
    too_big(
        &cyb::hf_import::import(&hf, &opts).unwrap_err(),
        "tokenizer.json",
    );
    sparse_file(&hf.join("config.json"), MAX_METADATA_BYTES + 1);
    let e = cyb::hf_import::import(&hf, &opts).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("more than the 16.0 MiB"),
        "{e}"
    );

    // A shards folder whose shards.json is huge.
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    sparse_file(&shards.join("shards.json"), MAX_METADATA_BYTES + 1);
    let e = cyb::shards::ShardMeta::read(&shards)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shards.json") && e.contains("more than the 16.0 MiB"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenizer_travels_with_the_checkpoint() {
    let dir = tmpdir("ckpt");
    let tok = TextTokenizer::train_bpe(&corpus(), 300).unwrap();
    let model = tiny_model(tok.vocab());
    let ckpt = dir.join("m.safetensors");
    checkpoint_tokenizer::save(&ckpt, &model, &tok).unwrap();
    let file = dir.join("m.tokenizer.json");
    let bytes = std::fs::read(&file).unwrap();
    // The metadata entry is the documented contract, byte for byte.
    let (_, meta) = cyb::checkpoint::load_with_metadata(&ckpt).unwrap();
    let entry: TokenizerRef = serde_json::from_str(&meta[METADATA_KEY]).unwrap();
    assert_eq!(
        entry,
        TokenizerRef {
            file: "m.tokenizer.json".into(),
            sha256: sha256_hex(&bytes),
        }
    );
    assert_eq!(
        meta[METADATA_KEY],
        format!(
            r#"{{"file":"m.tokenizer.json","sha256":"{}"}}"#,
            sha256_hex(&bytes)
        )
    );
    assert!(meta.contains_key("config"));
    let (back, back_tok) = checkpoint_tokenizer::load(&ckpt).unwrap();
    assert_eq!(back, model);
    let text = corpus();
    assert_eq!(
        back_tok.unwrap().encode(&text).unwrap(),
        tok.encode(&text).unwrap()
    );
    // SHA-256 itself: the NIST test vector of "abc".
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    // Hugging Face's own file is written verbatim: its hash is the original's.
    let hf_bytes = std::fs::read(fixture().join("tokenizer.json")).unwrap();
    let hf_vocab = TextTokenizer::from_json_bytes(&hf_bytes).unwrap().vocab();
    let hf_ckpt = dir.join("hf.safetensors");
    checkpoint_tokenizer::save_with_tokenizer_file(&hf_ckpt, &tiny_model(hf_vocab), &hf_bytes)
        .unwrap();
    assert_eq!(
        std::fs::read(dir.join("hf.tokenizer.json")).unwrap(),
        hf_bytes
    );
    assert_eq!(
        checkpoint_tokenizer::load(&hf_ckpt)
            .unwrap()
            .1
            .unwrap()
            .vocab(),
        hf_vocab
    );
    let e = checkpoint_tokenizer::save_with_tokenizer_file(&hf_ckpt, &model, b"{}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a tokenizer.json"), "{e}");

    // A byte model has no tokenizer entry and no file.
    let plain = dir.join("bytes.safetensors");
    checkpoint_tokenizer::save(&plain, &tiny_model(256), &TextTokenizer::Bytes).unwrap();
    assert!(checkpoint_tokenizer::load(&plain).unwrap().1.is_none());
    assert!(!dir.join("bytes.tokenizer.json").exists());

    // A changed file: the hash tells.
    let mut changed = bytes.clone();
    changed.extend_from_slice(b"\n");
    std::fs::write(&file, &changed).unwrap();
    let e = checkpoint_tokenizer::load(&ckpt).unwrap_err().to_string();
    assert!(
        e.contains("SHA-256") && e.contains("m.tokenizer.json"),
        "{e}"
    );
    // A missing file.
    std::fs::remove_file(&file).unwrap();
    let e = checkpoint_tokenizer::load(&ckpt).unwrap_err().to_string();
    assert!(
        e.contains("cannot be read") && e.contains("m.tokenizer.json"),
        "{e}"
    );

    // Metadata that is not the contract, or that points outside the folder.
    let with_meta = |value: &str| {
        let p = dir.join("meta.safetensors");
        cyb::checkpoint::save_with_metadata(&p, &model, &[(METADATA_KEY, value.to_string())])
            .unwrap();
        checkpoint_tokenizer::load(&p).unwrap_err().to_string()
    };
    let e = with_meta("m.tokenizer.json");
    assert!(e.contains("is not {\"file\""), "{e}");
    let e = with_meta(r#"{"file":"../m.tokenizer.json","sha256":"00"}"#);
    assert!(e.contains("inside the checkpoint's folder"), "{e}");
    let e = with_meta(r#"{"file":"/etc/hostname","sha256":"00"}"#);
    assert!(e.contains("inside the checkpoint's folder"), "{e}");

    // A tokenizer larger than the model is refused on save, and on load.
    let small = tiny_model(tok.vocab() - 1);
    let e = checkpoint_tokenizer::save(&dir.join("s.safetensors"), &small, &tok)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot go with a model of vocabulary"), "{e}");
    let json = tok.to_json().unwrap().unwrap();
    std::fs::write(dir.join("s.tokenizer.json"), &json).unwrap();
    let entry = format!(
        r#"{{"file":"s.tokenizer.json","sha256":"{}"}}"#,
        sha256_hex(json.as_bytes())
    );
    cyb::checkpoint::save_with_metadata(
        dir.join("s.safetensors"),
        &small,
        &[(METADATA_KEY, entry)],
    )
    .unwrap();
    let e = checkpoint_tokenizer::load(&dir.join("s.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the model's vocabulary"), "{e}");
    // `config` cannot be replaced through the extra metadata.
    let e = cyb::checkpoint::to_bytes_with_metadata(&model, &[("config", "{}".into())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("config"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn token_text_names_and_samples_tokens() {
    let text = corpus();
    let src = TokenText::from_text("corpus".into(), &text, 320, 8).unwrap();
    assert!(src.describe().contains("BPE") && src.describe().contains("V = "));
    let b = src.sample(cyb::data::Split::Train, 3, 8, &mut cyb::rng::seeded(2));
    assert_eq!((b.tokens.len(), b.targets.len()), (24, 24));
    assert!(b
        .targets
        .iter()
        .all(|&t| t >= 0 && (t as usize) < src.vocab()));
    // Without text: a vocabulary that encodes prompts; samples ignore every target.
    let vocab = TokenText::without_text(src.tokenizer().clone());
    assert_eq!(
        vocab.encode("the cat").unwrap().len(),
        src.encode("the cat").unwrap().len()
    );
    let b = vocab.sample(cyb::data::Split::Train, 1, 4, &mut cyb::rng::seeded(2));
    assert!(b.targets.iter().all(|&t| t == -1));
}
