#!/bin/bash
# The README's "tiny-sd" recipe table: `python -m cfd.bench recipe` over the SD recipe's
# choices on the bundled tiny-sd, each against the bundled ground truth.
#   scripts/tiny_sd_recipes.sh OUT_DIR [GROUP ...]   # groups: methods, cfg, knots, camera, views, lr, space, densify
# Two groups at a time fit a 2-core CPU (each run is single-threaded). JSON per recipe in OUT_DIR,
# the table rows on stderr (and in OUT_DIR/<recipe>.log).
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/tiny_sd_recipes.sh OUT_DIR [GROUP ...]}
shift
mkdir -p "$out"
export OMP_NUM_THREADS=1
SEEDS=${SEEDS:-0-1}
one_seed=${ONE_SEED:-0}

recipe() {  # name, then bench recipe options
  local name=$1
  shift
  .venv/bin/python -m cfd.bench recipe --label "$name" --json "$out/$name.json" "$@" > /dev/null 2> "$out/$name.log"
  grep '^| ' "$out/$name.log" >&2
}

for group in "${@:-methods}"; do
  case $group in
    methods) recipe defaults --methods cfd,sds,iid,fixed2d,cfd-sde --seeds "$SEEDS" ;;
    cfg)     for s in 3 30 71; do recipe "cfg-$s" --seeds "$one_seed" --set guidance_scale=$s; done ;;
    knots)   recipe "authors-t-knots" --seeds "$one_seed" --set t_end=212 ;;
    camera)  recipe "no-camera-input" --seeds "$one_seed" --camera-input off
             recipe "no-view-suffix" --seeds "$one_seed" --view-suffix off
             recipe "neither" --seeds "$one_seed" --camera-input off --view-suffix off ;;
    views)   recipe "1-view" --seeds "$one_seed" --set views=1 --set steps=1200 ;;
    lr)      for s in 0.5 2; do recipe "lr-x$s" --seeds "$one_seed" --set lr_scale=$s; done
             recipe "sh-lr-x0.2" --seeds "$one_seed" --config lr_sh=0.009 ;;
    space)   recipe "pixel-space" --seeds "$one_seed" --config loss_space=pixel ;;
    densify) recipe "densify" --seeds "$one_seed" --set densify_every=30 ;;
    *) echo "unknown group $group" >&2; exit 2 ;;
  esac
done
