#!/usr/bin/env bash
# Copies the header-only dependencies (fmt, nlohmann_json, CLI11) and GoogleTest's sources from
# this machine's Debian packages into one folder, for building where those packages are missing
# (cmake -DPEFT_DEPS_DIR=<folder>, as scripts/gpu_check.sh does).
#   scripts/gather_deps.sh [folder]      (default: build-deps)
set -euo pipefail
out="${1:-build-deps}"
for need in /usr/include/fmt/format.h /usr/include/nlohmann/json.hpp /usr/include/CLI/CLI.hpp /usr/src/googletest/CMakeLists.txt; do
  [[ -e "$need" ]] || { echo "gather_deps: missing $need (apt-get install libfmt-dev nlohmann-json3-dev libcli11-dev googletest)" >&2; exit 1; }
done
rm -rf "$out.tmp" && mkdir -p "$out.tmp/include"
cp -r /usr/include/fmt /usr/include/nlohmann /usr/include/CLI "$out.tmp/include/"
cp -r /usr/src/googletest "$out.tmp/googletest"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "gather_deps: $(du -sh "$out" | cut -f1) in $out"
