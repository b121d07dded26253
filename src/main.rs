//! `cyb`: train and evaluate pause-capable language models (CPU reference; the GPU
//! model is issue #4).

use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use cyb::checkpoint;
use cyb::checkpoint_tokenizer;
use cyb::config::{ModelConfig, Precision};
use cyb::console::{note, out};
use cyb::cpu::model::HeadMode;
use cyb::data::{task_by_name, ByteText, DataSource, TokenText};
use cyb::experiment::{
    csv_files, plot_experiment, render_report, run_experiment, variants, ExperimentConfig,
};
use cyb::generated_text::{self, Marks};
use cyb::hf_import::{self, ImportOptions};
use cyb::limits;
use cyb::number::Num;
use cyb::objective::dk_bias_from_prior;
use cyb::plot;
use cyb::report::{render, render_at, render_by_token, RunDescription};
use cyb::tokenizer::{same_tokenizer, TextTokenizer};
use cyb::train::{
    curve_csv, evaluate, evaluate_shown, train_with, EvalConfig, RunControl, TrainConfig,
    TrainDevice,
};
use cyb::{CybError, Discount, Objective, Result, StepWeights};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[cfg(test)]
mod cli_docs;
mod cli_rules;

use cli_rules::{check_environment, cli, explain, no_repeats, same_data, shape_rules, Given};

#[derive(Parser)]
#[command(
    name = "cyb",
    version,
    about = "Catch Your Breath: language models that learn when to pause"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (on the built-in `modsum` task unless told otherwise) and report.
    Train(TrainArgs),
    /// Report validation metrics of a saved model.
    Eval(EvalArgs),
    /// Train no-pause, pause+CE and the three CYB variants side by side and test the
    /// published claims (data efficiency, where the model pauses).
    Experiment(ExperimentArgs),
    /// Continue a prompt with a saved model, showing how many pauses each token took.
    Generate(GenerateArgs),
    /// Import a Hugging Face GPT-2 (config.json, model.safetensors, tokenizer.json) as a
    /// CYB checkpoint with pauses, its tokenizer copied beside it.
    Import(ImportArgs),
    /// Turn text files into token shards (llm.c's .bin layout) for --data, streaming:
    /// corpora larger than memory work.
    Tokenize(TokenizeArgs),
}

#[derive(Args)]
struct TokenizeArgs {
    /// Text files, tokenized in this order (documents in a fixed order).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// A Hugging Face tokenizer.json (its <|endoftext|>, if any, goes before each file).
    #[arg(long, conflicts_with = "bytes", required_unless_present = "bytes")]
    tokenizer: Option<PathBuf>,
    /// One token per byte (V = 256) instead of a tokenizer.
    #[arg(long)]
    bytes: bool,
    /// Folder for the shards (train_NNNNNN.bin, val_NNNNNN.bin) and shards.json.
    #[arg(long)]
    out: PathBuf,
    /// Validation split: the first N tokens of the stream go to val_*.bin shards.
    #[arg(long, default_value_t = 1_000_000)]
    val_tokens: usize,
    /// Most tokens per shard.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: usize,
    /// Shard version: 1 (u16 tokens, llm.c's; vocabularies up to 65535) or 2 (u32)
    /// [default: 1 when the vocabulary fits, else 2].
    #[arg(long)]
    shard_version: Option<u8>,
}

#[derive(Args)]
struct ImportArgs {
    /// The Hugging Face folder: config.json, model.safetensors (f32, f16 or bf16, with or
    /// without the `transformer.` prefix) and tokenizer.json.
    hf_dir: PathBuf,
    /// The checkpoint to write (docs/MATH.md, "Checkpoints"; f32); the tokenizer is copied
    /// beside it as <stem>.tokenizer.json and recorded in its metadata.
    #[arg(long)]
    out: PathBuf,
    /// Pause steps K the model can take per position (0 = the plain pretrained GPT).
    #[arg(long, default_value_t = 3)]
    pauses: usize,
    /// Attention over pause steps (docs/MATH.md): `shared` (the paper's Recipe 1) or
    /// `private` (its step-0 plane is exactly the pretrained model).
    #[arg(long, default_value = "shared")]
    pause_attention: cyb::config::PauseAttention,
    /// DK prior psi in [0, 1): DK bias log(psi/(1-psi)) + log V (0 = no bias).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.9)]
    dk_prior: f64,
}

/// The model a command starts from, with what came with it.
struct Start {
    model: cyb::Model<f32>,
    /// The checkpoint's saved tokenizer, or the Hugging Face folder's tokenizer.json.
    tokenizer: Option<TextTokenizer>,
    /// The checkpoint's `__metadata__` (none for an import: no data to compare).
    meta: checkpoint_tokenizer::Metadata,
    /// The checkpoint file or the Hugging Face folder, for messages.
    path: PathBuf,
}

/// The model a command starts from: `--load FILE` (a CYB checkpoint) or `--from-hf DIR`
/// (a Hugging Face GPT-2 imported in memory with `opts`), or none.
fn start_model(
    load: Option<&Path>,
    from_hf: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Option<Start>> {
    match (load, from_hf) {
        (Some(p), None) => {
            let (model, tokenizer, meta) = checkpoint_tokenizer::load_with_metadata(p)?;
            Ok(Some(Start {
                model,
                tokenizer,
                meta,
                path: p.to_path_buf(),
            }))
        }
        (None, Some(dir)) => {
            let imported = hf_import::import(dir, opts)?;
            let tokenizer = TextTokenizer::from_json_bytes(&imported.tokenizer_bytes)?;
            Ok(Some(Start {
                model: imported.model,
                tokenizer: Some(tokenizer),
                meta: Default::default(),
                path: dir.to_path_buf(),
            }))
        }
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(CybError::Param(
            "--load and --from-hf both name a model to start from: give one".into(),
        )),
    }
}

fn run_import(a: ImportArgs) -> Result<()> {
    let opts = ImportOptions {
        pauses: a.pauses,
        pause_attention: a.pause_attention,
        dk_prior: a.dk_prior,
    };
    let imported = hf_import::import_to_file(&a.hf_dir, &a.out, &opts)?;
    let c = &imported.model.config;
    eprintln!(
        "imported {}: V = {} d = {} L = {} H = {} T = {} LayerNorm eps {} ({} parameters)",
        a.hf_dir.display(),
        c.vocab,
        c.d_model,
        c.n_layer,
        c.n_head,
        c.t_max,
        c.layer_norm_eps,
        imported.model.params.num_params()
    );
    eprintln!(
        "with K = {} {} pauses, DK bias {:.4} (psi = {}); wrote {} and {}",
        c.k_max,
        c.pause_attention,
        c.dk_bias,
        a.dk_prior,
        a.out.display(),
        cyb::checkpoint_tokenizer::tokenizer_path(&a.out)?.display()
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyName {
    Greedy,
    Sample,
    Forced,
}

#[derive(Args)]
struct GenerateArgs {
    /// The saved model.
    #[arg(long, required_unless_present = "from_hf")]
    load: Option<PathBuf>,
    /// Start from a Hugging Face GPT-2 folder instead (imported in memory, as `cyb
    /// import` with --pauses, shared pauses, DK prior 0.9; its tokenizer.json reads the
    /// prompt).
    #[arg(long, conflicts_with = "load")]
    from_hf: Option<PathBuf>,
    /// The prompt: text for text models (bytes, or the model's tokenizer), else
    /// space-separated token names of --task (e.g. "[L3] 1 2 4 =").
    #[arg(long)]
    prompt: String,
    /// Hugging Face tokenizer.json for the prompt and the output, for a model saved
    /// without one (a model saved with a tokenizer uses its own; giving a different one
    /// is an error).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Built-in task whose token names the prompt uses (models with V != 256)
    /// [default: the task the model was trained on, else modsum].
    #[arg(long)]
    task: Option<String>,
    /// Tokens to generate [default: 16, or as many as fit the model's context].
    #[arg(long)]
    max_new: Option<usize>,
    /// Pause steps allowed per token (default: the model's k_max).
    #[arg(long)]
    pauses: Option<usize>,
    #[arg(long, value_enum, default_value = "greedy")]
    policy: PolicyName,
    /// Greedy: DK when p(DK) exceeds this.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5)]
    threshold: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    temperature: f64,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON (per-token pauses and DK probabilities) instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ObjectiveName {
    #[value(name = "ce_final")]
    CeFinal,
    Marginal,
    Ap,
    Va,
    Dp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

/// The held-out parts `eval --split` reads (training data is not an evaluation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SplitArg {
    Validation,
    Test,
}

impl From<SplitArg> for cyb::data::Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Validation => cyb::data::Split::Validation,
            SplitArg::Test => cyb::data::Split::Test,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    F32,
    Bf16,
}

/// The training device with its precision: bf16 by default on a GPU; the CPU reference
/// runs f32 only, so `--precision bf16` there is an error rather than silently f32.
fn train_device(device: Device, precision: Option<PrecisionArg>) -> Result<TrainDevice> {
    match (device, precision) {
        (Device::Cpu, None | Some(PrecisionArg::F32)) => Ok(TrainDevice::Cpu),
        (Device::Cpu, Some(PrecisionArg::Bf16)) => Err(CybError::Param(
            "--precision bf16 needs --device cuda: the CPU reference computes in f32 only \
             (use --precision f32 or leave the flag out)"
                .into(),
        )),
        (Device::Cuda, Some(PrecisionArg::F32)) => Ok(TrainDevice::Cuda(Precision::F32)),
        (Device::Cuda, None | Some(PrecisionArg::Bf16)) => Ok(TrainDevice::Cuda(Precision::Bf16)),
    }
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Built-in synthetic task: modsum, or modsum:MODULUS:MAX_SPAN (e.g. modsum:7:3);
    /// not with --text or --data.
    #[arg(long, default_value = "modsum")]
    task: String,
    /// A UTF-8 text file as the data instead of --task: byte-level (V = 256) unless a
    /// tokenizer is given (--tokenizer, --bpe) or the loaded model was saved with one.
    #[arg(long, conflicts_with = "data")]
    text: Option<PathBuf>,
    /// With --text: encode it with this Hugging Face tokenizer.json (e.g. GPT-2's). Not
    /// needed for a model saved with a tokenizer (it uses its own; a different one is an
    /// error).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Token shards (from `cyb tokenize` or llm.c): a folder of .bin files or a glob.
    /// Files with a part `val` in their name validate, the others train; memory-mapped,
    /// windows drawn by the seeded generator.
    #[arg(long)]
    data: Option<String>,
    /// Vocabulary of --data shards without a shards.json (e.g. 50257 for GPT-2 tokens).
    #[arg(long, requires = "data")]
    vocab: Option<usize>,
}

/// Which tokenizer encodes `--text`.
enum TokenizerChoice {
    /// Bytes, a given tokenizer.json, or the loaded model's own.
    Fixed(TextTokenizer),
    /// `--bpe N`: a byte-level BPE trained on the text's training part (its first 80%).
    TrainBpe(usize),
}

/// The loaded model's saved tokenizer, or else the `--tokenizer` file `given`; both
/// given and different is an error (a model reads text as it was trained).
fn saved_or_given(
    saved: Option<TextTokenizer>,
    given: Option<&Path>,
    load: Option<&Path>,
) -> Result<Option<TextTokenizer>> {
    let Some(path) = given else {
        return Ok(saved);
    };
    let given = TextTokenizer::from_file(path)?;
    match saved {
        Some(saved) if !same_tokenizer(&saved, &given)? => Err(CybError::Param(format!(
            "--tokenizer {} differs from the tokenizer saved with the model {} (leave \
             --tokenizer out to use the model's)",
            path.display(),
            load.unwrap_or(Path::new("")).display()
        ))),
        Some(saved) => Ok(Some(saved)),
        None => Ok(Some(given)),
    }
}

impl DataArgs {
    /// The tokenizer for `--text`, from the flags (`bpe`: `--bpe` where the command has
    /// it) and the loaded model's saved tokenizer (`saved`, of the checkpoint `load`).
    /// Contradictions are errors: a tokenizer flag without text, both flags, `--bpe`
    /// for a model that has its tokenizer, `--tokenizer` different from the model's.
    fn tokenizer(
        &self,
        bpe: Option<usize>,
        saved: Option<TextTokenizer>,
        load: Option<&Path>,
    ) -> Result<TokenizerChoice> {
        if self.text.is_none() {
            for (given, flag) in [
                (self.tokenizer.is_some(), "--tokenizer"),
                (bpe.is_some(), "--bpe"),
            ] {
                if given {
                    return Err(CybError::Param(format!("{flag} needs --text FILE")));
                }
            }
        }
        if self.tokenizer.is_some() && bpe.is_some() {
            return Err(CybError::Param(
                "--tokenizer and --bpe: give one tokenizer (a file, or one trained on the text)"
                    .into(),
            ));
        }
        if let (Some(_), Some(n)) = (&saved, bpe) {
            return Err(CybError::Param(format!(
                "--bpe {n}: the model {} was saved with its tokenizer, which it keeps \
                 (leave --bpe out)",
                load.unwrap_or(Path::new("")).display()
            )));
        }
        match (saved_or_given(saved, self.tokenizer.as_deref(), load)?, bpe) {
            (Some(t), _) => Ok(TokenizerChoice::Fixed(t)),
            (None, Some(n)) => Ok(TokenizerChoice::TrainBpe(n)),
            (None, None) => Ok(TokenizerChoice::Fixed(TextTokenizer::Bytes)),
        }
    }

    /// The data (`--text` encoded by `choice`, or `--task`) and the tokenizer to save
    /// with a model trained on it (bytes for tasks and byte-level text: no file).
    fn source(
        &self,
        seq: usize,
        choice: TokenizerChoice,
    ) -> Result<(Box<dyn DataSource>, TextTokenizer)> {
        let Some(path) = &self.text else {
            let data: Box<dyn DataSource> = match &self.data {
                Some(spec) => Box::new(cyb::shard_data::ShardData::open(spec, self.vocab, seq)?),
                None => task_by_name(&self.task)?,
            };
            return Ok((data, TextTokenizer::Bytes));
        };
        let text = match choice {
            TokenizerChoice::Fixed(TextTokenizer::Bytes) => {
                return Ok((
                    Box::new(ByteText::from_file(path, seq)?),
                    TextTokenizer::Bytes,
                ))
            }
            TokenizerChoice::Fixed(tok) => TokenText::from_file_with(path, tok, seq)?,
            TokenizerChoice::TrainBpe(n) => {
                let what = format!("training a {n}-token byte-level BPE on {}", path.display());
                note(&what);
                // The trainer reports no progress of its own (no `progressbar` feature):
                // a spinner shows that it runs (hidden when stderr is not a terminal).
                let spinner = indicatif::ProgressBar::new_spinner().with_message(what);
                spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                let text = TokenText::from_file(path, n, seq);
                spinner.finish_and_clear();
                text?
            }
        };
        let tok = text.tokenizer().clone();
        Ok((Box::new(text), tok))
    }
}

/// The data's vocabulary fits a model of `model_vocab` tokens: equal, or smaller (a
/// Hugging Face tokenizer whose model has unused ids, a task), but never byte-level text
/// for a model that reads a tokenizer's ids; never larger.
fn check_vocab(data: &dyn DataSource, tokenizer: &TextTokenizer, model_vocab: usize) -> Result<()> {
    let v = data.vocab();
    if v > model_vocab {
        return Err(CybError::Data(format!(
            "the data ({}) has vocabulary {v}, more than the model's {model_vocab}",
            data.describe()
        )));
    }
    // Byte-level data (V = 256) on a larger model: text read as bytes by a model that
    // reads a tokenizer's ids. A built-in task's smaller vocabulary fits any model
    // (fine-tuning a pretrained model on a synthetic task); whether it is the task the
    // model was trained on is `same_data`'s question.
    if v < model_vocab && v == 256 && tokenizer.is_bytes() {
        return Err(CybError::Data(format!(
            "the data has vocabulary {v} but the model was trained with {model_vocab} (a text \
             model needs --text, and one saved without its tokenizer also --tokenizer)"
        )));
    }
    Ok(())
}

/// A loaded model fits the data: its vocabulary ([`check_vocab`]) and the data it was
/// trained on ([`same_data`]). A tokenizer's vocabulary is checked first (a tokenizer
/// larger than the model can never work, whatever the data); for tasks and bytes the
/// data's identity first, since its message names both tasks.
fn check_loaded(
    path: &std::path::Path,
    meta: &std::collections::HashMap<String, String>,
    data: &dyn DataSource,
    tokenizer: &TextTokenizer,
    model_vocab: usize,
) -> Result<()> {
    if !tokenizer.is_bytes() {
        check_vocab(data, tokenizer, model_vocab)?;
    }
    same_data(path, meta, data)?;
    check_vocab(data, tokenizer, model_vocab)
}

/// `--bpe N` in the range it supports.
fn check_bpe(bpe: Option<usize>) -> Result<()> {
    match bpe {
        Some(n) if !(256..=65536).contains(&n) => Err(CybError::Param(format!(
            "--bpe {n}: a byte-level BPE vocabulary of 256..=65536 tokens"
        ))),
        _ => Ok(()),
    }
}

/// Parameters of the CYB objectives (docs/MATH.md, "The five objectives"); the defaults
/// are the paper's best.
#[derive(Args, Clone)]
struct ObjectiveParams {
    /// CYB-AP deadline distribution omega over the steps 0..K: exactly K+1 ratios
    /// (zeros allowed), e.g. 4:1:1:4 [default: 0:..:0:1, the world always waits].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_ratios)]
    omega: Option<StepWeights>,
    /// Discount gamma in (0, 1] of ap, va and dp (1 = none).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    gamma: f64,
    /// How the discount falls with the step k: exp (gamma^k) or linear (1 - k(1-gamma)).
    #[arg(long, default_value_t = Discount::Exp)]
    discount: Discount,
    /// CYB-VA and CYB-DP reference distribution rho over the steps 0..K: exactly K+1
    /// ratios (va: all > 0; dp: zeros allowed) [default: uniform, 1:1:..:1].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_ratios)]
    rho: Option<StepWeights>,
    /// CYB-VA weight of KL(h || rho).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    beta: f64,
    /// CYB-DP weight of KL(rho || h).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.01)]
    alpha: f64,
}

fn parse_ratios(s: &str) -> std::result::Result<StepWeights, String> {
    s.parse::<StepWeights>().map_err(|e| e.to_string())
}

impl ObjectiveParams {
    fn ap(&self) -> Objective {
        Objective::Ap {
            omega: self.omega.clone().unwrap_or(StepWeights::Last),
            gamma: self.gamma,
            discount: self.discount,
        }
    }
    fn va(&self) -> Objective {
        Objective::Va {
            rho: self.rho.clone().unwrap_or(StepWeights::Uniform),
            beta: self.beta,
            gamma: self.gamma,
            discount: self.discount,
        }
    }
    fn dp(&self) -> Objective {
        Objective::Dp {
            rho: self.rho.clone().unwrap_or(StepWeights::Uniform),
            alpha: self.alpha,
            gamma: self.gamma,
            discount: self.discount,
        }
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Training objective (docs/MATH.md): ap (CYB-AP, the paper's best), dp (CYB-DP),
    /// va (CYB-VA), marginal, or ce_final (pause + CE; with --pauses 0 plain CE).
    #[arg(long, value_enum, default_value = "ap")]
    objective: ObjectiveName,
    #[command(flatten)]
    params: ObjectiveParams,
    #[command(flatten)]
    run: RunArgs,
    /// Save the trained model (safetensors, docs/MATH.md "Checkpoints"; records the data
    /// it was trained on).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Start from a saved model trained on the same data: its shape is kept (--layers,
    /// --d-model, --heads, --pause-attention and --dk-prior must match or be left out),
    /// --ctx and --pauses default to its own, and its saved tokenizer, if any, encodes
    /// --text.
    #[arg(long, conflicts_with = "resume")]
    load: Option<PathBuf>,
    /// With --text: train an N-token byte-level BPE (Hugging Face tokenizers' trainer,
    /// GPT-2's byte-level setup) on the file's first 80% (its training part) instead of
    /// bytes; --save writes it beside the checkpoint as NAME.tokenizer.json.
    #[arg(long)]
    bpe: Option<usize>,
    /// Start from a Hugging Face GPT-2 folder (config.json, model.safetensors,
    /// tokenizer.json), imported with --pauses, --pause-attention and --dk-prior (as `cyb
    /// import`); its shape overrides --layers/--d-model/...
    #[arg(long, conflicts_with_all = ["load", "resume"])]
    from_hf: Option<PathBuf>,
    /// Every N steps write a snapshot beside --save: NAME.stepNNNNNN.safetensors (the
    /// model, saved as the final one: its tokenizer beside it, its data recorded) and
    /// NAME.stepNNNNNN.train-state.safetensors (optimiser, generator, data
    /// position, settings), for --resume. With --save, SIGINT/SIGTERM save one and stop
    /// at the next step boundary (a second Ctrl-C exits at once).
    #[arg(long, default_value_t = 0, requires = "save")]
    save_every: usize,
    /// Snapshots kept (the newest).
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Continue the run of a snapshot (NAME.stepNNNNNN.safetensors) exactly where it
    /// stopped; every other flag must be as in that run (differences are refused),
    /// except the data-parallel ones: any number of GPUs that divides --batch resumes
    /// it (with --world-size, every rank passes the same snapshot).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write report.md and curve.csv into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Arithmetic of the GPU steps: `bf16` (mixed precision: bf16 activations and
    /// GEMMs with f32 accumulation, f32 master weights, gradients, AdamW, LayerNorm
    /// statistics, softmax and loss) or `f32` [default: bf16 with --device cuda, f32 on
    /// the CPU, which runs f32 only].
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Data parallel in one process: a model replica on each of CUDA devices 0..N, the
    /// --batch split evenly over them, gradients summed with NCCL; equals one device on
    /// the whole batch (needs --device cuda and a build with feature `nccl`).
    #[arg(long)]
    gpus: Option<usize>,
    /// Data parallel over W processes, one GPU each (with --rank and --rendezvous; else
    /// WORLD_SIZE or SLURM_NTASKS). The device is LOCAL_RANK or SLURM_LOCALID, else
    /// the rank.
    #[arg(long)]
    world_size: Option<usize>,
    /// This process's rank in 0..W (else RANK or SLURM_PROCID); rank 0 writes the
    /// checkpoints and the report.
    #[arg(long)]
    rank: Option<usize>,
    /// A file on a filesystem every rank sees, absent before the run: rank 0 writes
    /// NCCL's id there, the others wait for it: up to CYB_NCCL_TIMEOUT_S seconds (300 when
    /// unset).
    #[arg(long)]
    rendezvous: Option<PathBuf>,
    /// Data parallel: the gradients are all-reduced in buckets of at least this many
    /// MiB (fractions allowed), each on a second stream as soon as the backward has
    /// finished it, overlapping the rest of the backward (PyTorch DDP's bucket_cap_mb);
    /// 0 = one all-reduce of all gradients after the backward.
    #[arg(long, allow_negative_numbers = true, default_value_t = 25.0)]
    bucket_mb: f64,
}

/// Model shape, schedule and seed: the same for `train` and `experiment`.
#[derive(Args, Clone)]
struct RunArgs {
    /// Pause steps K per position (0 = a plain GPT).
    #[arg(long, default_value_t = 3)]
    pauses: usize,
    /// Attention over pause steps (docs/MATH.md): `shared` (the paper's Recipe 1:
    /// causal over the interleaved stream) or `private` (no position sees another's
    /// pauses; adaptive inference with a cache of real tokens).
    #[arg(long, default_value = "shared")]
    pause_attention: cyb::config::PauseAttention,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Context length T.
    #[arg(long, default_value_t = 16)]
    ctx: usize,
    /// Optimizer steps (per arm for `experiment`).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (warmup, then cosine to a tenth of it).
    #[arg(long, allow_negative_numbers = true, default_value_t = 3e-3)]
    lr: f32,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    weight_decay: f32,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    grad_clip: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Validation batches for the learning curve and the report.
    #[arg(long, default_value_t = 16)]
    eval_batches: usize,
    /// Evaluate every this many steps for the learning curve (0 = only at the end)
    /// [default: a tenth of --steps].
    #[arg(long)]
    eval_every: Option<usize>,
    /// DK prior psi in [0, 1) of a new model: its DK bias log(psi/(1-psi)) + log V makes
    /// p(DK) = psi when all logits are equal (0 = no bias). A loaded model keeps its own.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.9)]
    dk_prior: f64,
    /// The LM head is fused with the loss in training and evaluation: chunks of whole
    /// positions whose logits take at most this many MiB, so the [B, K+1, T, V+1]
    /// logits tensor never exists (0 = the unfused head: the whole tensor).
    #[arg(long, default_value_t = 256)]
    head_chunk_mb: usize,
}

#[derive(Args)]
struct ExperimentArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Parameters of the three CYB variants (the paper's best unless given).
    #[command(flatten)]
    params: ObjectiveParams,
    #[command(flatten)]
    run: RunArgs,
    /// Seeds: every variant is trained once per seed.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u64, 2, 3])]
    seeds: Vec<u64>,
    /// Learning-rate sweep, e.g. 3e-3,1e-3,3e-4 (instead of --lr): every arm and regime
    /// is fine-tuned at every rate; each arm is reported at the rate with its best mean
    /// validation quality over seeds, measured on the test split (the pretraining runs
    /// once per seed at --lr's default). A rate whose loss becomes NaN/inf is recorded
    /// as diverged and never chosen; an arm with every rate diverged is an error.
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        conflicts_with = "lr"
    )]
    lrs: Vec<f32>,
    /// Folder for report.md, curves.csv, ratios.csv and the plots.
    #[arg(long, default_value = "experiment")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Arithmetic of the GPU steps, as for `train` [default: bf16 with --device cuda,
    /// f32 on the CPU].
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Steps of the no-pause model that every arm of a seed is fine-tuned from (the
    /// paper's protocol; 0 = every arm from scratch).
    #[arg(long, default_value_t = DEFAULT_PRETRAIN)]
    pretrain: usize,
    /// Fine-tune every arm from this model instead of pretraining (trained on the same
    /// data; its shape and DK bias are kept: --layers, --d-model, --heads must match or
    /// be left out, --ctx at most its context, no --dk-prior or --pretrain).
    #[arg(long)]
    load: Option<PathBuf>,
    /// Fine-tune every arm from a Hugging Face GPT-2 folder, imported with --pauses
    /// depth rows and --dk-prior (the paper's protocol: it replaces the no-pause
    /// pretraining; the no-pause arm is the pretrained model fine-tuned at K = 0).
    #[arg(long, conflicts_with = "load")]
    from_hf: Option<PathBuf>,
    /// `paper`: add the paper's hyperparameter grid (AP 4 settings, VA 3, DP 6, K = 3)
    /// as extra arms.
    #[arg(long)]
    grid: Option<GridName>,
    /// Data regimes, e.g. 1,2,3: fresh fine-tuning of no-pause, the widest TBYS and
    /// CYB-AP on r times the data for every r > 1.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize])]
    regimes: Vec<usize>,
    /// With --text: train an N-token byte-level BPE (Hugging Face tokenizers' trainer)
    /// on the file's first 80% (its training part) instead of bytes.
    #[arg(long)]
    bpe: Option<usize>,
    /// Data parallel in one process, as for `train`: every run (the pretraining and
    /// every arm) on a model replica on each of CUDA devices 0..N, the --batch split
    /// evenly over them; the results equal one device's within the rounding of the
    /// gradient sums (needs --device cuda and a build with feature `nccl`).
    #[arg(long)]
    gpus: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GridName {
    Paper,
}

/// Default steps of `train`.
const DEFAULT_TRAIN_STEPS: usize = 4000;
/// Default steps of `experiment`: per arm, and of the no-pause pretraining.
const DEFAULT_EXPERIMENT_STEPS: usize = 600;
const DEFAULT_PRETRAIN: usize = 2000;

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The saved model to evaluate.
    #[arg(long, required_unless_present = "from_hf")]
    load: Option<PathBuf>,
    /// Evaluate a Hugging Face GPT-2 folder instead (imported in memory with --pauses
    /// pause steps, default 0: the pretrained model itself; shared pauses, DK prior 0.9).
    #[arg(long, conflicts_with = "load")]
    from_hf: Option<PathBuf>,
    /// Pause steps K to allow (default: the model's k_max).
    #[arg(long)]
    pauses: Option<usize>,
    /// Context length (default: the model's t_max).
    #[arg(long)]
    ctx: Option<usize>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 32)]
    eval_batches: usize,
    /// Greedy policy: DK when p(DK) exceeds this.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5)]
    threshold: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also list every target token with its mean pauses and their variance.
    #[arg(long)]
    pauses_by_token: bool,
    /// With --data: evaluate on the first N validation tokens, read in order
    /// (non-overlapping windows of --ctx), instead of --eval-batches random batches.
    #[arg(long, requires = "data")]
    tokens: Option<u64>,
    /// The held-out part to evaluate on: validation (what learning curves and choices
    /// use) or test (what `experiment` reports; 10% of a text, the end of the training
    /// shards, its own generator for a task).
    #[arg(
        long,
        value_enum,
        default_value = "validation",
        conflicts_with = "tokens"
    )]
    split: SplitArg,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
}

/// The objective `train` was asked for; `--omega` and `--rho` with an objective that
/// does not read them are errors (they would be silently ignored).
fn objective(a: &TrainArgs) -> Result<Objective> {
    let o = match a.objective {
        ObjectiveName::CeFinal => Objective::CeFinal,
        ObjectiveName::Marginal => Objective::Marginal,
        ObjectiveName::Ap => a.params.ap(),
        ObjectiveName::Va => a.params.va(),
        ObjectiveName::Dp => a.params.dp(),
    };
    let reads_omega = matches!(o, Objective::Ap { .. });
    let reads_rho = matches!(o, Objective::Va { .. } | Objective::Dp { .. });
    for (given, reads, flag) in [
        (a.params.omega.is_some(), reads_omega, "--omega (ap)"),
        (a.params.rho.is_some(), reads_rho, "--rho (va and dp)"),
    ] {
        if given && !reads {
            return Err(CybError::Param(format!(
                "{flag} is not a parameter of --objective {}",
                o.name()
            )));
        }
    }
    Ok(o)
}

/// Every objective parameter, the DK prior and every number of the schedule checked
/// for `K = pauses` before any data is read or any model built.
fn check_params(objectives: &[Objective], run: &RunArgs, default_steps: usize) -> Result<()> {
    let (r, steps) = (run, run.steps.unwrap_or(default_steps));
    limits::check_schedule(
        r.lr,
        r.weight_decay,
        r.grad_clip,
        steps,
        r.batch,
        r.ctx,
        r.eval_batches,
    )?;
    limits::eval_every(r.eval_every.unwrap_or(0), steps)?;
    limits::at_least_one("--layers", r.layers)?;
    limits::at_least_one("--d-model", r.d_model)?;
    limits::at_least_one("--heads", r.heads)?;
    if r.d_model % r.heads != 0 {
        // The largest head count up to the one asked for that divides the width.
        let works = (1..=r.heads)
            .rev()
            .find(|h| r.d_model % h == 0)
            .unwrap_or(1);
        return Err(CybError::Param(format!(
            "--heads = {}: --d-model {} must be a multiple of --heads (e.g. --heads {works})",
            r.heads, r.d_model
        )));
    }
    for o in objectives {
        o.resolve(run.pauses)?;
    }
    dk_bias_from_prior(run.dk_prior, 1).map(|_| ())
}

fn require_cpu(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda => Err(CybError::Unavailable(
            "--device cuda: only `cyb train` runs on the GPU (feature `cuda`); evaluation and \
             generation run on the CPU. Use --device cpu."
                .into(),
        )),
    }
}

/// Write each file to a temporary name first, then rename: no half-written outputs.
/// Every file is attempted; the first failure is returned.
fn write_outputs(dir: &PathBuf, files: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CybError::io(dir, e))?;
    let mut first = Ok(());
    for &(name, text) in files {
        let r = cyb::atomic_file::write_atomic(&dir.join(name), text.as_bytes());
        if first.is_ok() {
            first = r;
        }
    }
    first
}

impl RunArgs {
    /// How `--from-hf` imports: with these flags' pauses, attention mode and DK prior.
    fn import(&self) -> ImportOptions {
        ImportOptions {
            pauses: self.pauses,
            pause_attention: self.pause_attention,
            dk_prior: self.dk_prior,
        }
    }

    /// The training configuration these flags describe, for a model of `vocab` tokens.
    fn train_config(
        &self,
        vocab: usize,
        objective: Objective,
        default_steps: usize,
    ) -> Result<TrainConfig> {
        let steps = self.steps.unwrap_or(default_steps);
        let mut cfg = TrainConfig {
            model: ModelConfig {
                vocab,
                d_model: self.d_model,
                n_layer: self.layers,
                n_head: self.heads,
                t_max: self.ctx,
                k_max: self.pauses,
                pause_attention: self.pause_attention,
                dk_bias: 0.0,
                layer_norm_eps: 1e-5,
            },
            objective,
            pauses: self.pauses,
            steps,
            batch: self.batch,
            seq: self.ctx,
            lr: self.lr,
            min_lr_ratio: 0.1,
            warmup: (steps / 20).max(1),
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed: self.seed,
            eval_every: self.eval_every.unwrap_or((steps / 10).max(1)),
            eval_batches: self.eval_batches,
            head: match self.head_chunk_mb {
                0 => HeadMode::Unfused,
                mb => HeadMode::Fused {
                    chunk_bytes: mb.saturating_mul(1 << 20),
                },
            },
        };
        cfg.model.dk_bias = dk_bias_from_prior(self.dk_prior, vocab)?;
        Ok(cfg)
    }
}

/// The data-parallel launch of `train` (`--gpus`, `--world-size/--rank/--rendezvous`,
/// else a launcher's environment), `None` for one device. The environment is read with
/// --device cuda only; the flags elsewhere are errors.
fn data_parallel_launch(a: &TrainArgs) -> Result<Option<cyb::launch::Launch>> {
    if !(a.bucket_mb.is_finite() && a.bucket_mb >= 0.0) {
        return Err(CybError::Param(format!(
            "--bucket-mb {} must be a finite number >= 0 (0 = one all-reduce after the \
             backward)",
            a.bucket_mb
        )));
    }
    let flags = a.gpus.is_some() || a.world_size.is_some() || a.rank.is_some();
    if let Device::Cpu = a.device {
        return no_replicas_on_cpu(flags || a.rendezvous.is_some()).map(|()| None);
    }
    let launch = cyb::launch::Launch::from_flags_and_env(
        a.gpus,
        a.world_size,
        a.rank,
        a.rendezvous.clone(),
        &|k| std::env::var(k).ok(),
    )?;
    Ok(launch.map(|mut l| {
        // Rounded up: a positive size never becomes 0, the unbucketed path.
        l.bucket_bytes = (a.bucket_mb * (1u64 << 20) as f64).ceil() as usize;
        l
    }))
}

/// The refusal of data-parallel flags (`given`) with `--device cpu`.
fn no_replicas_on_cpu(given: bool) -> Result<()> {
    if given {
        return Err(CybError::Param(
            "--gpus, --world-size, --rank and --rendezvous run data-parallel replicas on \
             GPUs: add --device cuda"
                .into(),
        ));
    }
    Ok(())
}

fn run_train(a: TrainArgs, given: &Given) -> Result<()> {
    let device = train_device(a.device, a.precision)?;
    let objective = objective(&a)?;
    let reads_discount = matches!(
        a.objective,
        ObjectiveName::Ap | ObjectiveName::Va | ObjectiveName::Dp
    );
    let name = objective.name();
    given.refuse(&[
        (
            "task",
            a.data.text.is_some(),
            "--text gives the data; leave out --task or --text".into(),
        ),
        (
            "gamma",
            !reads_discount,
            format!("--objective {name} has no discount (a parameter of ap, va and dp)"),
        ),
        (
            "discount",
            !reads_discount,
            format!("--objective {name} has no discount (a parameter of ap, va and dp)"),
        ),
        (
            "beta",
            a.objective != ObjectiveName::Va,
            format!("it weighs CYB-VA's KL term (--objective va), not a term of {name}"),
        ),
        (
            "alpha",
            a.objective != ObjectiveName::Dp,
            format!("it weighs CYB-DP's KL term (--objective dp), not a term of {name}"),
        ),
    ])?;
    check_params(
        std::slice::from_ref(&objective),
        &a.run,
        DEFAULT_TRAIN_STEPS,
    )?;
    if let Some(p) = &a.save {
        cyb::atomic_file::check_writable_file(p)?;
    }
    if let Some(dir) = &a.out {
        cyb::atomic_file::check_writable_dir(dir)?;
    }
    check_bpe(a.bpe)?;
    if a.keep == 0 {
        return Err(CybError::Param(
            "--keep 0: keep at least one snapshot (e.g. --keep 3, the default)".into(),
        ));
    }
    let (init, resume, saved, origin) = match &a.resume {
        Some(p) => {
            let snap = cyb::train_state::open_snapshot(p)?;
            let origin = Some(p.clone());
            (
                Some((snap.model, snap.meta)),
                Some(snap.state),
                snap.tokenizer,
                origin,
            )
        }
        None => match start_model(a.load.as_deref(), a.from_hf.as_deref(), &a.run.import())? {
            Some(s) => (Some((s.model, s.meta)), None, s.tokenizer, Some(s.path)),
            None => (None, None, None, None),
        },
    };
    let mut run = a.run.clone();
    if let (Some((m, _)), Some(_)) = (&init, &a.load) {
        let m = &m.config;
        let mut rules = shape_rules(&run, m);
        rules.push((
            "pause_attention",
            run.pause_attention != m.pause_attention,
            format!(
                "the loaded model has {} pauses and keeps them (leave the flag out, or train \
                 a new model)",
                m.pause_attention.name()
            ),
        ));
        given.refuse(&rules)?;
        // Unless given, the context and the pauses are the loaded model's own.
        if !given.has("ctx") {
            run.ctx = m.t_max;
        }
        if !given.has("pauses") {
            run.pauses = m.k_max;
        }
    }
    // `--resume` takes the run's flags as they were, `--bpe N` included: the BPE is
    // trained again and must be the one saved with the snapshot.
    let (saved, resumed_bpe) = match (&resume, a.bpe, saved) {
        (Some(_), Some(_), Some(t)) => (None, Some(t)),
        (_, _, saved) => (saved, None),
    };
    let choice = a.data.tokenizer(a.bpe, saved, origin.as_deref())?;
    let (data, tokenizer) = a.data.source(run.ctx, choice)?;
    if let (Some(t), Some(path)) = (&resumed_bpe, &a.resume) {
        if !same_tokenizer(t, &tokenizer)? {
            return Err(CybError::Param(format!(
                "cannot resume: --bpe {} on {} trains another tokenizer than the one saved \
                 with {} (did the text or --bpe change?)",
                a.bpe.unwrap_or_default(),
                data.describe(),
                path.display()
            )));
        }
    }
    if let (Some((m, meta)), Some(path), None) = (&init, &origin, &resume) {
        check_loaded(path, meta, data.as_ref(), &tokenizer, m.config.vocab)?;
    }
    let mut cfg = run.train_config(data.vocab(), objective, DEFAULT_TRAIN_STEPS)?;
    let init = init.map(|(m, _)| m);
    // A loaded or imported model's shape overrides the flags; a resumed one's must equal
    // them (a difference is refused, named).
    if let (Some(m), None) = (&init, &resume) {
        cfg.model = m.config.clone();
    }
    let launch = data_parallel_launch(&a)?;
    match (&launch, &resume) {
        (Some(l), None) => l.check_batch(cfg.batch).map(|_| ())?,
        (Some(l), Some(_)) => l.check_resumed_batch(cfg.batch).map(|_| ())?,
        (None, _) => {}
    }
    // Rank 0 alone writes checkpoints, snapshots and the report.
    let writer = launch.as_ref().is_none_or(|l| l.writes_checkpoints());
    let save = a.save.clone().filter(|_| writer);
    let stop = match &save {
        Some(_) => Some(stop_on_signals()?),
        None => None,
    };
    let control = RunControl {
        snapshot_base: save.clone(),
        save_every: a.save_every,
        keep: a.keep,
        resume,
        stop,
        launch: launch.clone(),
        tokenizer: Some(tokenizer.clone()),
    };
    cfg.check()?;
    let m = &cfg.model;
    note(format!(
        "training {} on {} | d={} L={} H={} T={} K={} ({} pauses) | {} steps x {} x {}",
        cfg.objective,
        data.describe(),
        m.d_model,
        m.n_layer,
        m.n_head,
        cfg.seq,
        cfg.pauses,
        m.pause_attention.name(),
        cfg.steps,
        cfg.batch,
        cfg.seq
    ));
    if let Some(state) = &control.resume {
        note(format!("resuming at step {} of {}", state.step, cfg.steps));
    }
    let trained = train_with(&cfg, data.as_ref(), init, writer, device, control)?;
    if let Some(stopped) = &trained.stopped {
        match &stopped.snapshot {
            Some(snap) => note(format!(
                "stopped at step {} of {}: saved {}\nresume with: {}",
                stopped.step,
                cfg.steps,
                snap.display(),
                resume_command(snap)
            )),
            None => note(format!("stopped at step {} of {}", stopped.step, cfg.steps)),
        }
        std::process::exit(STOPPED_EXIT);
    }
    if !writer {
        let l = launch.as_ref().map_or(0, |l| l.local[0].rank);
        note(format!(
            "rank {l}: {} steps done (rank 0 writes the checkpoint and the report)",
            cfg.steps
        ));
        return Ok(());
    }
    if let Some(path) = &save {
        checkpoint_tokenizer::save_trained(path, &trained.model, &tokenizer, data.as_ref())?;
        note(format!("saved {}", path.display()));
    }
    let summary = evaluate(&trained.model, data.as_ref(), &cfg.eval_config())?;
    let desc = RunDescription {
        lines: vec![
            format!(
                "objective: {} with K = {} pauses",
                cfg.objective, cfg.pauses
            ),
            format!("data: {}", data.describe()),
            format!(
                "model: d_model {} layers {} heads {} context {} (V = {}), {} pause attention, \
                 DK bias {:.4}",
                m.d_model,
                m.n_layer,
                m.n_head,
                cfg.seq,
                m.vocab,
                m.pause_attention.name(),
                Num(m.dk_bias)
            ),
            format!(
                "training: {} steps x {} sequences x {} tokens = {} real tokens, lr {} seed {}",
                cfg.steps,
                cfg.batch,
                cfg.seq,
                cfg.steps * cfg.batch * cfg.seq,
                Num::from(cfg.lr),
                cfg.seed
            ),
            match device {
                TrainDevice::Cpu => format!(
                    "speed: {:.0} real tokens/s on {} CPU threads, {:.1} s in all",
                    Num(trained.tokens_per_sec),
                    rayon::current_num_threads(),
                    Num(trained.seconds)
                ),
                TrainDevice::Cuda(precision) => format!(
                    "speed: {:.0} real tokens/s on {} ({precision}), {:.1} s in all",
                    Num(trained.tokens_per_sec),
                    match &launch {
                        None => "CUDA device 0".to_string(),
                        Some(l) => format!("{} GPUs, data parallel", l.world_size),
                    },
                    Num(trained.seconds)
                ),
            },
        ],
    };
    let report = render(&desc, &summary, data.as_ref());
    // The files first: a reader that closes standard output early (`| head`) must not
    // cost them.
    if let Some(dir) = &a.out {
        let csv = curve_csv(&trained.curve);
        write_outputs(dir, &[("report.md", &report), ("curve.csv", &csv)])?;
        plot::plot_pauses(&dir.join("pauses.png"), &summary)?;
        note(format!("wrote {}", dir.display()));
    }
    out(&report)
}

/// Exit status of a run stopped by SIGINT/SIGTERM after saving (128 + SIGINT, as a
/// shell reports a run killed by Ctrl-C: the run did not finish).
const STOPPED_EXIT: i32 = 130;

/// A flag set by the first SIGINT or SIGTERM (the run saves and stops at the next step
/// boundary); the second one exits at once with status 130, leaving the files as they
/// are (an interrupted write leaves only its temporary file).
fn stop_on_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, STOPPED_EXIT, flag.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
            .map_err(|e| CybError::Param(format!("cannot install a signal handler: {e}")))?;
    }
    Ok(flag)
}

/// This process's command line with `--resume SNAPSHOT` instead of any `--resume`/`--load`.
fn resume_command(snapshot: &std::path::Path) -> String {
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args() {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--resume" || a == "--load" {
            skip = true;
            continue;
        }
        if a.starts_with("--resume=") || a.starts_with("--load=") {
            continue;
        }
        args.push(a);
    }
    args.push("--resume".into());
    args.push(snapshot.display().to_string());
    let quote = |a: &String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./:=,+-".contains(c))
        {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    use cyb::tokenize::{tokenize, TokenizeConfig, TokenizerSpec};
    let cfg = TokenizeConfig {
        inputs: a.files,
        tokenizer: match a.tokenizer {
            Some(p) => TokenizerSpec::HuggingFace(p),
            None => TokenizerSpec::Bytes,
        },
        out: a.out,
        val_tokens: a.val_tokens,
        shard_tokens: a.shard_tokens,
        version: a.shard_version,
    };
    let s = tokenize(&cfg, true)?;
    note(format!(
        "{} bytes -> {} training + {} validation tokens (V = {}) in {} shards in {}, {:.1} s \
         ({:.1} MB/s, {:.0} tokens/s)",
        s.bytes,
        s.train_tokens,
        s.val_tokens,
        s.vocab,
        s.shards.len(),
        cfg.out.display(),
        s.seconds,
        s.bytes as f64 / s.seconds.max(1e-9) / 1e6,
        (s.train_tokens + s.val_tokens) as f64 / s.seconds.max(1e-9)
    ));
    Ok(())
}

fn run_experiment_cmd(a: ExperimentArgs, given: &Given) -> Result<()> {
    let device = train_device(a.device, a.precision)?;
    // Only `--gpus` here: every run of an experiment joins its replicas anew, which a
    // one-process launch does by itself (no rendezvous file per run).
    let launch = match (a.device, a.gpus) {
        (Device::Cpu, g) => no_replicas_on_cpu(g.is_some()).map(|()| None)?,
        (Device::Cuda, g) => g.map(cyb::launch::Launch::single_process).transpose()?,
    };
    if let Some(l) = &launch {
        l.check_batch(a.run.batch)?;
    }
    given.refuse(&[
        (
            "task",
            a.data.text.is_some(),
            "--text gives the data; leave out --task or --text".into(),
        ),
        (
            "eval_every",
            a.run.eval_every == Some(0),
            "the experiment compares learning curves, which need points: leave it out \
             (a tenth of --steps) or give a number of steps"
                .into(),
        ),
        (
            "pretrain",
            a.load.is_some(),
            "--load gives the model every arm is fine-tuned from (nothing is pretrained)".into(),
        ),
    ])?;
    no_repeats("--seeds", &a.seeds)?;
    no_repeats("--regimes", &a.regimes)?;
    if given.has("lrs") {
        limits::learning_rates(&a.lrs)?;
        for &lr in &a.lrs {
            check_params(
                &[],
                &RunArgs {
                    lr,
                    ..a.run.clone()
                },
                DEFAULT_EXPERIMENT_STEPS,
            )?;
        }
    }
    let arms = [a.params.ap(), a.params.va(), a.params.dp()];
    check_params(&arms, &a.run, DEFAULT_EXPERIMENT_STEPS)?;
    limits::experiment_pauses(a.run.pauses)?;
    if a.grid.is_some() && a.run.pauses != 3 {
        return Err(CybError::Param(format!(
            "--grid paper is the paper's grid for K = 3 (ratios over 4 steps): --pauses {} does not fit",
            a.run.pauses
        )));
    }
    if let Some(&r) = a.regimes.iter().find(|&&r| r == 0 || r > 10) {
        return Err(CybError::Param(format!(
            "--regimes: {r} is not in 1..=10 (e.g. --regimes 1,2,3)"
        )));
    }
    check_bpe(a.bpe)?;
    if a.data.text.is_none() && (a.bpe.is_some() || a.data.tokenizer.is_some()) {
        a.data.tokenizer(a.bpe, None, None)?; // the error that says which flag needs --text
    }
    cyb::atomic_file::check_writable_dir(&a.out)?;
    let start = start_model(a.load.as_deref(), a.from_hf.as_deref(), &a.run.import())?;
    let (init, saved, origin) = match start {
        Some(s) => (Some((s.model, s.meta)), s.tokenizer, Some(s.path)),
        None => (None, None, None),
    };
    if let (Some((m, _)), Some(_)) = (&init, &a.load) {
        given.refuse(&shape_rules(&a.run, &m.config))?;
    }
    let [ap, va, dp] = arms;
    let seq = init
        .as_ref()
        .map_or(a.run.ctx, |(m, _)| m.config.t_max.min(a.run.ctx));
    let choice = a.data.tokenizer(a.bpe, saved, origin.as_deref())?;
    let (data, tokenizer) = a.data.source(seq, choice)?;
    if let (Some((m, meta)), Some(path)) = (&init, &origin) {
        check_loaded(path, meta, data.as_ref(), &tokenizer, m.config.vocab)?;
    }
    let init = init.map(|(m, _)| m);
    let mut base =
        a.run
            .train_config(data.vocab(), Objective::CeFinal, DEFAULT_EXPERIMENT_STEPS)?;
    if let Some(m) = &init {
        let pa = base.model.pause_attention;
        base.model = m.config.clone();
        base.model.pause_attention = pa;
        base.seq = seq;
    }
    if base.eval_every == 0 {
        // Learning curves need points to interpolate: ten per run by default.
        base.eval_every = (base.steps / 10).max(1);
    }
    let mut arms = variants(a.run.pauses, ap, va, dp);
    if a.grid.is_some() {
        arms.extend(cyb::experiment::paper_grid()?);
    }
    let extra = cyb::experiment::regime_variants(&arms, &a.regimes);
    arms.extend(extra);
    let cfg = ExperimentConfig {
        variants: arms,
        seeds: a.seeds.clone(),
        base,
        pretrain: a.pretrain,
        init,
        device,
        lrs: a.lrs.clone(),
        launch,
    };
    let command: Vec<String> = std::env::args().collect();
    let res = run_experiment(&cfg, data.as_ref(), true, |i, n, label| {
        note(format!("[{}/{n}] {label}", i + 1))
    })?;
    let report = render_report(&res, &command.join(" "));
    // Every file that can be written (a failed one does not stop the others), then the
    // report, then the first failure as the error: a reader that closes standard
    // output early (`| head`) does not cost the files, and a failed file does not cost
    // the report.
    let mut files = vec![("report.md", report.clone())];
    files.extend(csv_files(&res));
    let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let written = [write_outputs(&a.out, &files), plot_experiment(&a.out, &res)];
    out(&report)?;
    let failed: Vec<_> = written.into_iter().filter_map(|r| r.err()).collect();
    for e in failed.iter().skip(1) {
        note(format!("error: {e}"));
    }
    match failed.into_iter().next() {
        Some(e) => Err(e),
        None => {
            note(format!("wrote {}", a.out.display()));
            Ok(())
        }
    }
}

fn run_eval(a: EvalArgs, given: &Given) -> Result<()> {
    require_cpu(a.device)?;
    given.refuse(&[(
        "task",
        a.data.text.is_some(),
        "--text gives the data; leave out --task or --text".into(),
    )])?;
    limits::at_least_one("--eval-batches", a.eval_batches)?;
    limits::at_least_one("--batch", a.batch)?;
    limits::threshold(a.threshold)?;
    if let Some(c) = a.ctx {
        limits::at_least_one("--ctx", c)?;
    }
    let hf = ImportOptions {
        pauses: a.pauses.unwrap_or(0),
        ..ImportOptions::default()
    };
    let start = start_model(a.load.as_deref(), a.from_hf.as_deref(), &hf)?
        .ok_or_else(|| CybError::Param("give --load FILE or --from-hf DIR".into()))?;
    let model = start.model;
    let seq = a.ctx.unwrap_or(model.config.t_max);
    let pauses = a.pauses.unwrap_or(model.config.k_max);
    let choice = a.data.tokenizer(None, start.tokenizer, Some(&start.path))?;
    let (data, tokenizer) = a.data.source(seq, choice)?;
    check_loaded(
        &start.path,
        &start.meta,
        data.as_ref(),
        &tokenizer,
        model.config.vocab,
    )?;
    let cfg = EvalConfig {
        pauses,
        batches: a.eval_batches,
        batch: a.batch,
        seq,
        threshold: a.threshold,
        seed: a.seed,
        split: a.split.into(),
    };
    let (summary, what) = match a.tokens {
        None => (
            evaluate_shown(&model, data.as_ref(), &cfg, true)?,
            format!(", {} split", cfg.split.name()),
        ),
        Some(n) => {
            let spec = a.data.data.as_deref().unwrap_or_default();
            let shards = cyb::shard_data::ShardData::open(spec, a.data.vocab, seq)?;
            (
                stream_eval(&model, &shards, &cfg, n)?,
                format!(", {n} validation tokens in order"),
            )
        }
    };
    let desc = RunDescription {
        lines: vec![
            format!("model: {} ({:?})", start.path.display(), model.config),
            format!("data: {}", data.describe()),
            format!(
                "evaluation: K = {pauses}, threshold {}{what}",
                Num(a.threshold)
            ),
        ],
    };
    out(render_at(&desc, &summary, data.as_ref(), a.threshold))?;
    if a.pauses_by_token {
        out(render_by_token(&summary, data.as_ref()))?;
    }
    Ok(())
}

/// The measures of docs/MATH.md ("Measures") over the first `tokens` validation tokens of
/// `shards`, read in order, with a progress bar.
fn stream_eval(
    model: &cyb::Model<f32>,
    shards: &cyb::shard_data::ShardData,
    cfg: &EvalConfig,
    tokens: u64,
) -> Result<cyb::metrics::EvalSummary> {
    let available = shards.tokens().1;
    let bar = indicatif::ProgressBar::new(tokens.min(available));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} tokens [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let batches = shards.validation_stream(cfg.batch, cfg.seq, tokens).map(Ok);
    let (outcomes, _) =
        cyb::train::batches_detail(model, cfg.pauses, cfg.threshold, batches, &mut |n| {
            bar.inc(n as u64)
        })?;
    bar.finish();
    if outcomes.is_empty() {
        return Err(CybError::Data(format!(
            "--tokens {tokens}: no window of {} tokens to evaluate",
            cfg.seq + 1
        )));
    }
    Ok(cyb::metrics::EvalSummary::from_outcomes(
        &outcomes,
        cfg.pauses,
        &cyb::data::DataSource::class_names(shards),
    ))
}

fn run_generate(a: GenerateArgs, given: &Given) -> Result<()> {
    use cyb::decode::{Decoder, Policy};
    require_cpu(a.device)?;
    let sample = a.policy == PolicyName::Sample;
    let greedy = a.policy == PolicyName::Greedy;
    let sample_only = "it is read by --policy sample only";
    given.refuse(&[
        ("temperature", !sample, sample_only.into()),
        ("top_k", !sample, sample_only.into()),
        ("top_p", !sample, sample_only.into()),
        (
            "seed",
            !sample,
            "only --policy sample draws at random".into(),
        ),
        (
            "threshold",
            !greedy,
            "it is read by --policy greedy only".into(),
        ),
    ])?;
    limits::threshold(a.threshold)?;
    if sample {
        // The sampling numbers are checked before the model is read, as the others.
        Policy::Sample {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        }
        .check()?;
    }
    if let Some(n) = a.max_new {
        limits::at_least_one("--max-new", n)?;
    }
    let hf = ImportOptions {
        pauses: a.pauses.unwrap_or(0),
        ..ImportOptions::default()
    };
    let start = start_model(a.load.as_deref(), a.from_hf.as_deref(), &hf)?
        .ok_or_else(|| CybError::Param("give --load FILE or --from-hf DIR".into()))?;
    let (model, meta) = (start.model, start.meta);
    let tokenizer = saved_or_given(start.tokenizer, a.tokenizer.as_deref(), Some(&start.path))?;
    if let Some(t) = &tokenizer {
        if t.vocab() > model.config.vocab {
            return Err(CybError::Data(format!(
                "the tokenizer ({}) has more tokens than the model's vocabulary {}",
                t.describe(),
                model.config.vocab
            )));
        }
    }
    let text_model = tokenizer.is_some() || model.config.vocab == 256;
    let trained_task = meta
        .get(checkpoint::DATA_KEY)
        .and_then(|d| d.strip_prefix("task "))
        .map(str::to_string);
    given.refuse(&[(
        "task",
        text_model,
        "the model reads text (byte-level or with a tokenizer): the prompt is plain text".into(),
    )])?;
    let task = a
        .task
        .clone()
        .or(trained_task.clone())
        .unwrap_or_else(|| "modsum".into());
    let vocab: Box<dyn DataSource> = match &tokenizer {
        Some(t) => Box::new(TokenText::without_text(t.clone())),
        None if model.config.vocab == 256 => Box::new(cyb::data::Bytes),
        None => task_by_name(&task)?,
    };
    if let (Some(trained), false) = (&trained_task, text_model) {
        if vocab.identity() != format!("task {trained}") {
            return Err(CybError::Data(format!(
                "{} was trained on task {trained}, not --task {task}: leave --task out (the \
                 model's own task is the default)",
                start.path.display()
            )));
        }
    }
    if !text_model && vocab.vocab() != model.config.vocab {
        return Err(CybError::Data(format!(
            "the model has vocabulary {} but --task {task} has {}",
            model.config.vocab,
            vocab.vocab()
        )));
    }
    let prompt = vocab.encode(&a.prompt)?;
    if prompt.is_empty() {
        return Err(CybError::Data(format!(
            "--prompt {:?} encodes to no tokens: give at least one",
            a.prompt
        )));
    }
    let policy = match a.policy {
        PolicyName::Greedy => Policy::Greedy {
            threshold: a.threshold,
        },
        PolicyName::Sample => Policy::Sample {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        },
        PolicyName::Forced => Policy::ForcedK,
    };
    let pauses = a.pauses.unwrap_or(model.config.k_max);
    // Every step's p(DK) is evaluated so that each token can show E[pauses]; in
    // private mode that costs the remaining pause steps (shared mode runs them anyway).
    let mut dec = Decoder::new(&model, pauses, policy, a.seed)?.with_full_halting();
    let fit = (model.config.t_max + 1).saturating_sub(prompt.len());
    let out_tokens = dec.generate(&prompt, a.max_new.unwrap_or(fit.clamp(1, 16)))?;
    let emitted: Vec<(usize, usize)> = out_tokens.iter().map(|e| (e.token, e.pauses)).collect();
    let pieces = match &tokenizer {
        Some(t) => {
            let ids: Vec<u32> = emitted.iter().map(|&(t, _)| t as u32).collect();
            generated_text::grouped(&emitted, &t.pieces(&ids)?)
        }
        None => {
            generated_text::pieces(&emitted, model.config.vocab == 256, |t| vocab.token_text(t))
        }
    };
    let n_out = out_tokens.len().max(1) as f64;
    // Means start from +0.0: a sum of no f64 values is -0.0 in Rust.
    let mean = out_tokens.iter().fold(0.0, |acc, e| acc + e.pauses as f64) / n_out;
    let expected = |e: &cyb::decode::Emitted| e.expected_pauses.unwrap_or(f64::NAN);
    let mean_expected = out_tokens.iter().fold(0.0, |acc, e| acc + expected(e)) / n_out;
    let mode = model.config.pause_attention;
    if a.json {
        let tokens: Vec<serde_json::Value> = out_tokens
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.token,
                    "text": vocab.token_text(e.token),
                    "pauses": e.pauses,
                    "readout_step": e.pauses,
                    "expected_pauses": e.expected_pauses,
                    "p_dk": e.p_dk,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "prompt": a.prompt,
            "text": generated_text::plain_text(&pieces),
            "pauses_max": pauses,
            "pause_attention": mode.name(),
            "mean_pauses": mean,
            "mean_expected_pauses": mean_expected,
            "tokens": tokens,
        });
        return out(format!("{doc:#}"));
    }
    let tty = std::io::stdout().is_terminal();
    let mut text = a.prompt.clone();
    if !text_model {
        text.push(' ');
    }
    let marks = if tty { Marks::Tty } else { Marks::Plain };
    text.push_str(&generated_text::render(&pieces, marks));
    out(text)?;
    // Per token: its readout step S and E[pauses] under the model's halting distribution.
    let steps: Vec<String> = out_tokens
        .iter()
        .map(|e| {
            format!(
                "{}:S={},E={:.2}",
                vocab.token_text(e.token).trim(),
                e.pauses,
                Num(expected(e))
            )
        })
        .collect();
    out(format!("readout: {}", steps.join(" ")))?;
    note(format!(
        "{} tokens, {:.2} pauses per token, E[pauses] {:.2} (K = {pauses}, {mode} pauses{}){}",
        out_tokens.len(),
        Num(mean),
        Num(mean_expected),
        match mode {
            cyb::config::PauseAttention::Shared => ": every step computed, S picks the readout",
            cyb::config::PauseAttention::Private => "",
        },
        if tty {
            ""
        } else {
            "; {n} after a token = n pauses"
        }
    ));
    Ok(())
}

fn main() {
    let cmd = cli();
    let matches = cmd
        .clone()
        .try_get_matches()
        .unwrap_or_else(|e| explain(e, &cmd).exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = Given::new(&matches);
    let result = check_environment().and_then(|()| match cli.command {
        Command::Train(a) => run_train(a, &given),
        Command::Eval(a) => run_eval(a, &given),
        Command::Experiment(a) => run_experiment_cmd(a, &given),
        Command::Generate(a) => run_generate(a, &given),
        Command::Import(a) => run_import(a),
        Command::Tokenize(a) => run_tokenize(a),
    });
    if let Err(e) = result {
        note(format!("error: {e}"));
        std::process::exit(1);
    }
}
