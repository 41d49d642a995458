#!/usr/bin/env bash
# Fetch real photographs for training from Debian packages (never committed).
#   mate-backgrounds            -> nature photographs
#   plasma-workspace-wallpapers -> only its photographs (the rendered/abstract art is skipped)
# Usage: scripts/fetch_training_data.sh [DEST]   (default: data/train)
set -euo pipefail
dest=${1:-data/train}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
cd "$work"
if ! apt-get download mate-backgrounds plasma-workspace-wallpapers >/dev/null 2>&1; then
  echo "apt-get download failed; run 'apt-get update' first (as root) and retry" >&2
  exit 1
fi
for deb in *.deb; do dpkg -x "$deb" x; done
n=0
# mate-backgrounds: the nature photographs (JPEG); skip SVG/PNG artwork.
while IFS= read -r -d '' f; do
  cp "$f" "$OLDPWD/$dest/mate_$(basename "$f")"; n=$((n+1))
done < <(find x/usr/share/backgrounds/mate -iname '*.jpg' ! -regex '.*_[0-9]+x[0-9]+\.jpg' -print0 2>/dev/null)
# plasma-workspace-wallpapers: one file per theme (its largest rendition); the themes that are
# digital artwork rather than photographs are skipped.
artwork='^(Flow|Honeywave|Kite|OneStandsOut|PastelHills|SafeLanding|Volna|summer_1am|Next|Cluster|Elarun)$'
for dir in x/usr/share/wallpapers/*/; do
  theme=$(basename "$dir")
  [[ $theme =~ $artwork ]] && continue
  best=$(find "$dir" -path '*/images/*' -iname '*.jpg' -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
  [ -n "$best" ] || continue
  cp "$best" "$OLDPWD/$dest/plasma_${theme}.jpg"; n=$((n+1))
done
echo "fetched $n photographs into $dest"
