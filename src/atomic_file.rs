//! Writing a file so that readers see either the old file or the whole new one,
//! never a half-written one: write a temporary file beside it, sync, then rename.

use crate::error::{CybError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically; on error the temporary file is removed and
/// `path` is left as it was.
///
/// ```
/// let path = std::env::temp_dir().join(format!("cyb_atomic_{}.txt", std::process::id()));
/// cyb::atomic_file::write_atomic(&path, b"hello").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"hello");
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CybError::io(path, e)
    })
}

/// `.<name>.tmp.<pid>` next to `path`.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        CybError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path (no file name)",
            ),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}
