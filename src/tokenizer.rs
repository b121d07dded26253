//! How text becomes token ids: bytes (`V = 256`, id = byte value), or any Hugging Face
//! `tokenizer.json` through the `tokenizers` crate (GPT-2's byte-level BPE, or one
//! trained here with that crate's trainer for `--bpe N`).
//!
//! The crate is built with its pure-Rust feature set (`fancy-regex`, no C or C++
//! libraries, no downloads), so a tokenizer is read from a file or trained in memory.
//!
//! ```
//! use cyb::tokenizer::TextTokenizer;
//! let text = "the cat sat on the mat. the cat ate the rat. ".repeat(20);
//! let bpe = TextTokenizer::train_bpe(&text, 300).unwrap();
//! assert!(bpe.vocab() > 256 && bpe.vocab() <= 300);
//! let ids = bpe.encode("the cat").unwrap();
//! assert_eq!(bpe.decode(&ids).unwrap(), "the cat");
//! assert!(ids.iter().any(|&i| bpe.display(i) == "␣cat"));
//!
//! let bytes = TextTokenizer::Bytes;
//! assert_eq!(bytes.encode("hé").unwrap(), vec![104, 0xc3, 0xa9]);
//! assert_eq!(bytes.vocab(), 256);
//! ```

use crate::error::{CybError, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

/// A text tokenizer: [`TextTokenizer::Bytes`] or a Hugging Face tokenizer.
#[derive(Clone, Debug)]
pub enum TextTokenizer {
    /// One token per byte (`V = 256`): the vocabulary of byte-level text models.
    Bytes,
    /// A Hugging Face tokenizer (boxed: it is large) with its vocabulary size.
    Hf(Box<HfTokenizer>),
}

/// A Hugging Face tokenizer with the facts the model needs precomputed.
#[derive(Clone, Debug)]
pub struct HfTokenizer {
    inner: Tokenizer,
    /// One more than the largest id of the vocabulary and the added tokens.
    vocab: usize,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> CybError {
    CybError::Data(format!("{what}: {e}"))
}

impl TextTokenizer {
    /// Reads a Hugging Face `tokenizer.json` (a regular file of at most
    /// [`crate::input_file::MAX_TOKENIZER_BYTES`]); a file that does not parse as one is
    /// an error naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        use crate::input_file::{read_bounded, MAX_TOKENIZER_BYTES};
        let bytes = read_bounded(path, "the tokenizer.json", MAX_TOKENIZER_BYTES)?;
        Self::from_json_bytes(&bytes).map_err(|e| {
            CybError::Data(format!(
                "{} is not a usable Hugging Face tokenizer.json ({e})",
                path.display()
            ))
        })
    }

    /// Parses the bytes of a `tokenizer.json` (the error says why it is not one).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| tok_err("not a tokenizer.json", e))?;
        Self::from_hf(inner)
    }

    fn from_hf(inner: Tokenizer) -> Result<Self> {
        // Ids may have holes; the model needs room for the largest one.
        let vocab = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        if vocab == 0 {
            return Err(CybError::Data(
                "the tokenizer has an empty vocabulary".into(),
            ));
        }
        Ok(TextTokenizer::Hf(Box::new(HfTokenizer { inner, vocab })))
    }

    /// Trains a byte-level BPE of at most `vocab` tokens (`vocab >= 256`: the 256 byte
    /// symbols come first) on `text` with the `tokenizers` crate's trainer, set up as
    /// GPT-2's: ByteLevel pre-tokenizer (GPT-2's split regex, no added prefix space) and
    /// decoder, merges of pairs seen at least twice. Deterministic: ties between equally
    /// frequent pairs go to the smallest pair of ids.
    pub fn train_bpe(text: &str, vocab: usize) -> Result<Self> {
        if !(256..=1 << 20).contains(&vocab) {
            return Err(CybError::Param(format!(
                "--bpe {vocab}: a byte-level BPE vocabulary has at least 256 tokens (the \
                 bytes) and at most 2^20"
            )));
        }
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // The whole text is one sequence, so that pre-tokenization sees it as encoding
        // will (a split into lines would cut runs of newlines apart).
        tok.train(&mut trainer, std::iter::once(text))
            .map_err(|e| tok_err("BPE training failed", e))?;
        Self::from_hf(tok)
    }

    /// Vocabulary size `V` (token ids are `0..V`; the model's PAUSE/DK token is `V`).
    pub fn vocab(&self) -> usize {
        match self {
            TextTokenizer::Bytes => 256,
            TextTokenizer::Hf(t) => t.vocab,
        }
    }

    /// True for the byte tokenizer.
    pub fn is_bytes(&self) -> bool {
        matches!(self, TextTokenizer::Bytes)
    }

    /// Token ids of `text` (no special tokens added). An empty text gives no ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextTokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            TextTokenizer::Hf(t) => Ok(t
                .inner
                .encode(text, false)
                .map_err(|e| tok_err("the tokenizer cannot encode the text", e))?
                .get_ids()
                .to_vec()),
        }
    }

    /// The text of `ids` (bytes that are not UTF-8 become U+FFFD); an id outside the
    /// vocabulary is an error rather than silently dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab()) {
            return Err(CybError::VocabRange {
                id: bad.into(),
                index: ids.iter().position(|&i| i == bad).unwrap_or(0),
                vocab: self.vocab(),
            });
        }
        match self {
            TextTokenizer::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            TextTokenizer::Hf(t) => t
                .inner
                .decode(ids, false)
                .map_err(|e| tok_err("the tokenizer cannot decode", e)),
        }
    }

    /// The text of one token on its own (`""` for an id outside the vocabulary; part of a
    /// UTF-8 character shows as U+FFFD).
    pub fn token_text(&self, id: u32) -> String {
        self.decode(&[id]).unwrap_or_default()
    }

    /// A token as reports show it: its text with a space as `␣`, a newline as `⏎` and a
    /// tab as `⇥`, so that `" the"` reads `␣the`.
    pub fn display(&self, id: u32) -> String {
        visible_whitespace(&self.token_text(id))
    }

    /// Splits generated `ids` into printable pieces: `(text, number of tokens)`, in order,
    /// whose texts concatenate to the decoded text. A token that ends inside a UTF-8
    /// character (byte-level vocabularies) joins the piece of the token that completes
    /// it, so no piece shows U+FFFD for a character that the whole text has.
    pub fn pieces(&self, ids: &[u32]) -> Result<Vec<(String, usize)>> {
        let TextTokenizer::Hf(t) = self else {
            let tokens: Vec<(usize, usize)> = ids.iter().map(|&i| (i as usize, 0)).collect();
            let pieces = crate::generated_text::pieces(&tokens, true, |_| String::new());
            return Ok(pieces
                .into_iter()
                .map(|p| (p.text, p.pauses.len()))
                .collect());
        };
        self.decode(ids)?; // range check
        let mut stream = t.inner.decode_stream(false);
        let mut out = Vec::new();
        let mut pending = 0;
        for &id in ids {
            pending += 1;
            match stream.step(id) {
                Ok(Some(text)) => {
                    out.push((text, pending));
                    pending = 0;
                }
                Ok(None) => {}
                // A decoder whose prefix changes with what follows: token by token.
                Err(_) => return Ok(ids.iter().map(|&i| (self.token_text(i), 1)).collect()),
            }
        }
        if pending > 0 {
            // Trailing bytes of an unfinished character.
            let start = ids.len() - pending;
            out.push((self.decode(&ids[start..])?, pending));
        }
        Ok(out)
    }

    /// The `tokenizer.json` text of a Hugging Face tokenizer (`None` for bytes, which
    /// need no file).
    pub fn to_json(&self) -> Result<Option<String>> {
        match self {
            TextTokenizer::Bytes => Ok(None),
            TextTokenizer::Hf(t) => t
                .inner
                .to_string(true)
                .map(Some)
                .map_err(|e| tok_err("cannot serialise the tokenizer", e)),
        }
    }

    /// Writes the `tokenizer.json` atomically (an error for [`TextTokenizer::Bytes`],
    /// which has no file form).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?.ok_or_else(|| {
            CybError::Param("the byte tokenizer (V = 256) has no tokenizer.json".into())
        })?;
        crate::atomic_file::write_atomic(path, json.as_bytes())
    }

    /// One line for reports: the kind of tokenizer and its size.
    pub fn describe(&self) -> String {
        match self {
            TextTokenizer::Bytes => "byte-level, V = 256".into(),
            TextTokenizer::Hf(t) => {
                let model = match t.inner.get_model() {
                    ModelWrapper::BPE(_) => "BPE",
                    ModelWrapper::WordPiece(_) => "WordPiece",
                    ModelWrapper::WordLevel(_) => "WordLevel",
                    ModelWrapper::Unigram(_) => "Unigram",
                };
                format!("Hugging Face {model} tokenizer, V = {}", t.vocab)
            }
        }
    }
}

/// `s` with space, newline and tab shown as `␣`, `⏎`, `⇥`.
pub fn visible_whitespace(s: &str) -> String {
    s.replace(' ', "␣").replace('\n', "⏎").replace('\t', "⇥")
}

/// Two tokenizers that encode and decode alike (same serialised form).
pub fn same_tokenizer(a: &TextTokenizer, b: &TextTokenizer) -> Result<bool> {
    Ok(a.to_json()? == b.to_json()?)
}
