#!/usr/bin/env bash
# The simulator's all-in CPU per token, two checkouts side by side: bench/sim_publish.py's realistic
# 1,000-session run from each, interleaved pair by pair so the machine's noise hits both alike.
#
#   bench/sim_publish_ab.sh BASE_CHECKOUT [PAIRS]      # e.g. git worktree add /tmp/base HEAD~1
#
# Prints each run's us/token (all-in) and each side's median.  Results: docs/benchmarks.md, "sim_publish".
set -euo pipefail
base=${1:?usage: bench/sim_publish_ab.sh BASE_CHECKOUT [PAIRS]}
pairs=${2:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
base=$(cd "$base" && pwd)
[ -f "$base/bench/sim_publish.py" ] || { echo "$base: no bench/sim_publish.py there; give a checkout's root" >&2; exit 2; }
py="$here/.venv/bin/python"
declare -A runs=([base]="" [this]="")
for i in $(seq 1 "$pairs"); do
  for side in base this; do
    dir=$base; [ "$side" = this ] && dir=$here
    v=$(cd "$dir" && "$py" bench/sim_publish.py --ticks 5 --real-sessions 1000 --no-micro --no-baseline \
        | awk '/^realistic 1000/ {print $9}')
    [ -n "$v" ] || { echo "pair $i $side: no figure (see bench/sim_publish.py's output)" >&2; exit 1; }
    echo "pair $i $side ($dir): $v us/token"
    runs[$side]+="$v "
  done
done
for side in base this; do
  echo "$side median: $(printf '%s\n' ${runs[$side]} | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}') us/token"
done
