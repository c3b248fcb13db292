#!/usr/bin/env bash
# The longest synthetic TOD3Cap schedule measured for class naming (benchmarks/RESULTS.md, "Class naming over a
# longer schedule"), as one command: TOD3Cap's staged schedule (Sec. 3.1) with a detection stage of 2,100 steps and
# a caption stage of 2,300, then the class-naming measurement of every stage on all Hungarian-matched val queries.
#
#   benchmarks/mta_class_naming_recipe.sh OUT                  # ~6-7 h on a 2-core AVX2 CPU (estimate, see RESULTS)
#   STEPS_DIV=100 DATAROOT=/tmp/tiny benchmarks/mta_class_naming_recipe.sh /tmp/recipe_smoke   # mechanics only
#
# Stages (each one a `bevbridge train` run under OUT/<stage>; a stage whose final checkpoint exists is skipped, so a
# killed recipe resumes at the stage it was in, from that stage's latest checkpoint; every continuation starts a
# fresh cosine schedule from the previous stage's final weights):
#   det600   bevformer_tiny_synth, 600 steps                         (the detector the Table 1 analogs start from)
#   det1200  + 600 steps                 det2100  + 900 steps
#   cap400   tod3cap_synth caption stage on det600: detector frozen, det_weight 0, 4 objects per sample
#   cap800   + 400 steps at TOD3Cap's 8 objects per sample
#   capB     + 600 steps, the detector replaced by det2100's (model.detector.init_from), 8 objects
#   capC     + 900 steps, 8 objects, checkpoints every 300
# Measurements (benchmarks/mta_class_naming.py, greedy captions, every matched query of every val sample; capC also
# on 640 training queries):
#   OUT/naming_<stage>.json. STEPS_DIV divides every step count (a smoke test of the chain; the numbers then mean
#   nothing). THREADS (default: the machine's cores) sets OMP_NUM_THREADS.
set -euo pipefail

OUT=${1:?usage: $0 OUT  (env: STEPS_DIV=1, DATAROOT=data/synth, THREADS=nproc)}
DIV=${STEPS_DIV:-1}
DATAROOT=${DATAROOT:-data/synth}
export OMP_NUM_THREADS=${THREADS:-$(nproc)}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BEVBRIDGE=${BEVBRIDGE:-$HERE/.venv/bin/bevbridge}
PY=${PY:-$HERE/.venv/bin/python}
DET_CFG=$HERE/configs/bevformer/bevformer_tiny_synth.yaml
CAP_CFG=$HERE/configs/mta/tod3cap_synth.yaml
mkdir -p "$OUT"

steps() { local n=$(( $1 / DIV )); echo $(( n > 0 ? n : 1 )); }
ckpt() { printf '%s/%s/checkpoints/step_%08d' "$OUT" "$1" "$(steps "$2")"; }
# train STAGE STEPS CONFIG [override ...]: one stage, skipped when its final checkpoint is already there, resumed
# from its latest checkpoint when a killed run left one (checkpoints every 300 steps / STEPS_DIV).
train() {
    local stage=$1 n=$2 cfg=$3; shift 3
    if [[ -d $(ckpt "$stage" "$n") ]]; then echo "recipe: $stage done ($(ckpt "$stage" "$n"))"; return; fi
    local s every resume=()
    s=$(steps "$n"); every=$(steps 300)
    if compgen -G "$OUT/$stage/checkpoints/step_*" > /dev/null; then
        resume=(--resume); echo "recipe: $stage, resuming its latest checkpoint -> $OUT/$stage"
    else
        echo "recipe: $stage, $s steps -> $OUT/$stage"
    fi
    "$BEVBRIDGE" train "$cfg" data.dataroot="$DATAROOT" train.seed=0 train.max_steps="$s" \
        train.ckpt_every="$(( s < every ? s : every ))" "$@" --out "$OUT/$stage" "${resume[@]}"
}
# naming STAGE [arg ...]: the class-naming measurement of a stage's final checkpoint, written atomically.
naming() {
    local stage=$1; shift
    local dst=$OUT/naming_$stage.json
    [[ -s $dst ]] && { echo "recipe: $dst exists"; return; }
    "$PY" "$HERE/benchmarks/mta_class_naming.py" "$CAP_CFG" data.dataroot="$DATAROOT" --per-sample 1000 \
        --topk 0 "$@" > "$dst.tmp"
    mv "$dst.tmp" "$dst"
    echo "recipe: wrote $dst"
}

[[ -d $DATAROOT ]] || "$BEVBRIDGE" synth --out "$DATAROOT"

# Detection stage (BEVFormer-tiny-synth), continued twice.
CONT=('model.init_prefix_map={"": ""}' schedule.warmup_steps="$(steps 30)")
train det600 600 "$DET_CFG" eval.every_steps="$(steps 200)"
train det1200 600 "$DET_CFG" model.init_from="$(ckpt det600 600)" "${CONT[@]}" eval.every_steps="$(steps 600)"
train det2100 900 "$DET_CFG" model.init_from="$(ckpt det1200 600)" "${CONT[@]}" eval.every_steps="$(steps 900)"

# Caption stage: detector frozen, only the caption branch trains (det_weight 0); detection is the only evaluator
# (captioning at evaluation would cost most of the stage's time; the naming measurement below replaces it).
CAP=("model.freeze=[detector]" model.det_weight=0 "eval.evaluators=[detection]" eval.best_metric=null
     model.caption.topk=4 schedule.warmup_steps="$(steps 10)")
train cap400 400 "$CAP_CFG" "${CAP[@]}" model.init_from="$(ckpt det600 600)"
train cap800 400 "$CAP_CFG" "${CAP[@]}" model.init_from="$(ckpt cap400 400)" 'model.init_prefix_map={"": ""}' \
    model.caption.objects_per_sample=8
train capB 600 "$CAP_CFG" "${CAP[@]}" model.init_from="$(ckpt cap800 400)" 'model.init_prefix_map={"": ""}' \
    model.detector.init_from="$(ckpt det2100 900)" model.caption.objects_per_sample=8
train capC 900 "$CAP_CFG" "${CAP[@]}" model.init_from="$(ckpt capB 600)" 'model.init_prefix_map={"": ""}' \
    model.caption.objects_per_sample=8

# Class naming: the detector's own label (detection stages), the captions beside it (caption stages).
naming det600 --detector-only model.init_from="$(ckpt det600 600)"
naming det2100 --detector-only model.init_from="$(ckpt det2100 900)"
naming cap800 --ckpt "$(ckpt cap800 400)"
naming capB --ckpt "$(ckpt capB 600)"
naming capC --ckpt "$(ckpt capC 900)"
naming capC_train --ckpt "$(ckpt capC 900)" data.val_split=mini_train --per-sample 4  # 640 of ~5,700
echo "recipe: done; class naming in $OUT/naming_*.json"
