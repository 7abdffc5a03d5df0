#!/usr/bin/env bash
# Fetches GCIDE, the GNU Collaborative International Dictionary of English, as Debian's pinned
# package dict-gcide 0.48.5+nmu2 (bookworm), verifies its SHA-256, and converts the dictionary to
# plain text, one entry per line (scripts/gcide_to_text.py). GCIDE is GPL-2.0-or-later; its
# copyright file is copied beside the text. Re-running skips a verified download.
#
#   scripts/fetch_gcide.sh [dest]        (default dest: data/raw/gcide)
#     -> dest/gcide.txt, dest/copyright
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/fetch_verified.sh

dest="${1:-data/raw/gcide}"
url=https://deb.debian.org/debian/pool/main/d/dict-gcide/dict-gcide_0.48.5+nmu2_all.deb
sum=7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f
deb="$dest/$(basename "$url")"
mkdir -p "$dest"

fetch_verified dict-gcide "$url" "$sum" "$deb"

tmp="$(mktemp -d "$dest/.unpack-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# A .deb is an ar archive; its data member holds the dictd files.
(cd "$tmp" && ar x "$OLDPWD/$deb" && tar -xf data.tar.*)
zcat "$tmp/usr/share/dictd/gcide.dict.dz" | /usr/bin/python3 scripts/gcide_to_text.py "$tmp/usr/share/dictd/gcide.index" > "$tmp/gcide.txt"
cp "$tmp/usr/share/doc/dict-gcide/copyright" "$dest/copyright"
mv "$tmp/gcide.txt" "$dest/gcide.txt"
echo "done: $dest/gcide.txt ($(wc -l < "$dest/gcide.txt") entries)"
