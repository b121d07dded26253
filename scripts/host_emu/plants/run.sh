#!/usr/bin/env bash
# The plant suite: bugs planted one at a time in the real kernels (each *.patch here, a
# diff against kernels/) must make the emulated GPU tests fail. For each plant: copy the
# kernel sources and the emulator to a scratch folder, apply the patch there (the tree
# itself is never changed), build the emulator of the mode the plant names, and run the
# named test binary (optionally filtered) against it; the plant is CAUGHT when the run
# fails. The test executables embed the unpatched PTX, so a plant may change a kernel's
# body but not its parameters or launch bounds.
#
#   bash scripts/host_emu/plants/run.sh [PATCH...]     (default: every plant)
#
# A patch starts with two comment lines: `# plant: what is broken` and
# `# expect: MODE BINARY [FILTER]` (MODE plain, asan or race).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"
patches=("$@")
[[ ${#patches[@]} == 0 ]] && patches=("$here"/*.patch)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
declare -A exe
while read -r name path; do exe[$name]=$path; done < <(
  bash scripts/host_emu/test_exes.sh $(sed -n 's/^# expect: [a-z]* \([a-z_0-9]*\).*/\1/p' "${patches[@]}" | sort -u))
missed=0
summary=()
for p in "${patches[@]}"; do
  what=$(sed -n 's/^# plant: //p' "$p")
  read -r mode bin filter < <(sed -n 's/^# expect: //p' "$p")
  tree="$scratch/$(basename "$p" .patch)"
  mkdir -p "$tree/scripts" "$tree/target"
  # Times kept (cp -a), and the tree's built kernel objects with them: only the patched
  # file is compiled again.
  cp -a kernels "$tree/"
  cp -a scripts/host_emu scripts/build_emu.sh "$tree/scripts/"
  obj="target/emu/obj"
  [[ "$mode" != plain ]] && obj="target/emu-$mode/obj"
  if [[ -d "$obj" ]]; then mkdir -p "$tree/$(dirname "$obj")" && cp -a "$obj" "$tree/$obj"; fi
  patch -s -p1 -d "$tree" <"$p"
  echo "plants: $(basename "$p"): $what"
  bash "$tree/scripts/build_emu.sh" "$mode" >"$tree/build.log" 2>&1 || { cat "$tree/build.log"; exit 1; }
  lib="$tree/target/emu"
  [[ "$mode" != plain ]] && lib="$tree/target/emu-$mode"
  set +e
  CYB_EMU_LIB=$lib CYB_EMU_MODE=$mode CYB_EMU_RERUN_MAX=3 bash scripts/host_emu/runner.sh "${exe[$bin]}" ${filter:+"$filter"} \
    >"$tree/test.log" 2>&1
  rc=$?
  set -e
  if [[ $rc != 0 ]]; then
    verdict=CAUGHT
    grep -m 2 -E "^cyb emulator: kernel .* failed|^test .* FAILED" "$tree/test.log" | sed 's/^/plants:   /' || true
  else
    verdict=MISSED
    missed=$((missed + 1))
    tail -3 "$tree/test.log" | sed 's/^/plants:   /'
  fi
  summary+=("$(printf '%-7s %-36s %s %s' "$verdict" "$(basename "$p" .patch)" "$mode" "$bin")")
done
printf 'plants: %s\n' "${summary[@]}"
echo "plants: ${#patches[@]} planted, $missed missed"
exit $((missed > 0))
