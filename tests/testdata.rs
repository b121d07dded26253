//! The repository's copy of the SPEC v2 test vectors (`testdata/v2`) is the one in
//! `../shared/testdata/v2` where that folder exists (a standalone clone has only the
//! copy). Refresh it with `scripts/sync_testdata.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn repo_copy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/v2")
}

#[test]
fn the_repository_has_the_v2_vectors() {
    let have = names(&repo_copy());
    for f in [
        "README.md",
        "vectors.json",
        "tiny_model.safetensors",
        "tiny_model_private.safetensors",
    ] {
        assert!(have.contains(f), "testdata/v2/{f} is missing");
    }
}

#[test]
fn the_copy_matches_shared_testdata() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/v2");
    if !shared.is_dir() {
        eprintln!("no {}: nothing to compare with", shared.display());
        return;
    }
    let (want, have) = (names(&shared), names(&repo_copy()));
    assert_eq!(
        have, want,
        "testdata/v2 and ../shared/testdata/v2 list different files: run scripts/sync_testdata.sh"
    );
    for f in &want {
        let (a, b) = (
            std::fs::read(shared.join(f)).unwrap(),
            std::fs::read(repo_copy().join(f)).unwrap(),
        );
        assert!(
            a == b,
            "testdata/v2/{f} differs from ../shared/testdata/v2/{f}: run scripts/sync_testdata.sh"
        );
    }
}
