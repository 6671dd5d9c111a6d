#!/usr/bin/env bash
# `make test`: every set-up step and every test, timed. At the end it prints
# where the time went (scripts/times.sh); the figures stay under
# $ARANYA_CACHE/timings/ for comparing runs.
set -euo pipefail
cd "$(dirname "$0")/.."
make=${MAKE:-make}
dir=${ARANYA_CACHE:?}/timings
mkdir -p "$dir"
export ARANYA_TIMINGS=$dir/harness.tsv
: > "$ARANYA_TIMINGS"
: > "$dir/phases.tsv"

# The report also comes when a step fails: that is when it is wanted most.
trap 'scripts/times.sh "$dir" || true' EXIT

phase() {
  local name=$1 start
  shift
  start=$(date +%s%N)
  "$@"
  printf '%s\t%s\n' "$name" "$(( ($(date +%s%N) - start) / 1000000 ))" >> "$dir/phases.tsv"
}

for step in deps docker cni mosquitto lint build kube pause; do
  phase "$step" "$make" --no-print-directory -s "$step"
done
run_tests() {
  "${CARGO:-cargo}" test --workspace --all-targets 2>&1 | tee "$dir/test.log"
}
phase "cargo test" run_tests
phase "doc tests" "${CARGO:-cargo}" test --workspace --doc
