#!/bin/bash
# The CUDA checks, as one script for a lent GPU machine (results as JSON under $OUT):
#   bash scripts/gpu_check.sh [tests speed noise batch render]   # all by default; OUT=/tmp/gpu_check
# Carried wheels in .whl/ (diffusers, gsplat, plyfile, importlib_metadata, trimesh) are installed
# first when present; .whl/py/ may hold pure-Python packages (imageio_ffmpeg without its binary:
# it then uses the machine's ffmpeg, if any). Each step has its own time limit and runs even
# if an earlier one failed; the exit status counts the failed steps.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/py
fi
command -v ffmpeg >/dev/null && export IMAGEIO_FFMPEG_EXE=$(command -v ffmpeg)
failed=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  printf '== %-10s rc %3s  %6.1f s\n' "$name" "$rc" "$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
  tail -n 6 "$OUT/$name.log"
  [ "$rc" = 0 ] || failed=$((failed + 1))
}
want() { [ -z "$CHECKS" ] || [[ " $CHECKS " == *" $1 "* ]]; }
CHECKS=${*:-}
nvidia-smi -L; echo "ffmpeg: ${IMAGEIO_FFMPEG_EXE:-none}"
step versions 60 $PY -c "import torch, diffusers, gsplat; print(torch.__version__, torch.cuda.get_device_name(), diffusers.__version__, gsplat.__version__)"
step gsplat_jit 240 $PY -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA build failed'; print('built')"
want tests && step tests 180 $PY -m pytest -q -p no:cacheprovider tests/test_render.py tests/test_noise.py tests/test_distill.py -k "cuda or gsplat"
# the SD step with densification; SDS beside it: the difference is what the consistent noise costs
for method in cfd sds; do
  want speed && step "speed_$method" 240 $PY -m cfd.bench speed --backend sd-random --method $method --res 512 \
    --steps 300 --warmup 10 --densify --json "$OUT/speed_sd_$method.json"
done
want noise && step noise 240 $PY -m cfd.bench noise --json "$OUT/noise.json"
if want batch; then
  if [ -n "${IMAGEIO_FFMPEG_EXE:-}" ]; then
    printf 'a rubber duck\na toy rocket\n' > "$OUT/prompts.txt"
    step batch 240 $PY -m cfd batch "$OUT/prompts.txt" --seeds 0-3 --out /tmp/gpu_batch
    cp /tmp/gpu_batch/index.json "$OUT/batch_index.json" 2>/dev/null
  else
    echo "== batch      skipped: no ffmpeg for the videos"
  fi
fi
want render && step render 180 $PY -m cfd.bench render --json "$OUT/render.json"
echo "failed steps: $failed"
exit "$failed"
