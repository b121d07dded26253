#!/usr/bin/env bash
# Writes the table of the kernels' static __shared__ variables that the emulated driver
# reads (runtime.cpp, shared_table()): for each function-local static defined in the
# kernel objects, its address and emu_cur's in the linked library or executable, its
# size (hex) and its demangled name without `(anonymous namespace)::` (the registry
# files wrap the kernels in an unnamed namespace; the PTX's names have none), tab-separated.
#   shared_table.sh LINKED KERNEL_OBJECTS... > LINKED.shared
set -euo pipefail
linked=$1
shift
kernel_statics=$(for o in "$@"; do nm --defined-only "$o"; done | awk '$3 ~ /^_ZZ/ {print $3}' | sort -u)
nm -S --defined-only "$linked" | awk -v names="$kernel_statics" '
  BEGIN { n = split(names, a, "\n"); for (i = 1; i <= n; i++) want[a[i]] = 1 }
  $NF == "emu_cur" { ref = $1 }
  NF == 4 && ($4 in want) { addr[$4] = $1; size[$4] = $2 }
  END {
    if (ref == "") { print "shared_table: no emu_cur symbol" > "/dev/stderr"; exit 1 }
    for (k in addr) printf "%s\t%s\t%s\t%s\n", addr[k], ref, size[k], k
  }' | c++filt | sed 's/(anonymous namespace):://g'
