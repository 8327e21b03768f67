#!/bin/bash
# Wall time of one batch of 8 jobs (2 prompts × 4 seeds × 60 steps, default exports) per process count:
#   scripts/time_batch.sh 1 2 2 1          # alternate the counts to spread drifting load over both
# n = 1 runs `python -m cfd batch`, n > 1 the same under `torchrun --standalone --nproc_per_node n`
# (gloo on CPU, one GPU per process on CUDA). Extra options: BATCH_ARGS="--steps 300 --backend sd" …
set -u
cd "$(dirname "$0")/.."
dir=${BATCH_DIR:-/tmp/cfd_time_batch}
mkdir -p "$dir"
printf 'a rubber duck\na toy rocket\n' > "$dir/prompts.txt"
export OMP_NUM_THREADS=1
for n in "$@"; do
  rm -rf "$dir/out$n"
  args=("$dir/prompts.txt" --seeds 0-3 --steps 60 ${BATCH_ARGS:-} --out "$dir/out$n")
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  t0=$(date +%s.%N)
  if [ "$n" = 1 ]; then
    .venv/bin/python -m cfd batch "${args[@]}" > "$dir/log$n" 2>&1
  else
    .venv/bin/torchrun --standalone --nproc_per_node "$n" -m cfd batch "${args[@]}" > "$dir/log$n" 2>&1
  fi
  rc=$?
  t1=$(date +%s.%N)
  printf 'processes %s  rc %s  wall %.1f s  load before %s\n' "$n" "$rc" "$(awk "BEGIN{print $t1 - $t0}")" "$load"
done
