#!/usr/bin/env bash
# Sets up a development environment in .venv and builds the extension in place.
#
#   bash scripts/setup.sh            # idempotent: reuses .venv, builds only when the sources, the
#                                    # build switches or torch changed
#
# Environment: CUDA_HOME (default /usr/local/cuda when it exists),
# TORCH_CUDA_ARCH_LIST (default: setup.py's, 7.5;8.0;8.6;8.9;9.0+PTX), FORCE_CUDA=1/0 (see setup.py),
# PYTHON (default python3), VENV (default .venv).
# Run as root on Debian/Ubuntu, it also installs the packages chromium and chromium-driver with
# apt-get (a headless browser for the web page's tests; announced before it runs); NO_APT=1 skips
# that, and the browser tests then skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda   # autodetection would pick /usr/local, where linking fails
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing requirements"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
# A build compiled from these sources, switches and torch is kept (miniplaces_ext/_build_stamp.py):
# CI builds once in a fresh venv with a plain `pip install -e .`, then runs this script on it.
if stale=$("$VENV/bin/python" miniplaces_ext/_build_stamp.py); then
  echo "==> miniplaces_ext is built from these sources for this torch: not rebuilding"
else
  echo "==> building miniplaces_ext ($stale; CUDA_HOME=${CUDA_HOME:-none}, FORCE_CUDA=${FORCE_CUDA:-auto})"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
fi
"$VENV/bin/python" -c "import miniplaces_ext as m; print('==> built', m.LIBRARY_PATH, '| CUDA kernels:', m.cuda_kernels_built())"

# Where the project's shared folder sits beside the checkout, link (never copy) its data and
# weights to the default locations, so the commands run without --data-root/--weights.
SHARED=${MINIPLACES_SHARED:-../shared}
if [ -f "$SHARED/miniplaces/categories.txt" ] && [ ! -e data/miniplaces ]; then
  mkdir -p data && ln -s "$(cd "$SHARED/miniplaces" && pwd)" data/miniplaces
  echo "==> linked data/miniplaces -> $SHARED/miniplaces"
fi
if [ -f "$SHARED/models/resnet18.pt" ] && [ ! -e models/resnet18.pt ]; then
  ln -s "$(cd "$SHARED/models" && pwd)/resnet18.pt" models/resnet18.pt
  echo "==> linked models/resnet18.pt -> $SHARED/models/resnet18.pt"
fi
# The provided AlexNet keeps fc6/fc7 as their rank-256 factors; its script writes the course's
# plain state_dict (float16, 142 MB, git-ignored) once.
if [ -f "$SHARED/models/alexnet_factored.pt" ] && [ -f "$SHARED/models/make_alexnet.py" ] && [ ! -e models/alexnet.pt ]; then
  "$VENV/bin/python" "$SHARED/models/make_alexnet.py" models/alexnet.pt
  echo "==> wrote models/alexnet.pt from $SHARED/models/alexnet_factored.pt (make_alexnet.py)"
fi

# A headless browser and its WebDriver for the tests that look at our HTML pages (Debian's
# chromium and chromium-driver; no download from the internet). Skipped when they are there,
# or without root and apt-get.
if { ! command -v chromium || ! command -v chromedriver; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && [ "${NO_APT:-0}" != 1 ]; then
  echo "==> installing the Debian packages chromium and chromium-driver (apt-get, as root) for the browser tests; NO_APT=1 skips this"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "==> could not install chromium: the browser tests will skip"
fi
