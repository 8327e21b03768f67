#!/bin/bash
# The recipe tables of docs/tiny-sd.md: `python -m cfd.bench recipe` over the SD recipe's
# choices on the bundled tiny-sd, each judged against the bundled ground truth.
#   scripts/tiny_sd_recipes.sh OUT_DIR GROUP ...
# groups: methods (every method or $METHODS, the 8 family captions × seeds 0-1 or $SEEDS), and ablations of CFD on
# four families (duck, rocket, snowman: asymmetric; cactus) × seed 0: cfg, knots, camera,
# views, lr, space, densify, detail; facing: the camera's CFG (its own scale, the text's, or none),
# CFD on the asymmetric families × seeds 0-3; samples: the model's own 2D samples.
# Each run is single-threaded: two groups at a time fit a 2-core CPU. JSON per recipe in OUT_DIR; the table rows on stderr (and in OUT_DIR/<recipe>.log).
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/tiny_sd_recipes.sh OUT_DIR GROUP ...}
shift
mkdir -p "$out"
export OMP_NUM_THREADS=1
FOUR="a rubber duck,a toy rocket,a snowman,a cactus in a pot"
ASYMMETRIC="a rubber duck,a toy rocket,a snowman"

recipe() {  # name, then bench recipe options
  local name=$1
  shift
  .venv/bin/python -m cfd.bench recipe --label "$name" --json "$out/$name.json" "$@" > /dev/null 2> "$out/$name.log"
  grep '^| ' "$out/$name.log" >&2
}

ablation() {  # name, then options: CFD on the four families, seed 0
  local name=$1
  shift
  recipe "$name" --prompts "$FOUR" --seeds 0 --methods cfd "$@"
}

for group in "$@"; do
  case $group in
    methods) m=${METHODS:-cfd,sds,iid,fixed2d,cfd-sde}   # METHODS=cfd,sds SEEDS=0 split it over processes
             recipe "methods-${m//,/-}-seeds${SEEDS:-0-1}" --methods "$m" --seeds "${SEEDS:-0-1}" ;;
    base)    ablation base ;;
    cfg)     for s in 3 7.5 30 71; do ablation "cfg-$s" --set guidance_scale=$s; done ;;
    knots)   ablation authors-t-knots --config "t_knots=((0.0,980),(0.1,692),(0.5,404),(1.0,212))" ;;
    camera)  ablation camera-in-both-branches --camera-input both
             ablation no-camera-input --camera-input off
             ablation no-view-suffix --view-suffix off
             ablation neither --camera-input off --view-suffix off ;;
    facing)  # CFD on the asymmetric families × seeds 0-3: the camera's own CFG scale at tiny-sd's
             # default CFG (15: TINY_SD_GUIDANCE_SCALE, cfd/guidance/tiny_sd.py), and the camera
             # scaled with the text (cfg) or given to both branches, at CFG 7.5 and 30
             for c in 30 15 10 cfg; do
               recipe "facing-camera-scale-$c" --prompts "$ASYMMETRIC" --seeds 0-3 --methods cfd --camera-scale $c
             done
             for g in 7.5 30; do
               recipe "facing-cfg-$g-camera-cfg" --prompts "$ASYMMETRIC" --seeds 0-3 --methods cfd \
                 --set guidance_scale=$g --camera-scale cfg
               recipe "facing-cfg-$g-camera-both" --prompts "$ASYMMETRIC" --seeds 0-3 --methods cfd \
                 --set guidance_scale=$g --camera-input both
             done ;;
    samples) # the model's own DDIM samples (CFG 3), the camera guided with its own scale or not, or in
             # both; and at the distillation's CFG 15 with the camera's 30
             for c in "--camera-scale 30" "--camera-scale cfg" "--camera-input both" \
                      "--guidance-scale 15 --camera-scale 30"; do
               name="samples${c// /-}"
               .venv/bin/python -m cfd.bench samples $c --label "$name" --json "$out/$name.json" \
                 > /dev/null 2> "$out/$name.log"
               grep '^| ' "$out/$name.log" >&2
             done ;;
    views)   ablation 1-view-4x-steps --set views=1 --set steps=$((4 * ${STEPS:-200})) ;;
    lr)      ablation lr-x0.5 --set lr_scale=0.5
             ablation lr-x2 --set lr_scale=2
             ablation sh-lr-x0.67 --config "lr_sh=0.009" ;;
    space)   ablation pixel-space --config "loss_space='pixel'" ;;
    densify) ablation densify --set densify_every=20 ;;
    detail)  # what the blur and noise (cfd.measures.detail_ratio) answer to: the method, the colours'
             # learning rate, the splats, Adam's memory
             recipe sds-four --prompts "$FOUR" --seeds 0 --methods sds
             ablation sh-lr-x0.33 --config "lr_sh=0.0045"
             ablation 500-splats --config "init_splats=500"
             ablation adam-beta2-0.999 --config "adam_betas=(0.9,0.999)" ;;
    *) echo "unknown group $group" >&2; exit 2 ;;
  esac
done
