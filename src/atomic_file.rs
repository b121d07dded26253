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
///
/// A symbolic link is followed: its target is replaced atomically (the link stays).
/// Anything but a regular file (a directory, a device, a pipe) is refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_writable_file(path)?;
    let resolved = resolve_link(path)?;
    let path = resolved.as_path();
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

fn refuse(path: &Path, kind: std::io::ErrorKind, msg: &str) -> CybError {
    CybError::io(path, std::io::Error::new(kind, msg.to_string()))
}

/// Where a write to `path` lands: `path` itself, or the file a chain of symbolic links
/// ends at (a relative link target is taken from the link's folder).
fn resolve_link(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).map_err(|e| CybError::io(&p, e))?;
                p = match p.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(refuse(
        path,
        std::io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

/// `path` can be written by [`write_atomic`]: it has a file name, its folder exists
/// and takes new files, and it is absent or a regular file (or a link to one). Checked
/// before long work so that a bad `--save` never throws a run away.
pub fn check_writable_file(path: &Path) -> Result<()> {
    use std::io::ErrorKind;
    let target = resolve_link(path)?;
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => {
            return Err(refuse(
                path,
                ErrorKind::InvalidInput,
                "is a directory; give a file name inside it",
            ))
        }
        Ok(m) if !m.is_file() => {
            return Err(refuse(
                path,
                ErrorKind::InvalidInput,
                "is not a regular file (a device, pipe or socket); refusing to replace it",
            ))
        }
        _ => {}
    }
    temp_path(&target)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_writable_dir_exists(&dir).map_err(|e| match e {
        CybError::Io { source, .. } => CybError::io(path, source),
        other => other,
    })
}

/// `dir` is (or can be created as) a folder that takes new files. The folder is
/// created here, so that a later write cannot fail on it.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    if let Ok(m) = std::fs::metadata(dir) {
        if !m.is_dir() {
            return Err(refuse(
                dir,
                std::io::ErrorKind::InvalidInput,
                "exists and is not a directory",
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| CybError::io(dir, e))?;
    check_writable_dir_exists(dir)
}

fn check_writable_dir_exists(dir: &Path) -> Result<()> {
    let m = std::fs::metadata(dir).map_err(|e| {
        let msg = format!("the folder does not exist or cannot be read ({e})");
        refuse(dir, e.kind(), &msg)
    })?;
    if !m.is_dir() {
        return Err(refuse(
            dir,
            std::io::ErrorKind::InvalidInput,
            "is not a directory",
        ));
    }
    // Permissions alone do not tell (root, read-only mounts): try a file.
    let probe = dir.join(format!(".cyb-write-test.{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| {
        let msg = format!("the folder does not take new files ({e})");
        refuse(dir, e.kind(), &msg)
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
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

/// A file written piece by piece and renamed into place only by [`AtomicWriter::commit`]:
/// for outputs too large to hold in memory (token shards). Until the commit the data
/// sits in `.<name>.tmp.<pid>` beside `path`; dropping the writer without committing
/// (an error, a panic) removes it, so `path` is never half-written.
///
/// ```
/// use std::io::Write;
/// let path = std::env::temp_dir().join(format!("cyb_atomic_w_{}.txt", std::process::id()));
/// let mut w = cyb::atomic_file::AtomicWriter::create(&path).unwrap();
/// w.file().write_all(b"hello ").unwrap();
/// w.file().write_all(b"world").unwrap();
/// assert!(!path.exists()); // nothing under the real name yet
/// w.commit().unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
/// std::fs::remove_file(&path).unwrap();
/// ```
pub struct AtomicWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicWriter {
    /// Starts writing `path` (checked as for [`write_atomic`]).
    pub fn create(path: &Path) -> Result<Self> {
        check_writable_file(path)?;
        let path = resolve_link(path)?;
        let tmp = temp_path(&path)?;
        let file = std::fs::File::create(&tmp).map_err(|e| CybError::io(&tmp, e))?;
        Ok(AtomicWriter {
            path,
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The temporary file, buffered (it also seeks, e.g. to fill in a header last).
    pub fn file(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        self.file
            .as_mut()
            .expect("an AtomicWriter holds its file until commit")
    }

    /// The path the data will have after [`AtomicWriter::commit`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the temporary file over `path`.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take();
        let done = (|| {
            let file =
                file.ok_or_else(|| std::io::Error::other("the writer was already committed"))?;
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        done.map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            CybError::io(&self.path, e)
        })
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
