//! `cyb tokenize`: text files to token shards ([`crate::shards`]), streaming.
//!
//! The files are read in order, each in pieces of about [`PIECE_BYTES`] cut after a
//! newline; a window of pieces is tokenized in parallel (rayon) and written in input
//! order, so the token stream is the same for any number of threads and memory stays at
//! a few windows of text, whatever the size of the corpus. A piece boundary falls only
//! after a `\n`, where the pre-tokenizers of the usual BPE tokenizers (GPT-2, Llama)
//! split anyway.
//!
//! **Validation split**: the first `val_tokens` tokens of the stream (the beginning of
//! the first file) go to `val_000000.bin`, `val_000001.bin`, ...; all the rest to
//! `train_000000.bin`, ... (llm.c's fineweb script likewise makes its first shard the
//! validation shard). Each shard holds at most `shard_tokens` tokens and is written
//! atomically; `shards.json` records the vocabulary and the tokenizer.
//!
//! When the tokenizer has `<|endoftext|>` (GPT-2's document separator), it is put before
//! every file, as llm.c puts it before every document; byte-level shards have none.

use crate::error::{CybError, Result};
use crate::shards::{ShardMeta, ShardWriter, TokenWidth};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Target size of one piece of text tokenized as a unit.
pub const PIECE_BYTES: usize = 1 << 20;

/// Which tokenizer makes the tokens.
#[derive(Clone, Debug)]
pub enum TokenizerSpec {
    /// One token per byte (V = 256).
    Bytes,
    /// A Hugging Face `tokenizer.json`.
    HuggingFace(PathBuf),
}

/// What `cyb tokenize` does.
#[derive(Clone, Debug)]
pub struct TokenizeConfig {
    pub inputs: Vec<PathBuf>,
    pub tokenizer: TokenizerSpec,
    pub out: PathBuf,
    /// Tokens of the validation split (the first ones of the stream).
    pub val_tokens: usize,
    /// Most tokens per shard.
    pub shard_tokens: usize,
    /// Shard version to write (1 = u16, 2 = u32); `None` = 1 when the vocabulary fits.
    pub version: Option<u8>,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct TokenizeSummary {
    pub bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub shards: Vec<PathBuf>,
    pub seconds: f64,
    pub vocab: usize,
}

/// A loaded tokenizer.
enum Encoder {
    Bytes,
    Hf(Box<tokenizers::Tokenizer>),
}

/// Loads a Hugging Face tokenizer: the tokenizer, its vocabulary size (added tokens
/// included) and its `<|endoftext|>` id. All use of the `tokenizers` crate is here and
/// in [`hf_encode`].
fn hf_load(path: &Path) -> Result<(tokenizers::Tokenizer, usize, Option<u32>)> {
    use crate::input_file::{read_bounded, MAX_TOKENIZER_BYTES};
    let bytes = read_bounded(path, "the tokenizer.json", MAX_TOKENIZER_BYTES)?;
    let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
        CybError::Data(format!(
            "{}: not a Hugging Face tokenizer.json: {e}",
            path.display()
        ))
    })?;
    let vocab = tok.get_vocab_size(true);
    let eot = tok.token_to_id("<|endoftext|>");
    Ok((tok, vocab, eot))
}

/// Token ids of `text` (no special tokens added: the separator is ours to place).
fn hf_encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| CybError::Data(format!("tokenizer failed: {e}")))
}

impl Encoder {
    fn encode(&self, piece: &[u8], file: &Path, offset: u64) -> Result<Vec<u32>> {
        match self {
            Encoder::Bytes => Ok(piece.iter().map(|&b| b as u32).collect()),
            Encoder::Hf(tok) => {
                let text = std::str::from_utf8(piece).map_err(|e| {
                    CybError::Data(format!(
                        "{}: not UTF-8 text at byte offset {}",
                        file.display(),
                        offset + e.valid_up_to() as u64
                    ))
                })?;
                hf_encode(tok, text)
            }
        }
    }
}

/// Routes the token stream: the first `val_left` tokens to validation shards, the rest
/// to training shards, a new shard every `shard_tokens`.
struct Sink {
    dir: PathBuf,
    width: TokenWidth,
    shard_tokens: usize,
    val_left: usize,
    current: Option<(bool, ShardWriter)>,
    next_index: [usize; 2],
    counts: [u64; 2],
    shards: Vec<PathBuf>,
}

impl Sink {
    fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            let val = self.val_left > 0;
            if self
                .current
                .as_ref()
                .is_some_and(|(v, w)| *v != val || w.count() >= self.shard_tokens)
            {
                self.close()?;
            }
            let w = match &mut self.current {
                Some((_, w)) => w,
                None => {
                    let i = &mut self.next_index[val as usize];
                    let name = format!("{}_{:06}.bin", if val { "val" } else { "train" }, *i);
                    *i += 1;
                    let path = self.dir.join(name);
                    let w = ShardWriter::create(&path, self.width)?;
                    self.shards.push(path);
                    &mut self.current.insert((val, w)).1
                }
            };
            let mut n = tokens.len().min(self.shard_tokens - w.count());
            if val {
                n = n.min(self.val_left);
                self.val_left -= n;
            }
            w.write(&tokens[..n])?;
            self.counts[val as usize] += n as u64;
            tokens = &tokens[n..];
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((_, w)) = self.current.take() {
            w.finish()?;
        }
        Ok(())
    }
}

/// Reads `file` in pieces cut after a newline (or at `PIECE_BYTES * 2` when a line is
/// longer), `window` pieces at a time: `f(pieces, offset of the first)`.
fn for_each_window(
    file: &Path,
    window: usize,
    mut f: impl FnMut(&[Vec<u8>], u64) -> Result<()>,
) -> Result<()> {
    let mut input = std::fs::File::open(file).map_err(|e| CybError::io(file, e))?;
    let mut carry: Vec<u8> = Vec::new();
    let mut pieces: Vec<Vec<u8>> = Vec::with_capacity(window);
    let (mut offset, mut first_offset) = (0u64, 0u64);
    let mut eof = false;
    while !eof {
        let mut buf = std::mem::take(&mut carry);
        let old = buf.len();
        buf.resize(old + PIECE_BYTES, 0);
        let mut filled = old;
        while filled < buf.len() {
            let n = input
                .read(&mut buf[filled..])
                .map_err(|e| CybError::io(file, e))?;
            if n == 0 {
                eof = true;
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        // Cut after the last newline; the rest starts the next piece.
        let cut = if eof {
            buf.len()
        } else {
            match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if buf.len() >= 2 * PIECE_BYTES => buf.len(),
                None => 0,
            }
        };
        carry = buf.split_off(cut);
        if !buf.is_empty() {
            if pieces.is_empty() {
                first_offset = offset;
            }
            offset += buf.len() as u64;
            pieces.push(buf);
        }
        if pieces.len() == window || (eof && !pieces.is_empty()) {
            f(&pieces, first_offset)?;
            pieces.clear();
        }
    }
    Ok(())
}

/// Tokenizes `cfg.inputs` into shards in `cfg.out` (see the module docs).
pub fn tokenize(cfg: &TokenizeConfig, show_progress: bool) -> Result<TokenizeSummary> {
    if cfg.inputs.is_empty() {
        return Err(CybError::Param(
            "tokenize: give at least one input file".into(),
        ));
    }
    if cfg.shard_tokens == 0 || cfg.shard_tokens > i32::MAX as usize {
        return Err(CybError::Param(format!(
            "--shard-tokens {}: a shard holds 1..={} tokens",
            cfg.shard_tokens,
            i32::MAX
        )));
    }
    let (encoder, vocab, eot, name) = match &cfg.tokenizer {
        TokenizerSpec::Bytes => (Encoder::Bytes, 256, None, "bytes".to_string()),
        TokenizerSpec::HuggingFace(p) => {
            let (tok, vocab, eot) = hf_load(p)?;
            (
                Encoder::Hf(Box::new(tok)),
                vocab,
                eot,
                p.display().to_string(),
            )
        }
    };
    let width = TokenWidth::for_vocab(vocab, cfg.version)?;
    let mut total_bytes = 0u64;
    for p in &cfg.inputs {
        let m = std::fs::metadata(p).map_err(|e| CybError::io(p, e))?;
        if !m.is_file() {
            return Err(CybError::Data(format!(
                "{} is not a regular file",
                p.display()
            )));
        }
        total_bytes += m.len();
    }
    crate::atomic_file::check_writable_dir(&cfg.out)?;
    // Old shards left there would be read as part of this corpus.
    if cfg.out.is_dir() {
        if let Some(old) = std::fs::read_dir(&cfg.out)
            .map_err(|e| CybError::io(&cfg.out, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "bin"))
        {
            return Err(CybError::Data(format!(
                "{} already holds token shards ({}): give an empty or new folder",
                cfg.out.display(),
                old.display()
            )));
        }
    }
    // Made only now that every input and the folder have been checked.
    std::fs::create_dir_all(&cfg.out).map_err(|e| CybError::io(&cfg.out, e))?;
    let bar = if show_progress {
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {bytes}/{total_bytes} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut sink = Sink {
        dir: cfg.out.clone(),
        width,
        shard_tokens: cfg.shard_tokens,
        val_left: cfg.val_tokens,
        current: None,
        next_index: [0, 0],
        counts: [0, 0],
        shards: Vec::new(),
    };
    let start = Instant::now();
    let window = 2 * rayon::current_num_threads().max(1);
    let mut done_bytes = 0u64;
    for file in &cfg.inputs {
        if let Some(e) = eot {
            sink.push(&[e])?;
        }
        for_each_window(file, window, |pieces, offset| {
            let mut offsets = Vec::with_capacity(pieces.len());
            let mut o = offset;
            for p in pieces {
                offsets.push(o);
                o += p.len() as u64;
            }
            let tokens: Vec<Vec<u32>> = pieces
                .par_iter()
                .zip(offsets.par_iter())
                .map(|(p, &o)| encoder.encode(p, file, o))
                .collect::<Result<_>>()?;
            for t in &tokens {
                if let Some(&bad) = t.iter().find(|&&t| t as usize >= vocab) {
                    return Err(CybError::Data(format!(
                        "the tokenizer produced id {bad}, outside its vocabulary of {vocab}"
                    )));
                }
                sink.push(t)?;
            }
            done_bytes += pieces.iter().map(|p| p.len() as u64).sum::<u64>();
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let toks = sink.counts[0] + sink.counts[1];
            bar.set_position(done_bytes);
            bar.set_message(format!(
                "{:.1} MB/s  {:.0} tokens/s  {toks} tokens",
                done_bytes as f64 / secs / 1e6,
                toks as f64 / secs
            ));
            Ok(())
        })?;
    }
    sink.close()?;
    bar.finish();
    let meta = ShardMeta {
        vocab,
        tokenizer: name,
        eot,
        train_tokens: sink.counts[0],
        val_tokens: sink.counts[1],
    };
    meta.write(&cfg.out)?;
    Ok(TokenizeSummary {
        bytes: done_bytes,
        train_tokens: sink.counts[0],
        val_tokens: sink.counts[1],
        shards: sink.shards,
        seconds: start.elapsed().as_secs_f64(),
        vocab,
    })
}
