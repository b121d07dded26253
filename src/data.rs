//! Training data: the built-in synthetic tasks and text (bytes, or the tokens of a
//! [`TextTokenizer`]).
//!
//! Every source yields batches of `tokens [B, T]`, `targets [B, T]` (`-1` = ignored)
//! and a *difficulty class* per target, so reports can show where a model pauses.
//!
//! ## The default task: `modsum`
//!
//! A stream of little sums modulo `M` (default 5):
//!
//! ```text
//!   [L3] 4 1 2 = 2 [L1] 3 = 3 [L4] 0 4 4 1 = 4 [L2] ...
//! ```
//!
//! A length marker `[Lk]` (`k` in `1..=S`, default `S = 4`) announces `k` random
//! digits, then `=`, then their sum mod `M`. Next-token targets fall in classes of
//! known difficulty:
//!
//! | class | predicting | needs |
//! |---|---|---|
//! | `marker` | the next `[Lk]` after an answer | nothing can help (uniform over `S`) |
//! | `digit` | a random digit | nothing can help (uniform over `M`) |
//! | `equals` | `=` after the `k`-th digit | counting to the visible `k` |
//! | `sum/k` | the answer after `=` | adding `k` digits: more work for larger `k` |
//!
//! So some targets need more computation than others and the span length that says
//! how much is visible in the input: exactly where pauses can pay off.

use crate::error::{CybError, Result};
use crate::tokenizer::TextTokenizer;
use rand::{Rng, RngExt};
use std::path::Path;

/// One batch: `tokens [B, T]`, `targets [B, T]`, and the difficulty class of every
/// target (an index into [`DataSource::class_names`]; meaningless where target = -1).
#[derive(Clone, Debug)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub tokens: Vec<i32>,
    pub targets: Vec<i32>,
    pub classes: Vec<u16>,
}

impl Batch {
    /// An empty batch with room for `batch` sequences of `seq` tokens.
    pub fn with_capacity(batch: usize, seq: usize) -> Self {
        Batch {
            batch,
            seq,
            tokens: Vec::with_capacity(batch * seq),
            targets: Vec::with_capacity(batch * seq),
            classes: Vec::with_capacity(batch * seq),
        }
    }
}

/// Which split of a source to draw from. The three never overlap: what a model trains
/// on, what a choice is made on (validation: learning curves, the best learning rate of
/// `cyb experiment --lrs`) and what the chosen model is reported on (test).
///
/// | source | train | test | validation |
/// |---|---|---|---|
/// | generated task (`modsum`) | the training generator | [`crate::train::eval_rng`]`(Test, seed)` | [`crate::train::validation_rng`]`(seed)` |
/// | `--text` (bytes or tokens) | first 80% | next 10% | last 10% |
/// | `--data` shards | training shards less the test part | the last `min(validation, training / 9)` training tokens | `val` shards |
///
/// Validation is what it was before the test split existed (the last 10% of a text, the
/// validation shards, the validation generator), so validation numbers did not move;
/// the test part was taken from training data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    /// The split's name, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// Where a sequence of `len` items is cut into its splits: `[0, test)` trains,
/// `[test, validation)` tests and `[validation, len)` validates (80% / 10% / 10%;
/// `validation` = 90%, where the validation part started before there was a test part).
///
/// ```
/// assert_eq!(cyb::data::split_points(1000), (800, 900));
/// ```
pub fn split_points(len: usize) -> (usize, usize) {
    (len * 8 / 10, len * 9 / 10)
}

/// How a text file is cut ([`split_points`]), as a run's settings record it
/// ([`DataSource::split`]). Runs from before the test split trained on the first 90%.
pub const TEXT_SPLIT: &str = "80/10/10: train on the first 80%, test on the next 10%, \
                              validate on the last 10%";

/// A source of batches with a fixed vocabulary.
pub trait DataSource: Send {
    /// Real vocabulary size `V`.
    fn vocab(&self) -> usize;
    /// A short human-readable description (goes into reports).
    fn describe(&self) -> String;
    /// What a model trained on this source learned, as recorded in its checkpoint
    /// (`__metadata__["data"]`, see [`crate::checkpoint::DATA_KEY`]): two sources with
    /// the same identity pose the same task. By default [`DataSource::describe`]; a
    /// source whose description names something incidental (a file's path) says what
    /// matters instead (its size and checksum).
    fn identity(&self) -> String {
        self.describe()
    }
    /// How a fixed corpus is cut into its training, test and validation parts, where
    /// the description does not say it ([`TEXT_SPLIT`] for a text file), so that a
    /// resumed run refuses a snapshot cut otherwise ([`crate::train_state::fingerprint`]).
    /// `None` by default: a generated task has no cut, and shards' descriptions count
    /// each part's tokens.
    fn split(&self) -> Option<&'static str> {
        None
    }
    /// Names of the difficulty classes, indexed by `Batch::classes`.
    fn class_names(&self) -> Vec<String>;
    /// Printable form of a token id.
    fn token_name(&self, id: usize) -> String;
    /// A batch of `batch` sequences of length `seq` from `split`, drawn with `rng` (any
    /// `rand::Rng`, as a trait object so that sources stay usable as `dyn DataSource`).
    fn sample(&self, split: Split, batch: usize, seq: usize, rng: &mut dyn Rng) -> Batch;
    /// Token ids of a prompt: by default whitespace-separated token names.
    fn encode(&self, text: &str) -> Result<Vec<usize>> {
        text.split_whitespace()
            .map(|w| {
                (0..self.vocab())
                    .find(|&id| self.token_name(id) == w)
                    .ok_or_else(|| {
                        CybError::Data(format!("'{w}' is not a token of {}", self.describe()))
                    })
            })
            .collect()
    }
    /// Text of one generated token (a token name followed by a space by default).
    fn token_text(&self, id: usize) -> String {
        format!("{} ", self.token_name(id))
    }
}

/// The byte-level vocabulary (`V = 256`) of text models, without any text attached:
/// what `cyb generate` needs to encode a prompt for a model trained with `--text`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bytes;

impl DataSource for Bytes {
    fn vocab(&self) -> usize {
        256
    }
    fn describe(&self) -> String {
        "bytes (V = 256)".into()
    }
    fn class_names(&self) -> Vec<String> {
        ["letter", "digit", "space", "punctuation", "other"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    fn token_name(&self, id: usize) -> String {
        match id {
            0x20 => "' '".into(),
            0x0A => "'\\n'".into(),
            0x21..=0x7E => format!("'{}'", id as u8 as char),
            256 => "<PAUSE>".into(),
            _ => format!("0x{id:02x}"),
        }
    }
    fn sample(&self, _: Split, batch: usize, seq: usize, _: &mut dyn Rng) -> Batch {
        // No text, no samples: every target ignored.
        Batch {
            batch,
            seq,
            tokens: vec![b' ' as i32; batch * seq],
            targets: vec![-1; batch * seq],
            classes: vec![0; batch * seq],
        }
    }
    fn encode(&self, text: &str) -> Result<Vec<usize>> {
        Ok(text.bytes().map(usize::from).collect())
    }
    fn token_text(&self, id: usize) -> String {
        String::from_utf8_lossy(&[id as u8]).into_owned()
    }
}

/// Names of the built-in tasks, for `--task`.
pub const TASKS: &[&str] = &["modsum"];

/// A built-in task by name; `modsum:M:S` sets the modulus and the longest span.
pub fn task_by_name(name: &str) -> Result<Box<dyn DataSource>> {
    let mut parts = name.split(':');
    match parts.next() {
        Some("modsum") => {
            let mut task = ModSum::default();
            let mut num = |what: &str, default: usize, min: usize| -> Result<usize> {
                match parts.next() {
                    None => Ok(default),
                    Some(x) => x
                        .parse::<usize>()
                        .ok()
                        .filter(|&v| v >= min && v <= 64)
                        .ok_or_else(|| {
                            CybError::Data(format!(
                                "modsum {what} must be an integer in {min}..=64, got '{x}'"
                            ))
                        }),
                }
            };
            task.modulus = num("modulus", task.modulus, 2)?;
            task.max_span = num("max span", task.max_span, 1)?;
            if parts.next().is_some() {
                return Err(CybError::Data(format!(
                    "task '{name}' has more fields than modsum:MODULUS:MAX_SPAN (e.g. \
                     modsum:5:4)"
                )));
            }
            Ok(Box::new(task))
        }
        _ => Err(CybError::Data(format!(
            "unknown task '{name}' (built-in tasks: {}; modsum takes :MODULUS:MAX_SPAN)",
            TASKS.join(", ")
        ))),
    }
}

/// The `modsum` task (see the module docs).
#[derive(Clone, Debug)]
pub struct ModSum {
    /// Modulus `M`; digits are `0..M`.
    pub modulus: usize,
    /// Longest span `S`; spans have `1..=S` digits.
    pub max_span: usize,
}

impl Default for ModSum {
    fn default() -> Self {
        ModSum {
            modulus: 5,
            max_span: 4,
        }
    }
}

impl ModSum {
    fn equals(&self) -> usize {
        self.modulus
    }
    fn marker(&self, span: usize) -> usize {
        self.modulus + span // spans 1..=S map to M+1..=M+S
    }
    const CLASS_MARKER: u16 = 0;
    const CLASS_DIGIT: u16 = 1;
    const CLASS_EQUALS: u16 = 2;
    /// `sum/k` is class `2 + k`.
    fn class_sum(span: usize) -> u16 {
        2 + span as u16
    }

    /// Tokens and the class of predicting each token, for one sequence of `len + 1`
    /// tokens (the extra one is the last target).
    fn sequence(&self, len: usize, rng: &mut dyn Rng) -> (Vec<i32>, Vec<u16>) {
        // Start inside the first problem so that positions are not aligned to problems.
        let start = rng.random_range(0..self.max_span + 3);
        let mut toks = Vec::with_capacity(start + len + self.max_span + 3);
        let mut cls = Vec::with_capacity(toks.capacity());
        while toks.len() < start + len {
            let span = rng.random_range(1..=self.max_span);
            toks.push(self.marker(span) as i32);
            cls.push(Self::CLASS_MARKER);
            let mut sum = 0;
            for _ in 0..span {
                let d = rng.random_range(0..self.modulus);
                sum += d;
                toks.push(d as i32);
                cls.push(Self::CLASS_DIGIT);
            }
            toks.push(self.equals() as i32);
            cls.push(Self::CLASS_EQUALS);
            toks.push((sum % self.modulus) as i32);
            cls.push(Self::class_sum(span));
        }
        toks.drain(..start);
        cls.drain(..start);
        (toks, cls)
    }
}

impl DataSource for ModSum {
    fn identity(&self) -> String {
        format!("task modsum:{}:{}", self.modulus, self.max_span)
    }
    fn vocab(&self) -> usize {
        self.modulus + 1 + self.max_span
    }
    fn describe(&self) -> String {
        format!(
            "modsum: [Lk] d1..dk = (sum mod {}), k in 1..={} (V = {})",
            self.modulus,
            self.max_span,
            self.vocab()
        )
    }
    fn class_names(&self) -> Vec<String> {
        let mut names = vec!["marker".to_string(), "digit".into(), "equals".into()];
        names.extend((1..=self.max_span).map(|k| format!("sum/{k}")));
        names
    }
    fn token_name(&self, id: usize) -> String {
        if id < self.modulus {
            id.to_string()
        } else if id == self.equals() {
            "=".into()
        } else if id < self.vocab() {
            format!("[L{}]", id - self.modulus)
        } else {
            "<PAUSE>".into()
        }
    }
    fn sample(&self, split: Split, batch: usize, seq: usize, rng: &mut dyn Rng) -> Batch {
        // The data is an endless generated stream: the splits differ only by the
        // generator the caller passes (see `train::eval_rng`).
        let _ = split;
        let mut out = Batch::with_capacity(batch, seq);
        for _ in 0..batch {
            let (toks, cls) = self.sequence(seq + 1, rng);
            out.tokens.extend_from_slice(&toks[..seq]);
            // Random digits and markers cannot be predicted by anyone: they are
            // ignored (-1) so the gradient is spent on targets that can be learned.
            out.targets.extend((1..=seq).map(|i| {
                if cls[i] == Self::CLASS_DIGIT || cls[i] == Self::CLASS_MARKER {
                    -1
                } else {
                    toks[i]
                }
            }));
            out.classes.extend_from_slice(&cls[1..=seq]);
        }
        out
    }
}

/// Byte-level text (`V = 256`): the first 80% of the file trains, the next 10% tests,
/// the last 10% validates ([`split_points`]). Classes are byte kinds (letter, digit,
/// space, punctuation, other).
#[derive(Clone, Debug)]
pub struct ByteText {
    name: String,
    bytes: Vec<u8>,
    /// [`split_points`] of the bytes.
    cuts: (usize, usize),
}

impl ByteText {
    /// Read a UTF-8 text file; empty, non-UTF-8 or too-short files are errors.
    pub fn from_file(path: &Path, seq: usize) -> Result<Self> {
        let bytes = crate::input_file::read_bounded(
            path,
            "the text file",
            crate::input_file::MAX_INPUT_BYTES,
        )?;
        if bytes.is_empty() {
            return Err(CybError::Data(format!("{} is empty", path.display())));
        }
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(CybError::Data(format!(
                "{} is not UTF-8 text: {e}",
                path.display()
            )));
        }
        Self::from_bytes(path.display().to_string(), bytes, seq)
    }

    /// Text already in memory.
    pub fn from_bytes(name: String, bytes: Vec<u8>, seq: usize) -> Result<Self> {
        let cuts = split_points(bytes.len());
        let shortest = cuts.0.min(cuts.1 - cuts.0).min(bytes.len() - cuts.1);
        if shortest < seq + 1 {
            return Err(CybError::Data(format!(
                "{name}: {} bytes are too few for context {seq} (each split needs at least {} bytes; the file needs about {})",
                bytes.len(),
                seq + 1,
                10 * (seq + 1)
            )));
        }
        Ok(ByteText { name, bytes, cuts })
    }
}

/// The items `[lo, hi)` of `split` in a sequence of `len` items cut at `cuts`
/// ([`split_points`]).
fn split_range(cuts: (usize, usize), len: usize, split: Split) -> (usize, usize) {
    match split {
        Split::Train => (0, cuts.0),
        Split::Test => cuts,
        Split::Validation => (cuts.1, len),
    }
}

/// `batch` random windows of `seq + 1` items of `items`: tokens, next-token targets and
/// the targets' classes (`id` gives an item's token id and class).
fn windows<T>(
    items: &[T],
    batch: usize,
    seq: usize,
    rng: &mut dyn Rng,
    id: impl Fn(&T) -> (i32, u16),
) -> Batch {
    let mut out = Batch::with_capacity(batch, seq);
    for _ in 0..batch {
        let start = rng.random_range(0..items.len() - seq);
        let w = &items[start..=start + seq];
        out.tokens.extend(w[..seq].iter().map(|x| id(x).0));
        for x in &w[1..] {
            let (t, c) = id(x);
            out.targets.push(t);
            out.classes.push(c);
        }
    }
    out
}

/// The class of a byte: letter, digit, space, punctuation, other.
pub(crate) fn byte_class(b: u8) -> u16 {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => 0,
        b'0'..=b'9' => 1,
        b' ' | b'\n' | b'\t' | b'\r' => 2,
        b if b.is_ascii_punctuation() => 3,
        _ => 4,
    }
}

impl DataSource for ByteText {
    fn split(&self) -> Option<&'static str> {
        Some(TEXT_SPLIT)
    }
    fn identity(&self) -> String {
        format!(
            "byte-level text of {} bytes with CRC-32 {:08x}",
            self.bytes.len(),
            crc32fast::hash(&self.bytes)
        )
    }
    fn vocab(&self) -> usize {
        256
    }
    fn describe(&self) -> String {
        format!(
            "text {} ({} bytes, byte-level, V = 256)",
            self.name,
            self.bytes.len()
        )
    }
    fn class_names(&self) -> Vec<String> {
        Bytes.class_names()
    }
    fn token_name(&self, id: usize) -> String {
        Bytes.token_name(id)
    }
    fn encode(&self, text: &str) -> Result<Vec<usize>> {
        Bytes.encode(text)
    }
    fn token_text(&self, id: usize) -> String {
        Bytes.token_text(id)
    }
    fn sample(&self, split: Split, batch: usize, seq: usize, rng: &mut dyn Rng) -> Batch {
        let (lo, hi) = split_range(self.cuts, self.bytes.len(), split);
        windows(&self.bytes[lo..hi], batch, seq, rng, |&b| {
            (b as i32, byte_class(b))
        })
    }
}

/// Text as the tokens of a [`TextTokenizer`] (a Hugging Face tokenizer.json, or a
/// byte-level BPE trained on the same file for `--bpe`): the first 80% of the text
/// trains, the next 10% tests, the last 10% validates ([`split_points`], moved back to
/// a char boundary), each encoded on its own. Classes: the kind of a
/// token's first visible character (word, number, space, punctuation, other), as for
/// bytes. Without text ([`TokenText::without_text`]) it only names and encodes tokens.
#[derive(Clone, Debug)]
pub struct TokenText {
    name: String,
    tokenizer: TextTokenizer,
    ids: Vec<u32>,
    /// Where the test and the validation tokens start in `ids`.
    cuts: (usize, usize),
    /// The class of every token id (decoding per sampled token would be slow).
    classes: Vec<u16>,
}

/// The training, test and validation parts of `text` ([`split_points`], each cut moved
/// back to a char boundary).
fn split_text(text: &str) -> [&str; 3] {
    let boundary = |mut cut: usize| {
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        cut
    };
    let (test, valid) = split_points(text.len());
    let (test, valid) = (boundary(test), boundary(valid));
    [&text[..test], &text[test..valid], &text[valid..]]
}

fn read_utf8(path: &Path) -> Result<String> {
    let bytes =
        crate::input_file::read_bounded(path, "the text file", crate::input_file::MAX_INPUT_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|e| CybError::Data(format!("{} is not UTF-8 text: {e}", path.display())))
}

impl TokenText {
    /// Read a UTF-8 file and train a `vocab`-token byte-level BPE on its training part.
    pub fn from_file(path: &Path, vocab: usize, seq: usize) -> Result<Self> {
        let text = read_utf8(path)?;
        Self::from_text(path.display().to_string(), &text, vocab, seq)
    }

    /// Text already in memory. The vocabulary is learnt from the training part (the
    /// first 80%, on a char boundary) only, so test and validation text are unseen by
    /// the tokenizer too.
    pub fn from_text(name: String, text: &str, vocab: usize, seq: usize) -> Result<Self> {
        let tokenizer = TextTokenizer::train_bpe(split_text(text)[0], vocab)?;
        Self::with_tokenizer(name, text, tokenizer, seq)
    }

    /// Read a UTF-8 file and encode it with `tokenizer`.
    pub fn from_file_with(path: &Path, tokenizer: TextTokenizer, seq: usize) -> Result<Self> {
        let text = read_utf8(path)?;
        Self::with_tokenizer(path.display().to_string(), &text, tokenizer, seq)
    }

    /// `text` encoded with `tokenizer`: an error if any split encodes to nothing or to
    /// fewer than `seq + 1` tokens.
    pub fn with_tokenizer(
        name: String,
        text: &str,
        tokenizer: TextTokenizer,
        seq: usize,
    ) -> Result<Self> {
        let parts = split_text(text)
            .into_iter()
            .map(|part| tokenizer.encode(part))
            .collect::<Result<Vec<_>>>()?;
        let counts = format!(
            "{} + {} + {} tokens (train + test + validation)",
            parts[0].len(),
            parts[1].len(),
            parts[2].len()
        );
        if parts.iter().any(|p| p.is_empty()) {
            return Err(CybError::Data(format!(
                "{name}: the text encodes to nothing with the tokenizer ({}; {counts} \
                 from {} bytes): empty text, or characters the tokenizer drops",
                tokenizer.describe(),
                text.len()
            )));
        }
        if parts.iter().any(|p| p.len() < seq + 1) {
            return Err(CybError::Data(format!(
                "{name}: {counts} are too few for context {seq} (each split needs at \
                 least {})",
                seq + 1
            )));
        }
        let cuts = (parts[0].len(), parts[0].len() + parts[1].len());
        Ok(Self::build(name, tokenizer, parts.concat(), cuts))
    }

    /// A vocabulary with no text: what `cyb generate` needs to encode a prompt and show
    /// tokens (samples have every target ignored).
    pub fn without_text(tokenizer: TextTokenizer) -> Self {
        Self::build("(no text)".into(), tokenizer, Vec::new(), (0, 0))
    }

    fn build(name: String, tokenizer: TextTokenizer, ids: Vec<u32>, cuts: (usize, usize)) -> Self {
        let classes = (0..tokenizer.vocab() as u32)
            .map(|id| {
                let text = tokenizer.token_text(id);
                match text.bytes().find(|c| !c.is_ascii_whitespace()) {
                    Some(c) => byte_class(c),
                    None => 2,
                }
            })
            .collect();
        TokenText {
            name,
            tokenizer,
            ids,
            cuts,
            classes,
        }
    }

    /// The difficulty class of token `id` (an index into `class_names`).
    pub fn class_of(&self, id: u32) -> u16 {
        self.classes.get(id as usize).copied().unwrap_or(4)
    }

    /// The tokenizer (to save beside a checkpoint).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
}

impl DataSource for TokenText {
    fn split(&self) -> Option<&'static str> {
        Some(TEXT_SPLIT)
    }
    fn vocab(&self) -> usize {
        self.tokenizer.vocab()
    }
    fn describe(&self) -> String {
        format!(
            "text {} ({} tokens, {})",
            self.name,
            self.ids.len(),
            self.tokenizer.describe()
        )
    }
    fn class_names(&self) -> Vec<String> {
        Bytes.class_names()
    }
    fn token_name(&self, id: usize) -> String {
        if id >= self.vocab() {
            return "<PAUSE>".into();
        }
        self.tokenizer.display(id as u32)
    }
    fn encode(&self, text: &str) -> Result<Vec<usize>> {
        Ok(self
            .tokenizer
            .encode(text)?
            .into_iter()
            .map(|i| i as usize)
            .collect())
    }
    fn token_text(&self, id: usize) -> String {
        self.tokenizer.token_text(id as u32)
    }
    fn sample(&self, split: Split, batch: usize, seq: usize, rng: &mut dyn Rng) -> Batch {
        let (lo, hi) = split_range(self.cuts, self.ids.len(), split);
        if hi - lo <= seq {
            // No text (a vocabulary only): every target ignored, as for `Bytes`.
            return Bytes.sample(split, batch, seq, rng);
        }
        windows(&self.ids[lo..hi], batch, seq, rng, |&b| {
            (b as i32, self.class_of(b))
        })
    }
}
