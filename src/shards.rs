//! Token shards in llm.c's `.bin` layout: writing them, and reading them memory-mapped.
//!
//! A shard is a header of 256 little-endian `i32`, then its tokens, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `20240520` |
//! | 4..8 | version: `1` = tokens are `u16`, `2` = tokens are `u32` |
//! | 8..12 | token count `N` (so at most `i32::MAX` tokens per shard) |
//! | 12..1024 | zero |
//! | 1024.. | `N` tokens, 2 (version 1) or 4 (version 2) bytes each |
//!
//! This is the layout of llm.c's `dev/data/*.py` scripts (version 1), so their shards
//! load here and ours load there; version 2 carries vocabularies above 65535.
//!
//! A folder written by `cyb tokenize` also holds [`META_FILE`] (`shards.json`): the
//! vocabulary size and which tokenizer made the shards. Shards whose file name has a
//! part `val` (split at `_`, `.` and `-`: `val_000000.bin`, `fineweb_val_000000.bin`)
//! are the validation split; every other `.bin` file trains.
//!
//! Every shard is checked when it is opened ([`Shard::open`]): the magic, the version,
//! the file size against the count, and every token against the vocabulary; errors name
//! the shard and the byte offset.

use crate::atomic_file::AtomicWriter;
use crate::error::{CybError, Result};
use rayon::prelude::*;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// llm.c's magic number, the first `i32` of every shard.
pub const MAGIC: i32 = 20240520;
/// The header: 256 `i32`.
pub const HEADER_BYTES: usize = 256 * 4;
/// The description of a shard folder written by `cyb tokenize`.
pub const META_FILE: &str = "shards.json";

/// How tokens are stored: the header's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TokenWidth {
    /// Version 1: `u16` tokens (vocabularies up to 65535, llm.c's format).
    U16,
    /// Version 2: `u32` tokens.
    U32,
}

impl TokenWidth {
    /// The header's version number.
    pub fn version(self) -> i32 {
        match self {
            TokenWidth::U16 => 1,
            TokenWidth::U32 => 2,
        }
    }

    /// Bytes per token.
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    /// The width for a vocabulary: version 1 when every id fits `u16` (`vocab <= 65535`),
    /// else version 2; `forced` = the version asked for, refused if it cannot hold `vocab`.
    pub fn for_vocab(vocab: usize, forced: Option<u8>) -> Result<TokenWidth> {
        match forced {
            None if vocab <= 65535 => Ok(TokenWidth::U16),
            None | Some(2) => Ok(TokenWidth::U32),
            Some(1) if vocab <= 65535 => Ok(TokenWidth::U16),
            Some(1) => Err(CybError::Param(format!(
                "shard version 1 stores u16 tokens and holds vocabularies up to 65535; \
                 this tokenizer has {vocab} tokens: use version 2 (u32 tokens)"
            ))),
            Some(v) => Err(CybError::Param(format!(
                "shard version {v}: only 1 (u16 tokens) and 2 (u32 tokens) exist"
            ))),
        }
    }
}

/// The 1024 header bytes of a shard of `count` tokens.
///
/// ```
/// use cyb::shards::{header, TokenWidth};
/// let h = header(TokenWidth::U16, 3).unwrap();
/// // 20240520 = 0x0134D888, little-endian; version 1; 3 tokens.
/// assert_eq!(&h[..12], &[0x88, 0xD8, 0x34, 0x01, 1, 0, 0, 0, 3, 0, 0, 0]);
/// assert!(h[12..].iter().all(|&b| b == 0));
/// ```
pub fn header(width: TokenWidth, count: usize) -> Result<[u8; HEADER_BYTES]> {
    let n = i32::try_from(count).map_err(|_| {
        CybError::Param(format!(
            "a shard holds at most {} tokens (its count is an i32), not {count}",
            i32::MAX
        ))
    })?;
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&width.version().to_le_bytes());
    h[8..12].copy_from_slice(&n.to_le_bytes());
    Ok(h)
}

fn shard_err(path: &Path, msg: impl Into<String>) -> CybError {
    CybError::Data(format!("shard {}: {}", path.display(), msg.into()))
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a header: `(width, count)`, or an error naming `path` and the byte offset.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<(TokenWidth, usize)> {
    if bytes.len() < HEADER_BYTES {
        return Err(shard_err(
            path,
            format!(
                "{} bytes, shorter than the {HEADER_BYTES}-byte header",
                bytes.len()
            ),
        ));
    }
    let magic = le_i32(bytes, 0);
    if magic != MAGIC {
        return Err(shard_err(
            path,
            format!("byte offset 0: magic {magic}, expected {MAGIC} (not an llm.c token shard)"),
        ));
    }
    let width = match le_i32(bytes, 4) {
        1 => TokenWidth::U16,
        2 => TokenWidth::U32,
        v => {
            return Err(shard_err(
                path,
                format!("byte offset 4: version {v}; 1 (u16 tokens) and 2 (u32 tokens) exist"),
            ))
        }
    };
    let count = le_i32(bytes, 8);
    let count = usize::try_from(count).map_err(|_| {
        shard_err(
            path,
            format!("byte offset 8: token count {count} is negative"),
        )
    })?;
    Ok((width, count))
}

/// Writes one shard, streaming: the tokens go to a temporary file as they come, the
/// header (with the final count) is filled in and the file renamed into place by
/// [`ShardWriter::finish`]; a writer dropped before that leaves nothing behind.
pub struct ShardWriter {
    out: AtomicWriter,
    width: TokenWidth,
    count: usize,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// A new shard at `path`.
    pub fn create(path: &Path, width: TokenWidth) -> Result<Self> {
        let mut out = AtomicWriter::create(path)?;
        // The count is not known yet: a zero header now, the real one at `finish`.
        out.file()
            .write_all(&[0u8; HEADER_BYTES])
            .map_err(|e| CybError::io(path, e))?;
        Ok(ShardWriter {
            out,
            width,
            count: 0,
            buf: Vec::new(),
        })
    }

    /// Tokens written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Appends tokens (each must fit the width: the caller checked the vocabulary).
    pub fn write(&mut self, tokens: &[u32]) -> Result<()> {
        self.buf.clear();
        match self.width {
            TokenWidth::U16 => {
                for &t in tokens {
                    let t = u16::try_from(t).map_err(|_| {
                        CybError::Data(format!("token {t} does not fit a version-1 (u16) shard"))
                    })?;
                    self.buf.extend_from_slice(&t.to_le_bytes());
                }
            }
            TokenWidth::U32 => tokens
                .iter()
                .for_each(|t| self.buf.extend_from_slice(&t.to_le_bytes())),
        }
        let path = self.out.path().to_path_buf();
        self.out
            .file()
            .write_all(&self.buf)
            .map_err(|e| CybError::io(path, e))?;
        self.count += tokens.len();
        Ok(())
    }

    /// Writes the header and renames the shard into place; returns its token count.
    pub fn finish(mut self) -> Result<usize> {
        let h = header(self.width, self.count)?;
        let path = self.out.path().to_path_buf();
        let f = self.out.file();
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&h))
            .map_err(|e| CybError::io(&path, e))?;
        self.out.commit()?;
        Ok(self.count)
    }
}

/// Opens `path` read-only and maps it into memory: the one place shard files are opened.
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    // Mapped, not read: any size is fine, but a directory, a device or a FIFO is refused
    // with the message every other input gets.
    crate::input_file::regular_file_size(path, "a token shard", u64::MAX)?;
    let file = std::fs::File::open(path).map_err(|e| CybError::io(path, e))?;
    let meta = file.metadata().map_err(|e| CybError::io(path, e))?;
    if !meta.is_file() {
        return Err(shard_err(path, "not a regular file"));
    }
    // SAFETY: the map is read-only; a shard changed by another process while it is
    // mapped would change the tokens read (never memory safety of this process, whose
    // reads are plain byte loads), and shards are written by rename, not in place.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CybError::io(path, e))
}

/// One shard, memory-mapped and checked.
pub struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    width: TokenWidth,
    count: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("width", &self.width)
            .field("count", &self.count)
            .finish()
    }
}

impl Shard {
    /// Maps `path` and checks its header, its size (exactly header + count tokens) and
    /// that every token is below `vocab` (scanned in parallel).
    pub fn open(path: &Path, vocab: usize) -> Result<Shard> {
        let map = map_file(path)?;
        let (width, count) = parse_header(path, &map)?;
        let want = count
            .checked_mul(width.bytes())
            .and_then(|n| n.checked_add(HEADER_BYTES));
        if want != Some(map.len()) {
            return Err(shard_err(
                path,
                format!(
                    "byte offset 8: the header counts {count} tokens of {} bytes, so the file \
                     should have {} bytes, but it has {} (truncated or not a shard)",
                    width.bytes(),
                    want.map_or("more than usize::MAX".into(), |w| w.to_string()),
                    map.len()
                ),
            ));
        }
        let shard = Shard {
            path: path.to_path_buf(),
            map,
            width,
            count,
        };
        shard.check_range(vocab)?;
        Ok(shard)
    }

    fn check_range(&self, vocab: usize) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let bad = (0..self.count.div_ceil(CHUNK))
            .into_par_iter()
            .find_first(|&c| {
                let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(self.count));
                (lo..hi).any(|i| self.token(i) as usize >= vocab)
            });
        if let Some(c) = bad {
            let i = (c * CHUNK..self.count)
                .find(|&i| self.token(i) as usize >= vocab)
                .unwrap_or(c * CHUNK);
            return Err(shard_err(
                &self.path,
                format!(
                    "byte offset {}: token {} (token index {i}) is outside the vocabulary \
                     of {vocab}",
                    HEADER_BYTES + i * self.width.bytes(),
                    self.token(i)
                ),
            ));
        }
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens in the shard.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No tokens.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The token width (header version).
    pub fn width(&self) -> TokenWidth {
        self.width
    }

    /// Token `i` (`i < len()`).
    pub fn token(&self, i: usize) -> u32 {
        let b = &self.map[HEADER_BYTES..];
        match self.width {
            TokenWidth::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            TokenWidth::U32 => {
                u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            }
        }
    }
}

/// What `cyb tokenize` records about a shard folder ([`META_FILE`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardMeta {
    /// Vocabulary size: every token is below it.
    pub vocab: usize,
    /// `bytes`, or the tokenizer file the shards were made with.
    pub tokenizer: String,
    /// The token put before every input file, if the tokenizer has one.
    pub eot: Option<u32>,
    pub train_tokens: u64,
    pub val_tokens: u64,
}

impl ShardMeta {
    /// Reads `dir/shards.json`, `None` if there is none.
    pub fn read(dir: &Path) -> Result<Option<ShardMeta>> {
        use crate::input_file::{read_bounded, MAX_METADATA_BYTES};
        let path = dir.join(META_FILE);
        if !path.try_exists().map_err(|e| CybError::io(&path, e))? {
            return Ok(None);
        }
        let b = read_bounded(&path, META_FILE, MAX_METADATA_BYTES)?;
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| CybError::Data(format!("{}: {e}", path.display())))
    }

    /// Writes `dir/shards.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| CybError::Data(format!("cannot serialise shard metadata: {e}")))?;
        crate::atomic_file::write_atomic(&dir.join(META_FILE), text.as_bytes())
    }
}

/// Whether a shard's file name marks it as validation data (a part `val`).
pub fn is_validation(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.split(['_', '.', '-']).any(|part| part == "val"))
}

/// The `.bin` files `spec` names: every `*.bin` in a folder, or the files a glob pattern
/// matches; sorted by path. None is an error.
pub fn list_shards(spec: &str) -> Result<Vec<PathBuf>> {
    let dir = Path::new(spec);
    let mut files = Vec::new();
    if dir.is_dir() {
        let entries = std::fs::read_dir(dir).map_err(|e| CybError::io(dir, e))?;
        for e in entries {
            let p = e.map_err(|e| CybError::io(dir, e))?.path();
            if p.extension().is_some_and(|x| x == "bin") {
                files.push(p);
            }
        }
    } else {
        let paths = glob::glob(spec)
            .map_err(|e| CybError::Param(format!("--data {spec}: not a folder or a glob: {e}")))?;
        for p in paths {
            files.push(p.map_err(|e| {
                let path = e.path().to_path_buf();
                CybError::io(path, e.into())
            })?);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CybError::Data(format!(
            "--data {spec}: no token shards (.bin files) there"
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cyb_shards_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A shard written by the writer is the header llm.c documents, byte for byte.
    #[test]
    fn written_shard_matches_hand_made_bytes() {
        let d = tmp("hand");
        for (width, tokens) in [
            (TokenWidth::U16, vec![0u32, 1, 258, 65535]),
            (TokenWidth::U32, vec![7u32, 65536, 0x0102_0304]),
        ] {
            let p = d.join("x.bin");
            let mut w = ShardWriter::create(&p, width).unwrap();
            w.write(&tokens[..1]).unwrap();
            w.write(&tokens[1..]).unwrap();
            assert_eq!(w.finish().unwrap(), tokens.len());
            let mut want = vec![0u8; 1024];
            // 20240520 = 0x0134D888, little-endian.
            want[..4].copy_from_slice(&[0x88, 0xD8, 0x34, 0x01]);
            want[4] = width.version() as u8;
            want[8] = tokens.len() as u8;
            for &t in &tokens {
                match width {
                    TokenWidth::U16 => want.extend_from_slice(&[t as u8, (t >> 8) as u8]),
                    TokenWidth::U32 => want.extend_from_slice(&[
                        t as u8,
                        (t >> 8) as u8,
                        (t >> 16) as u8,
                        (t >> 24) as u8,
                    ]),
                }
            }
            assert_eq!(std::fs::read(&p).unwrap(), want);
            let s = Shard::open(&p, 1 << 30).unwrap();
            let back: Vec<u32> = (0..s.len()).map(|i| s.token(i)).collect();
            assert_eq!(back, tokens);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn version_1_refuses_large_vocabularies() {
        assert_eq!(TokenWidth::for_vocab(50257, None).unwrap(), TokenWidth::U16);
        assert_eq!(TokenWidth::for_vocab(65535, None).unwrap(), TokenWidth::U16);
        assert_eq!(TokenWidth::for_vocab(65536, None).unwrap(), TokenWidth::U32);
        let e = TokenWidth::for_vocab(100_000, Some(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("65535") && e.contains("100000"), "{e}");
        assert!(TokenWidth::for_vocab(10, Some(3)).is_err());
    }

    /// Every broken shard is refused with its name and the byte offset at fault.
    #[test]
    fn broken_shards_name_file_and_offset() {
        let d = tmp("broken");
        let good = {
            let mut b = header(TokenWidth::U16, 3).unwrap().to_vec();
            b.extend_from_slice(&[1, 0, 2, 0, 3, 0]);
            b
        };
        let p = d.join("s.bin");
        std::fs::write(&p, &good).unwrap();
        assert_eq!(Shard::open(&p, 4).unwrap().len(), 3);
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (good[..100].to_vec(), 4, "shorter than"),
            (good[..good.len() - 1].to_vec(), 4, "byte offset 8"),
            (
                {
                    let mut b = good.clone();
                    b[0] = 0;
                    b
                },
                4,
                "byte offset 0",
            ),
            (
                {
                    let mut b = good.clone();
                    b[4] = 7;
                    b
                },
                4,
                "byte offset 4",
            ),
            (
                {
                    let mut b = good.clone();
                    b[11] = 0x80;
                    b
                },
                4,
                "negative",
            ),
            (good.clone(), 3, "byte offset 1028: token 3"),
        ];
        for (bytes, vocab, want) in cases {
            std::fs::write(&p, &bytes).unwrap();
            let e = Shard::open(&p, vocab).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("s.bin"), "{want}: {e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn validation_shards_are_named_val() {
        for (name, val) in [
            ("val_000000.bin", true),
            ("fineweb_val_000000.bin", true),
            ("tiny_shakespeare_val.bin", true),
            ("train_000001.bin", false),
            ("interval_000001.bin", false),
        ] {
            assert_eq!(is_validation(Path::new(name)), val, "{name}");
        }
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let d = tmp("drop");
        let p = d.join("a.bin");
        let mut w = ShardWriter::create(&p, TokenWidth::U16).unwrap();
        w.write(&[1, 2, 3]).unwrap();
        assert!(w.write(&[70000]).is_err());
        drop(w);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
