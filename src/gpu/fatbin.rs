//! Reading the fatbins that `build.rs` embeds ([`super::images`]): which machine code
//! (SASS) and which PTX each holds, and the PTX text itself.
//!
//! The driver loads a fatbin as it is (`cuModuleLoadData`) and picks the SASS of the
//! card's architecture, JIT-compiling the PTX only when there is none; this module
//! lets tests and diagnostics see what is inside without a GPU: the kernel-signature
//! unit tests read the parameters from the PTX, and `tests/gpu_module_load.rs` says
//! whether the open device has SASS (no JIT) or needs the PTX.
//!
//! The container (the layout nvcc 12 and 13 write, as `cuobjdump` reads it): a 16-byte
//! header (`u32` magic `0xBA55ED50`, `u16` version, `u16` header size, `u64` size of
//! the entries), then entries, each a header (`u16` kind: 1 PTX, 2 ELF/SASS; `u16`
//! version; `u32` header size; `u64` payload size; `u32` compressed size at byte 16;
//! `u32` architecture at byte 28, e.g. 90; `u64` flags at byte 40) and its payload.
//! A compressed entry (nvcc's default for PTX; build.rs passes `--compress-mode=none`)
//! is reported as such and its text is not offered.

use crate::error::{CybError, Result};

/// The magic number that starts a fatbin container.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// Entry flags that mark a compressed payload (LZ4 in nvcc 12, zstd in nvcc 13).
const COMPRESSED_FLAGS: u64 = 0x2000 | 0x8000;

/// What an entry of a fatbin holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// PTX text (virtual architecture `compute_NN`), JIT-compiled by the driver.
    Ptx,
    /// An ELF cubin: machine code (SASS) for one real architecture `sm_NN`.
    Sass,
}

/// One entry of a fatbin.
#[derive(Clone, Copy, Debug)]
pub struct FatbinEntry<'a> {
    /// PTX or SASS.
    pub kind: EntryKind,
    /// The architecture as a number, `90` for `sm_90` / `compute_90`.
    pub arch: u32,
    /// Whether the payload is compressed (then it is not PTX text or an ELF as is).
    pub compressed: bool,
    /// The payload (padded; PTX text ends at its first NUL byte).
    pub payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn bad(what: &str) -> CybError {
    CybError::Cuda(format!("not a readable fatbin: {what}"))
}

/// Every entry of every container in `image`, in order. Fails (never panics) on
/// anything that is not a well-formed fatbin.
///
/// ```
/// use cyb::gpu::fatbin::entries;
/// assert!(entries(b".version 8.0\n").is_err()); // PTX text, not a fatbin
/// ```
pub fn entries(image: &[u8]) -> Result<Vec<FatbinEntry<'_>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < image.len() {
        let magic = u32_at(image, at).ok_or_else(|| bad("truncated container header"))?;
        if magic != FATBIN_MAGIC {
            if at > 0 && image[at..].iter().all(|&b| b == 0) {
                break; // trailing padding after the last container
            }
            return Err(bad(&format!("magic {magic:#x} at byte {at}")));
        }
        let hsize = u16_at(image, at + 6).ok_or_else(|| bad("truncated header"))? as usize;
        let size = u64_at(image, at + 8).ok_or_else(|| bad("truncated header"))?;
        let start = at
            .checked_add(hsize)
            .ok_or_else(|| bad("header size overflows"))?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= image.len())
            .ok_or_else(|| bad("container larger than the image"))?;
        let mut p = start;
        while p < end {
            let kind = u16_at(image, p).ok_or_else(|| bad("truncated entry"))?;
            let ehs = u32_at(image, p + 4).ok_or_else(|| bad("truncated entry"))? as usize;
            let psize = u64_at(image, p + 8).ok_or_else(|| bad("truncated entry"))?;
            if ehs < 48 {
                return Err(bad(&format!("entry header of {ehs} bytes at byte {p}")));
            }
            let header = image
                .get(p..p + ehs)
                .ok_or_else(|| bad("truncated entry header"))?;
            let pstart = p + ehs;
            let pend = usize::try_from(psize)
                .ok()
                .and_then(|s| pstart.checked_add(s))
                .filter(|&e| e <= end)
                .ok_or_else(|| bad("entry larger than its container"))?;
            let kind = match kind {
                1 => EntryKind::Ptx,
                2 => EntryKind::Sass,
                k => return Err(bad(&format!("entry kind {k} at byte {p}"))),
            };
            let compressed_size = u32_at(header, 16).unwrap_or(0);
            let flags = u64_at(header, 40).unwrap_or(0);
            out.push(FatbinEntry {
                kind,
                arch: u32_at(header, 28).unwrap_or(0),
                compressed: compressed_size != 0 || flags & COMPRESSED_FLAGS != 0,
                payload: &image[pstart..pend],
            });
            p = pend;
        }
        at = end;
    }
    if out.is_empty() {
        return Err(bad("no entries"));
    }
    Ok(out)
}

/// The PTX text of the first uncompressed PTX entry of `image`. Fails when the fatbin
/// holds no PTX (e.g. `CYB_CUDA_ARCH` named only `sm_NN` targets) or only compressed
/// PTX.
pub fn ptx(image: &[u8]) -> Result<&str> {
    let all = entries(image)?;
    let e = all
        .iter()
        .find(|e| e.kind == EntryKind::Ptx && !e.compressed)
        .ok_or_else(|| {
            if all.iter().any(|e| e.kind == EntryKind::Ptx) {
                bad("its PTX is compressed (build with nvcc --compress-mode=none)")
            } else {
                bad("it holds no PTX (CYB_CUDA_ARCH without a compute_NN entry)")
            }
        })?;
    let text = e.payload.split(|&b| b == 0).next().unwrap_or(&[]);
    std::str::from_utf8(text).map_err(|_| bad("PTX that is not UTF-8"))
}

/// The architectures (`90` for `sm_90`) that `image` carries SASS for.
pub fn sass_archs(image: &[u8]) -> Result<Vec<u32>> {
    Ok(entries(image)?
        .iter()
        .filter(|e| e.kind == EntryKind::Sass)
        .map(|e| e.arch)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::images;

    /// The build's default targets (`sm_90,compute_80`) are what every image holds,
    /// uncompressed PTX included; skipped when `CYB_CUDA_ARCH` chose others.
    #[test]
    fn images_hold_sm90_sass_and_compute80_ptx() {
        if option_env!("CYB_CUDA_ARCH").is_some() {
            eprintln!("CYB_CUDA_ARCH is set: the default targets are not checked");
            return;
        }
        assert!(!images::ALL.is_empty());
        for (file, image) in images::ALL {
            let e = entries(image).unwrap_or_else(|err| panic!("{file}: {err}"));
            assert_eq!(sass_archs(image).unwrap(), vec![90], "{file}: SASS");
            let ptx_archs: Vec<(u32, bool)> = e
                .iter()
                .filter(|e| e.kind == EntryKind::Ptx)
                .map(|e| (e.arch, e.compressed))
                .collect();
            assert_eq!(
                ptx_archs,
                vec![(80, false)],
                "{file}: PTX (arch, compressed)"
            );
            let text = ptx(image).unwrap();
            assert!(text.contains(".target sm_80"), "{file}: PTX target");
            assert!(text.contains(".entry "), "{file}: PTX has kernels");
            let elf = e.iter().find(|e| e.kind == EntryKind::Sass).unwrap();
            assert_eq!(&elf.payload[..4], b"\x7fELF", "{file}: SASS is an ELF");
        }
    }

    #[test]
    fn malformed_images_are_errors_not_panics() {
        let good = images::CYB_LOSS;
        assert!(entries(&[]).is_err());
        assert!(entries(b"\x50\xed\x55\xba").is_err());
        assert!(entries(&good[..40]).is_err());
        assert!(entries(&good[..good.len() / 2]).is_err());
        let mut wrong_kind = good.to_vec();
        wrong_kind[16] = 7;
        assert!(entries(&wrong_kind).is_err());
        let mut huge = good.to_vec();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(entries(&huge).is_err());
        // A compressed PTX entry is seen, but its text is not offered.
        let mut compressed = good.to_vec();
        let ptx_at = {
            let e = entries(good).unwrap();
            let p = e.iter().find(|e| e.kind == EntryKind::Ptx).unwrap();
            p.payload.as_ptr() as usize - good.as_ptr() as usize
        };
        // The PTX entry's header is the 80 bytes before its payload; set its flag.
        assert_eq!(u16_at(good, ptx_at - 80), Some(1), "PTX entry header");
        let flags_at = ptx_at - 80 + 40;
        compressed[flags_at + 1] |= 0x80;
        match ptx(&compressed) {
            Err(CybError::Cuda(m)) => assert!(m.contains("compressed"), "{m}"),
            other => panic!("compressed PTX: {other:?}"),
        }
    }
}
