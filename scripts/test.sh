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

# Lint while compiling: clippy's driver is the workspace's compiler for the
# whole run, with `make lint`'s -D warnings. The dependencies are compiled once
# instead of also checked for clippy, tokio's test features are unified into
# the one build, and the tests reuse what it built. The variables are in the
# workspace crates' fingerprints, so every cargo command below must see them.
export RUSTC_WORKSPACE_WRAPPER=clippy-driver
# CLIPPY_ARGS in the form cargo-clippy passes its arguments to the driver.
export CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
for step in deps docker cni mosquitto fmt build-all kube pause; do
  phase "$step" "$make" --no-print-directory -s "$step"
done
run_tests() {
  "${CARGO:-cargo}" test --workspace --all-targets 2>&1 | tee "$dir/test.log"
}
phase "cargo test" run_tests
phase "doc tests" "${CARGO:-cargo}" test --workspace --doc
