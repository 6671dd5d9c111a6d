#!/usr/bin/env bash
# Stops what 'make up' started.
set -euo pipefail
pidfile=.local/demo.pid
if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "nothing is up"
  rm -f "$pidfile"
  exit 0
fi
pid=$(cat "$pidfile")
kill -TERM "$pid"
for _ in $(seq 1 30); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "stopped"; exit 0; }
  sleep 1
done
kill -KILL "$pid" 2>/dev/null || true
rm -f "$pidfile"
echo "stopped (killed)"
