#!/usr/bin/env bash
# The table of a `make chaos` run, from the outcomes file it wrote.
set -euo pipefail
file=${1:-${ARANYA_CACHE:-$HOME/.cache/aranya}/chaos/outcomes.tsv}
printf '| fault | injected | restarted wrongly | lost or corrupted | back to Ready: median | max |\n'
printf '|---|---|---|---|---|---|\n'
while IFS=$'\t' read -r fault injected restarted corrupted times; do
  stats=$(tr ',' '\n' <<< "$times" | { grep -v '^$' || true; } | sort -n | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "- s - s"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%.2f s %.2f s\n", m, v[NR]
    }')
  median=${stats%% s *}
  max=${stats#* s }
  printf '| %s | %s | %s | %s | %s s | %s |\n' "$fault" "$injected" "$restarted" "$corrupted" "$median" "$max"
done < "$file"
