#!/usr/bin/env bash
# Where a `make test` run's time went, from what scripts/test.sh kept in
# DIR (default $ARANYA_CACHE/timings): each set-up phase; each test binary's
# wall time and what its tests spent starting the control plane and waiting
# (tests run concurrently, so waits add up to more than the wall time).
set -euo pipefail
dir=${1:-${ARANYA_CACHE:-$HOME/.cache/aranya}/timings}

echo "== phases (s)"
awk -F'\t' '{ printf "%9.1f  %s\n", $2 / 1000, $1; total += $2 }
  END { printf "%9.1f  total\n", total / 1000 }' "$dir/phases.tsv"

echo "== test binaries: wall, control-plane start, waits (s)"
awk -F'\t' '
  FILENAME == ARGV[1] {
    if ($2 == "control plane start") cp[$1] += $3; else waited[$1] += $3
    next
  }
  /^ *Running / {
    # "Running tests/pods.rs (target/debug/deps/pods-0123abcd)"
    n = split($0, f, " ")
    bin = f[n]; gsub(/[()]/, "", bin); sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin)
    name = bin " (" (f[2] == "unittests" ? f[3] : f[2]) ")"
  }
  /^test result:/ {
    n = split($0, f, " ")
    secs = f[n]; sub(/s$/, "", secs)
    if (secs + 0 >= 1) printf "%9.1f %7.1f %9.1f  %s\n", secs, cp[bin], waited[bin], name
  }
' "$dir/harness.tsv" "$dir/test.log" | sort -rn

echo "== the longest waits, summed over tests (s)"
awk -F'\t' '$2 != "control plane start" { t[$1 ": " $2] += $3 }
  END { for (k in t) printf "%9.1f  %s\n", t[k], k }' "$dir/harness.tsv" | sort -rn | head -15
