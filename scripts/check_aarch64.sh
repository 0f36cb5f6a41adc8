#!/usr/bin/env bash
# Compiles the C++ sources (CPU kernels, dispatcher, op registration) for aarch64 with Debian's
# cross compiler, to prove the source builds on non-x86 hosts (e.g. GH200): the x86 kernels must
# compile away and the portable kernels must stand alone. Object code only; nothing is linked.
#
#   bash scripts/check_aarch64.sh [PYTHON]     # PYTHON: an interpreter with torch (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
CXX=aarch64-linux-gnu-g++
if ! command -v "$CXX" > /dev/null; then
  echo "==> installing Debian's g++-aarch64-linux-gnu"
  { apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu; } > /tmp/apt-aarch64.log 2>&1 \
    || { cat /tmp/apt-aarch64.log; echo "cannot install $CXX" >&2; exit 1; }
fi
TI=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
PYI=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for src in csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*/*.cpp testing/cuda_on_cpu/*.cpp; do
  "$CXX" -std=c++20 -O2 -fopenmp -fPIC -Werror=return-type -c "$src" -o "$OUT/$(basename "$src").o" \
    -I csrc -I "$TI" -I "$TI/torch/csrc/api/include" -I "$PYI" -DTORCH_EXTENSION_NAME=_C
  echo "aarch64 ok: $src"
done
