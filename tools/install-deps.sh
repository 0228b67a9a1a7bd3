#!/usr/bin/env bash
# Installs clipcu's build and test dependencies from Debian/Ubuntu packages (idempotent: does
# nothing when everything is already there). The CUDA toolkit is optional and not installed here.
set -euo pipefail
pkgs=(build-essential cmake pkg-config ccache
      doctest-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev
      libstb-dev libarchive-dev zlib1g-dev libutf8proc-dev libopenblas-openmp-dev libturbojpeg0-dev
      gnuplot-nox graphviz)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
