#!/usr/bin/env bash
# `make chaos`: the fault-injection tests (crates/e2e/tests/faults.rs, the
# dockerd restart and offline reboot of tests/sandbox.rs, and the MQTT broker
# restarts of tests/streaming.rs) run ARANYA_CHAOS_ROUNDS times each
# (default 5) instead of once, then a table of what each recorded: how many
# times the fault was injected, pods restarted that should not have been,
# data lost or corrupted, and the time back to Ready (median and max).
set -euo pipefail
cd "$(dirname "$0")/.."
export ARANYA_CHAOS_ROUNDS=${ARANYA_CHAOS_ROUNDS:-5}
dir=${ARANYA_CACHE:?}/chaos
mkdir -p "$dir"
export ARANYA_CHAOS=$dir/outcomes.tsv
: > "$ARANYA_CHAOS"
trap 'scripts/chaos-table.sh "$ARANYA_CHAOS" || true' EXIT
"${CARGO:-cargo}" test -p e2e --test faults --test sandbox -- --test-threads 1
"${CARGO:-cargo}" test -p e2e --test streaming mqtt_broker_restarted
