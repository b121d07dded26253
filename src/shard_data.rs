//! Training data from token shards ([`crate::shards`]): `--data DIR|GLOB`.
//!
//! The shards are memory-mapped, so a corpus larger than RAM trains: the operating
//! system pages in the windows that are read. **Sampling scheme**: every training batch
//! is `batch` windows of `seq + 1` tokens whose start is drawn uniformly by the seeded
//! generator over every window start of every training shard (a window never crosses a
//! shard boundary); a shard is thus drawn in proportion to its length. The position in
//! the data is therefore the generator's state alone, which a resumable run saves.
//! Validation windows come from the validation shards the same way (from the
//! validation generator). The **test part** is the last `min(validation, training / 9)`
//! tokens of the training shards (in file order), which training never reads; test
//! windows are drawn from it the same way. And [`ShardData::validation_stream`] reads the validation
//! shards in order for `cyb eval --tokens N`.

use crate::data::{Batch, Bytes, DataSource, Split};
use crate::error::{CybError, Result};
use crate::shards::{is_validation, list_shards, Shard, ShardMeta};
use rand::{Rng, RngExt};
use std::path::Path;

/// A range `[lo, hi)` of one shard's tokens.
struct Part {
    shard: std::sync::Arc<Shard>,
    lo: usize,
    hi: usize,
}

/// The shard ranges of one split, with the cumulative count of window starts.
struct ShardSet {
    parts: Vec<Part>,
    /// `ends[i]` = window starts in parts `0..=i`.
    ends: Vec<u64>,
}

impl ShardSet {
    fn new(parts: Vec<Part>, seq: usize) -> ShardSet {
        let mut total = 0u64;
        let ends = parts
            .iter()
            .map(|p| {
                total += (p.hi - p.lo).saturating_sub(seq) as u64;
                total
            })
            .collect();
        ShardSet { parts, ends }
    }

    /// Every token of every shard.
    fn whole(shards: Vec<Shard>, seq: usize) -> ShardSet {
        let parts = shards
            .into_iter()
            .map(|s| Part {
                lo: 0,
                hi: s.len(),
                shard: std::sync::Arc::new(s),
            })
            .collect();
        ShardSet::new(parts, seq)
    }

    /// The training shards cut in two: all but their last `held` tokens (in shard
    /// order) train, those `held` tokens test.
    fn cut_off(shards: Vec<Shard>, held: u64, seq: usize) -> (ShardSet, ShardSet) {
        let total: u64 = shards.iter().map(|s| s.len() as u64).sum();
        let cut = total - held.min(total);
        let (mut train, mut test, mut start) = (Vec::new(), Vec::new(), 0u64);
        for s in shards {
            let (len, shard) = (s.len() as u64, std::sync::Arc::new(s));
            // This shard's tokens before the cut train, the others test.
            let mid = cut.saturating_sub(start).min(len) as usize;
            let part = |lo, hi| Part {
                shard: shard.clone(),
                lo,
                hi,
            };
            if mid > 0 {
                train.push(part(0, mid));
            }
            if mid < len as usize {
                test.push(part(mid, len as usize));
            }
            start += len;
        }
        (ShardSet::new(train, seq), ShardSet::new(test, seq))
    }

    fn windows(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    fn tokens(&self) -> u64 {
        self.parts.iter().map(|p| (p.hi - p.lo) as u64).sum()
    }

    fn shard_count(&self) -> usize {
        self.parts.len()
    }

    /// Shard and start of window number `w` (`w < windows()`).
    fn locate(&self, w: u64) -> (&Shard, usize) {
        let i = self.ends.partition_point(|&e| e <= w);
        let before = if i == 0 { 0 } else { self.ends[i - 1] };
        let part = &self.parts[i];
        (&part.shard, part.lo + (w - before) as usize)
    }
}

/// Token shards as a [`DataSource`].
pub struct ShardData {
    name: String,
    meta: ShardMeta,
    train: ShardSet,
    test: ShardSet,
    val: ShardSet,
    seq: usize,
}

impl ShardData {
    /// Opens the shards `spec` names (a folder or a glob) for windows of `seq` tokens.
    /// The vocabulary is `shards.json`'s (written by `cyb tokenize` beside the shards),
    /// else `vocab` (needed for shards made elsewhere, e.g. by llm.c's scripts). Every
    /// shard is checked (header, size, tokens below the vocabulary).
    pub fn open(spec: &str, vocab: Option<usize>, seq: usize) -> Result<ShardData> {
        let files = list_shards(spec)?;
        let dir = files[0].parent().unwrap_or(Path::new("."));
        let meta = match (ShardMeta::read(dir)?, vocab) {
            (Some(m), Some(v)) if m.vocab != v => {
                return Err(CybError::Data(format!(
                    "--vocab {v}, but {} says the shards have vocabulary {}",
                    dir.join(crate::shards::META_FILE).display(),
                    m.vocab
                )))
            }
            (Some(m), _) => m,
            (None, Some(v)) => ShardMeta {
                vocab: v,
                tokenizer: "unknown".into(),
                eot: None,
                train_tokens: 0,
                val_tokens: 0,
            },
            (None, None) => {
                return Err(CybError::Data(format!(
                    "--data {spec}: no {} beside the shards says their vocabulary; \
                     give it with --vocab (e.g. 50257 for GPT-2 tokens)",
                    crate::shards::META_FILE
                )))
            }
        };
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for f in &files {
            let shard = Shard::open(f, meta.vocab)?;
            if is_validation(f) {
                val.push(shard);
            } else {
                train.push(shard);
            }
        }
        let val = ShardSet::whole(val, seq);
        let train_tokens: u64 = train.iter().map(|s| s.len() as u64).sum();
        let (train, test) = ShardSet::cut_off(train, test_tokens(train_tokens, val.tokens()), seq);
        for (set, what) in [(&train, "training"), (&test, "test"), (&val, "validation")] {
            if set.windows() == 0 {
                return Err(CybError::Data(format!(
                    "--data {spec}: the {what} part ({} shard ranges, {} tokens) holds no \
                     window of {} tokens (validation shards have `val` in their name, e.g. \
                     val_000000.bin, and `cyb tokenize --val-tokens N` writes them; the test \
                     part is the last min(validation, training / 9) training tokens)",
                    set.shard_count(),
                    set.tokens(),
                    seq + 1
                )));
            }
        }
        Ok(ShardData {
            name: spec.to_string(),
            meta,
            train,
            test,
            val,
            seq,
        })
    }

    /// Tokens of the training and validation parts.
    pub fn tokens(&self) -> (u64, u64) {
        (self.train.tokens(), self.val.tokens())
    }

    /// Tokens of the test part (taken from the end of the training shards).
    pub fn test_tokens(&self) -> u64 {
        self.test.tokens()
    }

    fn byte_level(&self) -> bool {
        self.meta.tokenizer == "bytes" && self.meta.vocab == 256
    }

    fn class_of(&self, token: u32) -> u16 {
        if self.byte_level() {
            crate::data::byte_class(token as u8)
        } else {
            0
        }
    }

    fn push_window(&self, out: &mut Batch, shard: &Shard, start: usize, seq: usize) {
        out.tokens
            .extend((start..start + seq).map(|i| shard.token(i) as i32));
        for i in start + 1..=start + seq {
            let t = shard.token(i);
            out.targets.push(t as i32);
            out.classes.push(self.class_of(t));
        }
    }

    /// The validation shards read in order, as batches of `batch` windows of `seq`
    /// tokens (stride `seq`, each window's targets the next `seq` tokens), until
    /// `tokens` targets (or the shards) are used up. The last batch may be shorter.
    pub fn validation_stream(
        &self,
        batch: usize,
        seq: usize,
        tokens: u64,
    ) -> impl Iterator<Item = Batch> + '_ {
        let mut windows = self.val.parts.iter().flat_map(move |p| {
            (0..(p.hi - p.lo).saturating_sub(1) / seq.max(1))
                .map(move |w| (&*p.shard, p.lo + w * seq))
        });
        let mut left = tokens;
        std::iter::from_fn(move || {
            let mut out = Batch::with_capacity(batch, seq);
            out.batch = 0;
            while out.batch < batch && left >= seq as u64 {
                let (s, start) = windows.next()?;
                self.push_window(&mut out, s, start, seq);
                out.batch += 1;
                left -= seq as u64;
            }
            (out.batch > 0).then_some(out)
        })
        .fuse()
    }
}

/// Tokens of the test part for `train` training and `val` validation tokens: as many as
/// validation holds, at most a ninth of training (the 80/10/10 of a text).
fn test_tokens(train: u64, val: u64) -> u64 {
    val.min(train / 9)
}

impl DataSource for ShardData {
    fn vocab(&self) -> usize {
        self.meta.vocab
    }
    /// Shards are identified by their vocabulary only: a model is evaluated on other
    /// shards of its corpus (a validation folder of its own, `shards.json` or not), so
    /// neither the folder, the token counts nor the tokenizer's recorded name may differ
    /// from training without a refusal being wrong.
    fn identity(&self) -> String {
        format!("token shards of vocabulary {}", self.meta.vocab)
    }
    fn describe(&self) -> String {
        format!(
            "token shards {} ({} train + {} test + {} validation tokens, {}, V = {})",
            self.name,
            self.train.tokens(),
            self.test.tokens(),
            self.val.tokens(),
            self.meta.tokenizer,
            self.meta.vocab
        )
    }
    fn class_names(&self) -> Vec<String> {
        if self.byte_level() {
            Bytes.class_names()
        } else {
            vec!["token".into()]
        }
    }
    fn token_name(&self, id: usize) -> String {
        if self.byte_level() {
            Bytes.token_name(id)
        } else if id == self.meta.vocab {
            "<PAUSE>".into()
        } else {
            format!("#{id}")
        }
    }
    fn encode(&self, text: &str) -> Result<Vec<usize>> {
        if self.byte_level() {
            Bytes.encode(text)
        } else {
            Err(CybError::Data(format!(
                "prompts for models trained on {} need its tokenizer ({})",
                self.name, self.meta.tokenizer
            )))
        }
    }
    fn token_text(&self, id: usize) -> String {
        if self.byte_level() {
            Bytes.token_text(id)
        } else {
            self.token_name(id)
        }
    }
    fn sample(&self, split: Split, batch: usize, seq: usize, rng: &mut dyn Rng) -> Batch {
        let set = match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
            Split::Validation => &self.val,
        };
        // Opened for `self.seq`: a longer window would run past a shard's end.
        let seq = seq.min(self.seq);
        let mut out = Batch::with_capacity(batch, seq);
        out.seq = seq;
        for _ in 0..batch {
            let (shard, start) = set.locate(rng.random_range(0..set.windows()));
            self.push_window(&mut out, shard, start, seq);
        }
        out
    }
}
