#!/usr/bin/env bash
# Train every codec jscc-eval uses, from scratch, on CPU (or CUDA when present).
#   1. a base codec without erasures (shipped as "noerasure" after a matched fine-tune);
#   2. each variant fine-tuned from that base with its own erasure profile for the same steps.
# Usage: scripts/train_all.sh [DATA_DIR] [OUT_DIR]; resumable: finished models are skipped,
# an interrupted one continues from its checkpoint.  Copy the results into models/weights/.
set -euo pipefail
data=${1:-data/train}
out=${2:-runs}
base_steps=${BASE_STEPS:-12000}
ft_steps=${FT_STEPS:-2500}
threads=${THREADS:-1}   # one thread per job: OpenMP jobs sharing 2 cores stall each other
jobs=${JOBS:-2}         # fine-tunes run this many at a time
bin=${BIN:-.venv/bin}
[ -d "$data" ] || bash scripts/fetch_training_data.sh "$data"
mkdir -p "$out"

train() {  # name loss steps lr [extra args...]
  local name=$1 loss=$2 steps=$3 lr=$4; shift 4
  if ls "$out/$name"-*.safetensors >/dev/null 2>&1; then echo "== $name: done"; return; fi
  local resume=()
  [ -f "$out/$name.ckpt" ] && resume=(--resume)
  echo "== $name: loss $loss, $steps steps"
  "$bin/jscc-train" --data "$data" --out "$out" --name "$name" --loss "$loss" --steps "$steps" \
    --lr "$lr" --batch 8 --threads "$threads" --val-every 500 "${resume[@]}" "$@"
}

train base none "$base_steps" 2e-4
base=$(ls "$out"/base-*.safetensors)
finetunes=(
  "noerasure none"
  "uniform uniform:0.1"
  "ladder ladder --tail-drop 0.3"
  "uniform-0.3 uniform:0.3"
  "taildrop taildrop"
  "steep steep"
  "uniform-scr uniform:0.1 --scr"
)
for ((lane = 0; lane < jobs; lane++)); do
  (
    for ((i = lane; i < ${#finetunes[@]}; i += jobs)); do
      read -r -a job <<< "${finetunes[$i]}"
      train "${job[0]}" "${job[1]}" "$ft_steps" 2e-4 --init "$base" "${job[@]:2}"
    done
  ) &
done
wait
