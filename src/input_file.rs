//! Reading an input file (a text corpus, a checkpoint, a tokenizer, a data shard) with
//! its size known first: `train --text /dev/zero` would otherwise read forever, and a
//! FIFO or a directory would block or fail with a bare OS message. Every file the crate
//! reads goes through [`read_bounded`].

use crate::error::{CybError, Result};
use std::io::{ErrorKind, Read};
use std::path::Path;

/// The largest input file read whole: 4 GiB (the largest corpus or checkpoint a CPU
/// run here can use; larger data belongs in shards).
pub const MAX_INPUT_BYTES: u64 = 4 << 30;

/// The largest `tokenizer.json` read: 256 MiB (the largest published ones, tens of MB
/// for vocabularies of a quarter million tokens, fit several times over).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The largest small JSON description read (`shards.json`, a Hugging Face
/// `config.json`): 16 MiB, thousands of times what they hold.
pub const MAX_METADATA_BYTES: u64 = 16 << 20;

fn refuse(path: &Path, kind: ErrorKind, msg: String) -> CybError {
    CybError::io(path, std::io::Error::new(kind, msg))
}

/// The size of `path` after checking that it is a regular file (a symbolic link to one
/// is followed) of at most `max` bytes; `what` names the file in the error ("--text").
pub fn regular_file_size(path: &Path, what: &str, max: u64) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| CybError::io(path, e))?;
    if meta.is_dir() {
        return Err(refuse(
            path,
            ErrorKind::InvalidInput,
            format!("{what} is a directory; give a file"),
        ));
    }
    if !meta.is_file() {
        return Err(refuse(
            path,
            ErrorKind::InvalidInput,
            format!(
                "{what} is not a regular file (a device, FIFO or socket has no size to check \
                 before reading); copy the data to a file"
            ),
        ));
    }
    if meta.len() > max {
        return Err(refuse(
            path,
            ErrorKind::InvalidInput,
            format!(
                "{what} has {} bytes, more than the {} this reads whole",
                meta.len(),
                crate::limits::human_bytes(max as f64)
            ),
        ));
    }
    Ok(meta.len())
}

/// The bytes of `path`, a regular file of at most `max` bytes ([`regular_file_size`]).
/// The read itself stops after `max` bytes, so a file that grows while it is read is
/// an error, not an unbounded allocation.
///
/// ```
/// use cyb::input_file::{read_bounded, MAX_INPUT_BYTES};
/// let path = std::env::temp_dir().join(format!("cyb_input_{}.txt", std::process::id()));
/// std::fs::write(&path, b"abc").unwrap();
/// assert_eq!(read_bounded(&path, "--text", MAX_INPUT_BYTES).unwrap(), b"abc");
/// assert!(read_bounded(&path, "--text", 2).is_err());
/// assert!(read_bounded(std::path::Path::new("/dev/zero"), "--text", MAX_INPUT_BYTES).is_err());
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn read_bounded(path: &Path, what: &str, max: u64) -> Result<Vec<u8>> {
    let size = regular_file_size(path, what, max)?;
    let file = std::fs::File::open(path).map_err(|e| CybError::io(path, e))?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| CybError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(refuse(
            path,
            ErrorKind::InvalidData,
            format!("{what} grew past {max} bytes while it was read"),
        ));
    }
    Ok(bytes)
}
