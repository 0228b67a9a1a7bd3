#!/usr/bin/env bash
# Prepares, on a development machine with network access, what tools/device-check.sh needs on
# a GPU machine that has neither network nor these files: the -dev packages it lacks (stb,
# libarchive, utf8proc: see ../shared/BUILD-NOTES.md), and copies of the golden reference files
# and CLIP's BPE vocabulary. Everything goes into .deps/ (ignored by git) at the repository
# root, which the device `run` tool carries (carry: [".deps"]).
#
# usage: tools/device-prepare.sh [DEPS_DIR]     (default: <repo>/.deps)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${1:-$repo/.deps}"
shared="$repo/../shared"

# Debian packages whose headers / link-time files the GPU machine lacks. The runtime packages
# travel too where the GPU machine's distribution lacks that soname (libstb0, libutf8proc2,
# libarchive13: Ubuntu 24.04 has none installed); device-check.sh relinks any other.
packages=(libstb-dev libstb0 libarchive-dev libarchive13 libutf8proc-dev libutf8proc2)

mkdir -p "$deps/debs"
echo "device-prepare: downloading ${packages[*]} into $deps/debs"
(cd "$deps/debs" && rm -f ./*.deb && apt-get download "${packages[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
n=$(ls "$deps/debs"/*.deb 2>/dev/null | wc -l)
if [ "$n" -ne "${#packages[@]}" ]; then
  echo "device-prepare: expected ${#packages[@]} .deb files, got $n (apt-get download failed?)" >&2
  exit 1
fi

for d in golden vocab; do
  if [ ! -d "$shared/$d" ]; then
    echo "device-prepare: $shared/$d is missing" >&2
    exit 1
  fi
  rm -rf "${deps:?}/$d"
  cp -r "$shared/$d" "$deps/$d"
done

if ! git -C "$repo" check-ignore -q "$deps" 2>/dev/null; then
  echo "device-prepare: warning: $deps is not ignored by git; the run tool carries only ignored paths named in carry" >&2
fi
size=$(du -sm "$deps" | cut -f1)
echo "device-prepare: $deps ready (${size} MiB; the run tool carries at most 64 MiB with the working tree)"
ls -1 "$deps" "$deps/debs"
