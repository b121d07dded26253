#!/usr/bin/env bash
# Copies the SPEC v2 test vectors from the shared folder (default ../shared/testdata/v2,
# or the folder given as $1) into the repository's own testdata/v2/, so that the tests
# pass in a clone with nothing beside it. tests/testdata.rs fails while the copy
# differs from ../shared/testdata/v2 (where that exists): run this script, then commit.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-../shared/testdata/v2}"
[[ -d "$SRC" ]] || { echo "no such folder: $SRC" >&2; exit 1; }
rm -rf testdata/v2
mkdir -p testdata/v2
for f in "$SRC"/*; do
  install -m 644 "$f" "testdata/v2/$(basename "$f")"
  echo "  testdata/v2/$(basename "$f")"
done
