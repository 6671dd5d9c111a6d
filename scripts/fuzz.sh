#!/usr/bin/env bash
# `make fuzz`: every fuzz target (fuzz/ and crates/spdy/fuzz) to FUZZ_RUNS
# executions (10 M by default), one after another; the corpus grows under
# the cache and is reused by later runs. A crash stops the job: its input is
# under <crate>/fuzz/artifacts/<target>/, to fix and keep as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ARANYA_CACHE:-$HOME/.cache/aranya}
RUNS=${FUZZ_RUNS:-10000000}
export PATH="$CACHE/tools/bin:$PATH"
export CARGO_TARGET_DIR="$CACHE/fuzz-target"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --root "$CACHE/tools"

mkdir -p "$CACHE/fuzz-logs"
summary=()
fuzz() { # <dir holding fuzz/> <target>
  local dir=$1 target=$2 corpus="$CACHE/fuzz-corpus/$2" log="$CACHE/fuzz-logs/$2.log"
  mkdir -p "$corpus"
  echo "fuzz: $target ($RUNS executions; log $log)"
  local start=$SECONDS
  if ! (cd "$dir" && cargo +nightly fuzz run -O "$target" "$corpus" -- \
        -runs="$RUNS" -print_final_stats=1 >"$log" 2>&1); then
    if grep -q 'failed to build fuzz script' "$log"; then
      grep -E '^error' "$log" >&2 || tail -20 "$log" >&2
      echo "fuzz: $target did not build; see $log" >&2
      exit 1
    fi
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" >&2 || tail -20 "$log" >&2
    echo "fuzz: $target crashed; input under $dir/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  local stats
  stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
  summary+=("$(printf '%-16s %s  (%ss)' "$target" "$stats" $((SECONDS - start)))")
}

for target in session_frames envelope stream_messages mqtt_message identity; do
  fuzz . "$target"
done
fuzz crates/spdy frame_decoder

printf '%s\n' "fuzz: every target ran to $RUNS executions without a crash:" "${summary[@]}"
