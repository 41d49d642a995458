#!/usr/bin/env bash
# Train the entropy-coded codecs (jscc-train --arch rd) the way the shipped ones were, on CPU (or
# CUDA when present), two jobs at a time with one thread each; resumable (an interrupted run
# continues from its checkpoint; SIGTERM saves one first):
#   uniform   : 16000 steps, iid packet loss up to 30 % on 60 % of the batches
#   ladder    : 16000 steps, a random prefix of levels on 40 %, loss up to 20 % on 30 %
#   noerasure : uniform's checkpoint + 3000 steps without erasures
# Usage: scripts/train_rd.sh [DATA_DIR] [OUT_DIR]; then copy OUT_DIR/weights/* into models/weights/.
set -euo pipefail
data=${1:-data/train}
out=${2:-runs}
steps=${STEPS:-16000}
bin=${BIN:-.venv/bin}
[ -d "$data" ] || bash scripts/fetch_training_data.sh "$data"
mkdir -p "$out/weights"
run() {  # name erasures steps
  "$bin/jscc-train" --arch rd --data "$data" --out "$out/rd-$1" --name "$1" --erasures "$2" --steps "$3" \
    --threads 1 --resume > "$out/rd-$1.out" 2>&1
}
run uniform uniform "$steps" & run ladder ladder "$steps" & wait
mkdir -p "$out/rd-noerasure"
[ -f "$out/rd-noerasure/last.ckpt" ] || cp "$out/rd-uniform/last.ckpt" "$out/rd-noerasure/last.ckpt"
run noerasure none $((steps + 3000))
for n in uniform ladder noerasure; do
  "$bin/jscc-train" --arch rd --data "$data" --out "$out/rd-$n" --name "$n" --export "$out/weights"
done
