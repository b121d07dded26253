//! `cyb::hf_import` against Hugging Face itself: the committed fixture
//! `testdata/hf/tiny-gpt2` (written by `scripts/make_hf_fixture.py`, pinned transformers)
//! holds a random GPT-2 and the logits transformers computes for it. No Python, no
//! network here.

mod common;

use cyb::checkpoint;
use cyb::checkpoint_tokenizer::{sha256_hex, METADATA_KEY};
use cyb::config::PauseAttention;
use cyb::cpu::model::Model;
use cyb::hf_import::{import, import_to_file, ImportOptions};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fixture folder, found like every test's data (`$CYB_TESTDATA` in the device
/// bundle, else the repository's `testdata/`).
fn dir() -> PathBuf {
    common::testdata_dir().join("hf/tiny-gpt2")
}

fn opts(pauses: usize, mode: PauseAttention) -> ImportOptions {
    ImportOptions {
        pauses,
        pause_attention: mode,
        dk_prior: 0.9,
    }
}

fn plain(d: &Path) -> Model<f32> {
    import(d, &opts(0, PauseAttention::Shared)).unwrap().model
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cyb-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct HfLogits {
    /// max |HF f32 - HF f64| over every stored logit.
    f32_rounding: f64,
    /// (ids, logits [T][V]).
    sequences: Vec<(Vec<i32>, Vec<Vec<f64>>)>,
}

fn hf_logits() -> HfLogits {
    let text = std::fs::read_to_string(dir().join("logits.json")).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    let sequences = j["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ids = s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let rows = s["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                })
                .collect();
            (ids, rows)
        })
        .collect();
    HfLogits {
        f32_rounding: j["f32_vs_f64_max_abs"].as_f64().unwrap(),
        sequences,
    }
}

/// The imported model at `K = 0` computes Hugging Face's logits.
///
/// Tolerances. `δ` = the largest difference between HF's f32 logits and the same model
/// run by HF in f64 (stored in logits.json, 3.4e-6 at logits up to 5.4): the rounding
/// one f32 evaluation of this model carries.
/// - Our f64 forward of the same (f32) weights is the exact math up to ~1e-13, so it may
///   differ from HF's f32 logits by `δ` and no more: bound `δ + 1e-9`.
/// - Our f32 forward rounds too, in another summation order (row-blocked GEMMs, our
///   LayerNorm and softmax loops): its own error is of the same order as HF's, and a
///   different order of the same sums can be a few times worse, so the bound is
///   `δ + 8 δ` (HF's rounding plus up to eight times as much of ours).
///
/// A weight read from the wrong tensor, not transposed, or a wrong epsilon or GELU
/// moves logits by 1e-2 to 1, far outside both.
#[test]
fn k0_logits_match_hugging_face() {
    let m32 = plain(&dir());
    let m64: Model<f64> = m32.cast();
    let hf = hf_logits();
    let (delta, v) = (hf.f32_rounding, m32.config.vocab);
    assert!(delta > 0.0 && delta < 1e-4, "δ = {delta}");
    let (mut worst64, mut worst32) = (0f64, 0f64);
    for (ids, want) in &hf.sequences {
        let t = ids.len();
        let z64 = m64.forward(ids, 1, t, 0).unwrap();
        let z32 = m32.forward(ids, 1, t, 0).unwrap();
        assert_eq!(z64.len(), t * (v + 1));
        for (row, want_row) in want.iter().enumerate() {
            assert_eq!(want_row.len(), v);
            for (col, &w) in want_row.iter().enumerate() {
                let i = row * (v + 1) + col;
                worst64 = worst64.max((z64[i] - w).abs());
                worst32 = worst32.max((z32[i] as f64 - w).abs());
            }
            // The DK column is the mean row of the embedding: the mean real logit.
            let real = &z64[row * (v + 1)..row * (v + 1) + v];
            let mean = real.iter().sum::<f64>() / v as f64;
            approx::assert_abs_diff_eq!(z64[row * (v + 1) + v], mean, epsilon = 1e-6);
        }
    }
    eprintln!("max |ours - HF f32|: f64 forward {worst64:.3e}, f32 forward {worst32:.3e}; δ = {delta:.3e}");
    assert!(
        worst64 <= delta + 1e-9,
        "f64 forward off by {worst64} > δ = {delta}"
    );
    assert!(
        worst32 <= 9.0 * delta,
        "f32 forward off by {worst32} > 9δ = {}",
        9.0 * delta
    );
}

/// With `K = 3` private pauses, the step-0 plane is the `K = 0` model (`D[0] = 0`; step 0
/// of a position sees only real tokens), so it is Hugging Face's model too.
#[test]
fn private_k3_step0_plane_is_the_pretrained_model() {
    let k0: Model<f64> = plain(&dir()).cast();
    let imported = import(&dir(), &opts(3, PauseAttention::Private)).unwrap();
    let c = &imported.model.config;
    assert_eq!((c.k_max, c.pause_attention), (3, PauseAttention::Private));
    approx::assert_relative_eq!(c.dk_bias, 9f64.ln() + 1000f64.ln(), epsilon = 1e-12);
    let k3: Model<f64> = imported.model.cast();
    let ids: Vec<i32> = hf_logits().sequences[1].0.clone();
    let t = ids.len();
    let v1 = c.vocab + 1;
    let plane0 = &k3.forward(&ids, 1, t, 3).unwrap()[..t * v1];
    let want = k0.forward(&ids, 1, t, 0).unwrap();
    for (g, w) in plane0.iter().zip(&want) {
        // The same f64 sums, over key sets that differ only by exactly-zero weights.
        approx::assert_abs_diff_eq!(*g, *w, epsilon = 1e-12);
    }
    // The pause planes do compute something else (they read PAUSE).
    let all = k3.forward(&ids, 1, t, 3).unwrap();
    assert!(all[t * v1..2 * t * v1]
        .iter()
        .zip(&want)
        .any(|(a, b)| (a - b).abs() > 1e-3));
}

/// Every tensor of `m` rounded through `round` (what an f16/bf16 copy of the f32 file
/// holds), with the PAUSE/DK row recomputed as the mean of the rounded rows.
fn rounded(m: &Model<f32>, round: impl Fn(f32) -> f32) -> Model<f32> {
    let mut r = m.clone();
    let (v, d) = (m.config.vocab, m.config.d_model);
    for (name, _, data) in r.params.tensors_mut() {
        if name != "depth_emb" {
            data.iter_mut().for_each(|x| *x = round(*x));
        }
    }
    let mut mean = vec![0f64; d];
    for row in r.params.tok_emb[..v * d].chunks(d) {
        for (s, &x) in mean.iter_mut().zip(row) {
            *s += x as f64;
        }
    }
    for (j, s) in mean.iter().enumerate() {
        r.params.tok_emb[v * d + j] = (s / v as f64) as f32;
    }
    r
}

/// HF's own f16 file (`transformer.` prefix, explicit tied `lm_head.weight`) and the bf16
/// file with the causal-mask buffers import to the f32 model rounded to their type,
/// bit for bit.
#[test]
fn f16_and_bf16_variants_import_to_the_rounded_model() {
    let base = plain(&dir());
    let f16 = plain(&dir().join("f16"));
    let bf16 = plain(&dir().join("bf16"));
    assert_eq!(
        f16,
        rounded(&base, |x| half::f16::from_f32(x).to_f32()),
        "f16 (prefixed, tied head)"
    );
    assert_eq!(
        bf16,
        rounded(&base, |x| half::bf16::from_f32(x).to_f32()),
        "bf16 (mask buffers)"
    );
}

/// A copy of the fixture with names re-written: prefixed / unprefixed import alike.
#[test]
fn prefixed_and_unprefixed_f32_import_alike() {
    let d = tmpdir("prefix");
    let tensors = read_tensors(&dir().join("model.safetensors"));
    let prefixed = tensors
        .into_iter()
        .map(|(n, s, x)| (format!("transformer.{n}"), s, x))
        .collect();
    write_fixture(&d, &base_config(), prefixed);
    assert_eq!(plain(&d), plain(&dir()));
    std::fs::remove_dir_all(&d).unwrap();
}

/// `import_to_file` writes an ordinary checkpoint, the tokenizer beside it, and the
/// record of the tokenizer in the metadata.
#[test]
fn import_to_file_writes_checkpoint_and_tokenizer() {
    let d = tmpdir("out");
    let out = d.join("gpt2-cyb.safetensors");
    let imported = import_to_file(&dir(), &out, &ImportOptions::default()).unwrap();
    let loaded = checkpoint::load(&out).unwrap();
    assert_eq!(loaded, imported.model);
    assert_eq!(loaded.config.k_max, 3);
    assert_eq!(loaded.config.pause_attention, PauseAttention::Shared);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().as_ref().unwrap();
    let record: Value = serde_json::from_str(&meta[METADATA_KEY]).unwrap();
    assert_eq!(record["file"], "gpt2-cyb.tokenizer.json");
    let copied = std::fs::read(d.join("gpt2-cyb.tokenizer.json")).unwrap();
    assert_eq!(copied, std::fs::read(dir().join("tokenizer.json")).unwrap());
    assert_eq!(record["sha256"], sha256_hex(&copied));
    assert_eq!(record["sha256"].as_str().unwrap().len(), 64);
    // The config key is the crate's usual one.
    let config: Value = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(config["layer_norm_eps"], 1e-5);
    std::fs::remove_dir_all(&d).unwrap();
}

// ---- refusals -------------------------------------------------------------------

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = st.tensor(&n).unwrap();
            assert_eq!(v.dtype(), Dtype::F32);
            let x = v
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, v.shape().to_vec(), x)
        })
        .collect()
}

fn base_config() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap()
}

fn write_fixture(d: &Path, config: &Value, tensors: Tensors) {
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(dir().join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, x)| (n, s, x.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
}

/// The fixture with `edit_config` and `edit_tensors` applied must fail to import with
/// an error containing every one of `needles`.
fn refused(
    name: &str,
    edit_config: impl FnOnce(&mut Value),
    edit_tensors: impl FnOnce(&mut Tensors),
    needles: &[&str],
) {
    let d = tmpdir(name);
    let mut config = base_config();
    edit_config(&mut config);
    let mut tensors = read_tensors(&dir().join("model.safetensors"));
    edit_tensors(&mut tensors);
    write_fixture(&d, &config, tensors);
    let err = match import(&d, &ImportOptions::default()) {
        Ok(_) => panic!("{name}: imported"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(err.contains(n), "{name}: {err:?} lacks {n:?}");
    }
    eprintln!("{name}: {err}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn set(key: &'static str, v: Value) -> impl FnOnce(&mut Value) {
    move |c: &mut Value| {
        c[key] = v;
    }
}

fn keep(_: &mut Tensors) {}

#[test]
fn unrepresentable_configs_are_refused_naming_key_and_value() {
    use serde_json::json;
    refused(
        "model-type",
        set("model_type", json!("gpt_neox")),
        keep,
        &["model_type", "gpt_neox"],
    );
    refused(
        "activation",
        set("activation_function", json!("relu")),
        keep,
        &["activation_function", "relu", "tanh GELU"],
    );
    refused(
        "activation-erf",
        set("activation_function", json!("gelu")),
        keep,
        &["activation_function", "\"gelu\""],
    );
    refused(
        "n-inner",
        set("n_inner", json!(100)),
        keep,
        &["n_inner = 100", "256"],
    );
    refused(
        "inverse-layer-idx",
        set("scale_attn_by_inverse_layer_idx", json!(true)),
        keep,
        &["scale_attn_by_inverse_layer_idx = true"],
    );
    refused(
        "upcast",
        set("reorder_and_upcast_attn", json!(true)),
        keep,
        &["reorder_and_upcast_attn = true"],
    );
    refused(
        "no-scale",
        set("scale_attn_weights", json!(false)),
        keep,
        &["scale_attn_weights = false"],
    );
    refused(
        "cross-attention",
        set("add_cross_attention", json!(true)),
        keep,
        &["add_cross_attention = true"],
    );
    refused(
        "eps-zero",
        set("layer_norm_epsilon", json!(0.0)),
        keep,
        &["layer_norm_epsilon = 0"],
    );
    refused(
        "eps-string",
        set("layer_norm_epsilon", json!("1e-5")),
        keep,
        &["layer_norm_epsilon", "expected a number"],
    );
    refused(
        "no-n-embd",
        |c: &mut Value| {
            c.as_object_mut().unwrap().remove("n_embd");
        },
        keep,
        &["no n_embd"],
    );
    refused(
        "n-head-string",
        set("n_head", json!("4")),
        keep,
        &["n_head = \"4\"", "positive integer"],
    );
    refused(
        "heads-do-not-divide",
        set("n_head", json!(3)),
        keep,
        &["n_head = 3", "d_model = 64"],
    );
    // The tokenizer has 1000 ids: a model with 999 rows cannot embed id 999.
    refused(
        "vocab-vs-tokenizer",
        set("vocab_size", json!(999)),
        keep,
        &["vocab_size = 999", "tokenizer.json has ids up to 999"],
    );
    refused(
        "untied-missing-head",
        set("tie_word_embeddings", json!(false)),
        keep,
        &["tie_word_embeddings = false", "no lm_head.weight"],
    );
}

fn find<'a>(t: &'a mut Tensors, name: &str) -> &'a mut (String, Vec<usize>, Vec<f32>) {
    t.iter_mut().find(|(n, _, _)| n == name).unwrap()
}

#[test]
fn bad_tensors_are_refused_naming_them() {
    let json_keep = |_: &mut Value| {};
    refused(
        "missing",
        json_keep,
        |t| t.retain(|(n, _, _)| n != "h.1.mlp.c_fc.bias"),
        &["missing tensor h.1.mlp.c_fc.bias", "[256]"],
    );
    refused(
        "extra",
        json_keep,
        |t| t.push(("h.0.attn.rotary".into(), vec![2], vec![0.0, 1.0])),
        &["unexpected tensors", "h.0.attn.rotary"],
    );
    refused(
        "extra-layer-buffer",
        json_keep,
        |t| t.push(("h.2.attn.bias".into(), vec![1], vec![1.0])),
        &["unexpected tensors", "h.2.attn.bias"],
    );
    refused(
        "mixed-prefix",
        json_keep,
        |t| find(t, "ln_f.bias").0 = "transformer.ln_f.bias".into(),
        &["missing tensor transformer.wte.weight"],
    );
    refused(
        "already-transposed",
        json_keep,
        |t| find(t, "h.0.attn.c_attn.weight").1 = vec![192, 64],
        &["h.0.attn.c_attn.weight", "[192, 64]", "[64, 192]"],
    );
    refused(
        "nan",
        json_keep,
        |t| find(t, "h.1.attn.c_proj.weight").2[77] = f32::NAN,
        &["h.1.attn.c_proj.weight", "NaN", "77"],
    );
    refused(
        "untied-head",
        json_keep,
        |t| {
            let mut head = find(t, "wte.weight").clone();
            head.0 = "lm_head.weight".into();
            head.2[64 * 5 + 3] += 0.5;
            t.push(head);
        },
        &["lm_head.weight differs", "row 5, column 3"],
    );
    refused(
        "head-shape",
        json_keep,
        |t| t.push(("lm_head.weight".into(), vec![2, 64], vec![0.0; 128])),
        &["lm_head.weight", "[2, 64]"],
    );
}

/// An explicit head equal to the embedding is the tied model, even if the config says
/// untied: nothing is lost.
#[test]
fn explicit_equal_head_is_accepted_even_when_called_untied() {
    let d = tmpdir("equal-head");
    let mut config = base_config();
    config["tie_word_embeddings"] = Value::Bool(false);
    let mut tensors = read_tensors(&dir().join("model.safetensors"));
    let mut head = find(&mut tensors, "wte.weight").clone();
    head.0 = "lm_head.weight".into();
    tensors.push(head);
    write_fixture(&d, &config, tensors);
    assert_eq!(plain(&d), plain(&dir()));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_files_and_bad_options_are_errors() {
    let d = tmpdir("missing");
    let err = import(&d, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(dir().join("config.json"), d.join("config.json")).unwrap();
    let err = import(&d, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = import(&d, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.vocab"), "{err}");
    std::fs::copy(dir().join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let err = import(&d, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    let bad_prior = ImportOptions {
        dk_prior: 1.0,
        ..Default::default()
    };
    let err = import(&dir(), &bad_prior).unwrap_err().to_string();
    assert!(err.contains("DK prior"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---- the command line -------------------------------------------------------------

fn cyb(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cyb"))
        .args(args)
        .output()
        .expect("cyb runs")
}

fn ok(args: &[&str]) -> String {
    let o = cyb(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "cyb {args:?} failed:\n{err}");
    String::from_utf8_lossy(&o.stdout).into_owned() + &err
}

fn fails(args: &[&str], needle: &str) {
    let o = cyb(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "cyb {args:?} succeeded");
    assert!(
        err.contains(needle),
        "cyb {args:?}: {err:?} lacks {needle:?}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `column` of every row of a CSV with a header line.
fn csv_column(text: &str, column: &str) -> Vec<f64> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header.iter().position(|h| *h == column).unwrap();
    lines
        .map(|l| l.split(',').nth(i).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn cli_import_writes_what_the_library_imports() {
    let d = tmpdir("cli-import");
    let out = d.join("tiny.safetensors");
    let log = ok(&[
        "import",
        s(&dir()),
        "--out",
        s(&out),
        "--pauses",
        "2",
        "--pause-attention",
        "private",
        "--dk-prior",
        "0.5",
    ]);
    assert!(log.contains("K = 2 private pauses"), "{log}");
    let want = import(
        &dir(),
        &ImportOptions {
            pauses: 2,
            pause_attention: PauseAttention::Private,
            dk_prior: 0.5,
        },
    )
    .unwrap()
    .model;
    assert_eq!(checkpoint::load(&out).unwrap(), want);
    assert!(d.join("tiny.tokenizer.json").is_file());
    fails(
        &["import", s(&d), "--out", s(&d.join("x.safetensors"))],
        "config.json",
    );
    fails(
        &["import", s(&dir()), "--out", s(&out), "--dk-prior", "1"],
        "DK prior",
    );
    std::fs::remove_dir_all(&d).unwrap();
}

const FINE_TUNE: &[&str] = &[
    "--task",
    "modsum",
    "--batch",
    "8",
    "--ctx",
    "16",
    "--eval-batches",
    "4",
    "--lr",
    "1e-3",
];

/// `train --from-hf` fine-tunes the imported model with CYB-AP at K = 3 (on the built-in
/// task: this build tokenizes text byte-level only, and refuses text for the imported
/// vocabulary); the validation NLL falls, and the saved model has the imported shape.
#[test]
fn train_from_hf_fine_tunes_and_the_loss_falls() {
    let d = tmpdir("cli-train");
    let save = d.join("ft.safetensors");
    let hf = dir();
    let mut args = vec![
        "train",
        "--from-hf",
        s(&hf),
        "--pauses",
        "3",
        "--steps",
        "30",
        "--eval-every",
        "3",
        "--save",
        s(&save),
        "--out",
        s(&d),
    ];
    args.extend_from_slice(FINE_TUNE);
    ok(&args);
    let nll = csv_column(
        &std::fs::read_to_string(d.join("curve.csv")).unwrap(),
        "nll",
    );
    assert_eq!(nll.len(), 10);
    eprintln!("train --from-hf: validation NLL {nll:?}");
    assert!(nll[9] < 0.8 * nll[0], "NLL did not fall: {nll:?}");
    let m = checkpoint::load(&save).unwrap();
    assert_eq!(
        (m.config.vocab, m.config.d_model, m.config.k_max),
        (1000, 64, 3)
    );
    // Text is encoded by the imported model's own tokenizer, which the saved model
    // carries beside it (and `eval` then uses without being told).
    let text = d.join("t.txt");
    std::fs::write(
        &text,
        "some text to fine-tune on, in plain English. ".repeat(40),
    )
    .unwrap();
    let text_save = d.join("text.safetensors");
    ok(&[
        "train",
        "--from-hf",
        s(&dir()),
        "--text",
        s(&text),
        "--steps",
        "2",
        "--batch",
        "2",
        "--ctx",
        "16",
        "--eval-batches",
        "1",
        "--save",
        s(&text_save),
    ]);
    assert!(d.join("text.tokenizer.json").is_file());
    let report = ok(&[
        "eval",
        "--load",
        s(&text_save),
        "--text",
        s(&text),
        "--ctx",
        "16",
        "--eval-batches",
        "1",
    ]);
    assert!(report.contains("marginal NLL"), "{report}");
    fails(
        &["train", "--from-hf", s(&dir()), "--load", s(&save)],
        "cannot be used with",
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `experiment --from-hf` fine-tunes every arm from the imported model (no pretraining);
/// every arm's validation NLL falls.
#[test]
fn experiment_from_hf_runs_every_arm_from_the_import() {
    let d = tmpdir("cli-exp");
    let hf = dir();
    let mut args = vec![
        "experiment",
        "--from-hf",
        s(&hf),
        "--steps",
        "12",
        "--seeds",
        "1",
        "--out",
        s(&d),
    ];
    args.extend_from_slice(FINE_TUNE);
    let log = ok(&args);
    assert!(!log.contains("pretrain no-pause"), "{log}");
    let report = std::fs::read_to_string(d.join("report.md")).unwrap();
    assert!(report.contains("--from-hf"), "{report}");
    let csv = std::fs::read_to_string(d.join("curves.csv")).unwrap();
    let variants: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let nll = csv_column(&csv, "marginal_nll");
    let mut arms: Vec<&str> = variants.clone();
    arms.dedup();
    assert!(arms.len() >= 5, "{arms:?}");
    for arm in arms {
        let curve: Vec<f64> = variants
            .iter()
            .zip(&nll)
            .filter(|(v, _)| **v == arm)
            .map(|(_, x)| *x)
            .collect();
        eprintln!("{arm}: {curve:?}");
        assert!(curve.last().unwrap() < &curve[0], "{arm}: {curve:?}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
