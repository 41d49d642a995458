#!/usr/bin/env bash
# Train every fixed-rate codec (papers 000/001) jscc-eval's paper experiments use, from scratch, on
# CPU (or CUDA when present). They ship as fixed-NAME (fixed-uniform, fixed-ladder, ...): the plain
# names belong to the entropy-coded codecs (scripts/train_rd.sh); rename when copying.
#   1. a base codec without erasures (shipped as "noerasure" after a matched fine-tune);
#   2. each variant fine-tuned from that base with its own erasure profile for the same steps;
#   3. each variant refined with the overlapping (3-tap) linear synthesis and a weight average,
#      again with its own erasure profile (REFINE_STEPS=0 skips this).
# The defaults are the schedule the shipped weights had (their model cards record it).
# Usage: scripts/train_all.sh [DATA_DIR] [OUT_DIR]; resumable: finished models are skipped,
# an interrupted one continues from its checkpoint.  Copy OUT_DIR/refined/* into models/weights/.
set -euo pipefail
data=${1:-data/train}
out=${2:-runs}
base_steps=${BASE_STEPS:-6000}
ft_steps=${FT_STEPS:-3000}
refine_steps=${REFINE_STEPS:-8000}
threads=${THREADS:-1}   # one thread per job: OpenMP jobs sharing 2 cores stall each other
jobs=${JOBS:-2}         # fine-tunes run this many at a time
bin=${BIN:-.venv/bin}
[ -d "$data" ] || bash scripts/fetch_training_data.sh "$data"
mkdir -p "$out"

train() {  # name loss steps lr [extra args...]; OUT may be overridden per call
  local name=$1 loss=$2 steps=$3 lr=$4 out=${OUT:-$out}; shift 4
  if ls "$out/$name"-*.safetensors >/dev/null 2>&1; then echo "== $name: done"; return; fi
  local resume=()
  [ -f "$out/$name.ckpt" ] && resume=(--resume)
  echo "== $name: loss $loss, $steps steps"
  "$bin/jscc-train" --data "$data" --out "$out" --name "$name" --loss "$loss" --steps "$steps" \
    --lr "$lr" --batch 8 --threads "$threads" --val-every 500 "${resume[@]}" "$@"
}

if [ "${SKIP_FINETUNE:-0}" != 1 ]; then  # SKIP_FINETUNE=1: refine the shipped weights only
  # stages 1 and 2 as the shipped weights had them: 1-tap synthesis, raw weights (no average)
  train base none "$base_steps" 2e-4 --linear-taps 1 --ema 0
  base=$(ls "$out"/base-*.safetensors)
fi
finetunes=(
  "uniform uniform:0.1"
  "ladder ladder --tail-drop 0.3 --scr"
  "noerasure none --scr"
  "uniform-0.3 uniform:0.3 --scr"
  "steep steep --scr"
  "taildrop taildrop --scr"
  "uniform-scr uniform:0.1 --scr"
)
in_lanes() {  # stage: run every fine-tune of the list through that stage, $jobs at a time
  local stage=$1
  for ((lane = 0; lane < jobs; lane++)); do
    (
      for ((i = lane; i < ${#finetunes[@]}; i += jobs)); do
        read -r -a job <<< "${finetunes[$i]}"
        "$stage" "${job[@]}"
      done
    ) &
  done
  wait
}
finetune() { train "$1" "$2" "$ft_steps" 2e-4 --init "$base" --ema 0 "${@:3}"; }
# The importance-ordered codecs also send the two chroma DC channels (1 and 2) in a checkerboard
# across blocks 0 and 1, so a frame left with its first block still has colour; the ladder codec
# (for priority dropping, where that frame is common) also learns to decode it on an eighth of every batch.
declare -A refine_extra=([ladder]="--checker-swap 1,2 --first-block-share 0.125" [steep]="--checker-swap 1,2" [taildrop]="--checker-swap 1,2")
refine() {  # from the stage-2 weights (or the shipped ones when stage 2 was not run here)
  local init extra
  init=$(ls "$out/$1"-*.safetensors 2>/dev/null || echo "$1")
  read -r -a extra <<< "${refine_extra[$1]:-}"
  OUT="$out/refined" train "$1" "$2" "$refine_steps" 1e-4 --init "$init" --linear-taps 3 --ema 0.999 \
    "${@:3}" "${extra[@]}"
}
[ "${SKIP_FINETUNE:-0}" = 1 ] || in_lanes finetune
if [ "$refine_steps" -gt 0 ]; then in_lanes refine; fi  # (a bare && would end the script with 1)
