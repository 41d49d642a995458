#!/usr/bin/env bash
# Fetch real photographs for training from Debian packages (never committed).
#   mate-backgrounds            -> nature photographs
#   plasma-workspace-wallpapers -> only its photographs (the rendered/abstract art is skipped)
#   lomiri-wallpapers-16.04/-20.04 -> the community photographs ("*_by_*"; artwork skipped)
# Usage: scripts/fetch_training_data.sh [DEST]   (default: data/train)
set -euo pipefail
dest=${1:-data/train}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
cd "$work"
if ! apt-get download mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 >/dev/null 2>&1; then
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
# lomiri-wallpapers: the photographs among the community wallpapers (checked by eye; the
# others are paintings or renders).
for name in Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Kleiber_by_Lukas_Baubkus Picture_0B_by_freespace \
            Picture_1A_by_freespace Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich \
            friends_by_Aitzol_Berasategi life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi \
            seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi; do
  f=x/usr/share/backgrounds/$name.jpg
  [ -f "$f" ] || continue
  cp "$f" "$OLDPWD/$dest/lomiri_$name.jpg"; n=$((n+1))
done
echo "fetched $n photographs into $dest"
