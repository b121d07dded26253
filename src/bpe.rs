//! A small byte-level BPE trainer (`cyb experiment --bpe N`), so that token-level
//! findings on real text read as words.
//!
//! Why not the `tokenizers` crate: this file is about 150 lines with no dependency,
//! builds in seconds and is deterministic; `tokenizers` pulls in a regex engine,
//! `rayon`-based trainers and (by default) a C++ suffix-array build, which is a heavy
//! build on the 2-core machines this crate is developed on, for one function.
//!
//! The algorithm is GPT-2's byte-level BPE: the text is split into words (an optional
//! leading space, then a run of letters, of digits, of other visible characters, or
//! of whitespace), every word starts as its bytes (ids `0..256`), and the most frequent
//! adjacent pair (ties: the smallest pair of ids) is merged into a new token until the
//! vocabulary has `N` tokens or no pair occurs twice. Merges never cross words.

use crate::error::{CybError, Result};
use std::collections::HashMap;

/// A trained vocabulary: the bytes of every token and the merges in order.
#[derive(Clone, Debug)]
pub struct Bpe {
    /// Bytes of token `id` (`0..256` are the single bytes).
    pub tokens: Vec<Vec<u8>>,
    /// `(left, right) -> merged id`, with its rank (merge order = id - 256).
    merges: HashMap<(u32, u32), u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Letter,
    Digit,
    Space,
    Other,
}

fn kind(c: char) -> Kind {
    if c.is_alphabetic() || c == '\'' {
        Kind::Letter
    } else if c.is_numeric() {
        Kind::Digit
    } else if c.is_whitespace() {
        Kind::Space
    } else {
        Kind::Other
    }
}

/// Split text into words: an optional single leading space joins the run after it.
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let idx: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < idx.len() {
        let start = idx[i].0;
        let mut j = i;
        // A single space followed by a non-space starts the next word.
        if idx[j].1 == ' ' && j + 1 < idx.len() && kind(idx[j + 1].1) != Kind::Space {
            j += 1;
        }
        let k = kind(idx[j].1);
        j += 1;
        while j < idx.len() && kind(idx[j].1) == k {
            // Whitespace runs leave their last space to the next word.
            if k == Kind::Space
                && idx[j].1 == ' '
                && j + 1 < idx.len()
                && kind(idx[j + 1].1) != Kind::Space
            {
                break;
            }
            j += 1;
        }
        let end = if j < idx.len() { idx[j].0 } else { text.len() };
        out.push(&text[start..end]);
        i = j;
    }
    out
}

impl Bpe {
    /// Train a vocabulary of at most `vocab` tokens (`vocab >= 256`) on `text`.
    pub fn train(text: &str, vocab: usize) -> Result<Bpe> {
        if vocab < 256 {
            return Err(CybError::Param(format!(
                "--bpe {vocab}: a byte-level BPE vocabulary has at least 256 tokens"
            )));
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in words(text) {
            *counts.entry(w).or_default() += 1;
        }
        let mut types: Vec<(&str, usize)> = counts.into_iter().collect();
        types.sort_unstable();
        let mut seqs: Vec<(Vec<u32>, usize)> = types
            .iter()
            .map(|(w, c)| (w.bytes().map(u32::from).collect(), *c))
            .collect();
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut merges = HashMap::new();
        while tokens.len() < vocab {
            let mut pairs: HashMap<(u32, u32), usize> = HashMap::new();
            for (s, c) in &seqs {
                for p in s.windows(2) {
                    *pairs.entry((p[0], p[1])).or_default() += c;
                }
            }
            let best = pairs
                .into_iter()
                .filter(|&(_, c)| c >= 2)
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
            let Some(((l, r), _)) = best else { break };
            let id = tokens.len() as u32;
            let mut bytes = tokens[l as usize].clone();
            bytes.extend_from_slice(&tokens[r as usize]);
            tokens.push(bytes);
            merges.insert((l, r), id);
            for (s, _) in &mut seqs {
                merge_in(s, l, r, id);
            }
        }
        Ok(Bpe { tokens, merges })
    }

    /// Token ids of `text` (the merges applied in training order, word by word).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut cache: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut out = Vec::with_capacity(text.len() / 3);
        for w in words(text) {
            let ids = cache.entry(w).or_insert_with(|| self.encode_word(w));
            out.extend_from_slice(ids);
        }
        out
    }

    fn encode_word(&self, w: &str) -> Vec<u32> {
        let mut s: Vec<u32> = w.bytes().map(u32::from).collect();
        loop {
            // The earliest-learned merge present in the word goes first.
            let best = s
                .windows(2)
                .filter_map(|p| self.merges.get(&(p[0], p[1])).map(|&id| (id, p[0], p[1])))
                .min();
            let Some((id, l, r)) = best else { return s };
            merge_in(&mut s, l, r, id);
        }
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false (the 256 bytes are always there).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn merge_in(s: &mut Vec<u32>, l: u32, r: u32, id: u32) {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && s[i] == l && s[i + 1] == r {
            out.push(id);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    *s = out;
}
