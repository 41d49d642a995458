#!/usr/bin/env bash
# Train the video codec's inter (residual) model: jscc-train --arch rd --inter, on CPU (or CUDA),
# one thread, resumable (SIGTERM saves a checkpoint first; rerun the script to continue):
#   6000 steps, half of the pairs from photographs under synthetic camera motion, half from real
#   camera clips (make video-data); the transform is the KLT of such residuals; then the export of
#   NAME-HASH.safetensors + NAME.json into OUT_DIR/weights.
# The shipped `video` differs in two ways (docs/codec.md): its first 3500 steps saw photographs
# only, and it was trained with the default latent/pixel CNNs, removed afterwards (no measurable
# effect on residuals); this script trains the CNN-free model directly.
# Usage: scripts/train_video.sh [DATA_DIR] [CLIPS_DIR] [OUT_DIR]; then copy OUT_DIR/weights/video* into models/weights/.
set -euo pipefail
data=${1:-data/train}
clips=${2:-data/video}
out=${3:-runs}
bin=${BIN:-.venv/bin}
[ -d "$data" ] || bash scripts/fetch_training_data.sh "$data"
[ -d "$clips" ] || bash scripts/fetch_video_clips.sh "$clips"
mkdir -p "$out/weights"
run() {  # steps [extra args]
  "$bin/jscc-train" --arch rd --inter --intra uniform --data "$data" --out "$out/rd-video" --name video \
    --latent-width 0 --pixel-width 0 --q-min 0.01 --erasures uniform --threads 1 --resume --steps "$@" \
    >> "$out/rd-video.out" 2>&1
}
run 6000 --clips "$clips"
"$bin/jscc-train" --arch rd --data "$data" --out "$out/rd-video" --name video --export "$out/weights"
