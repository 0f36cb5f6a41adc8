#!/usr/bin/env bash
# Builds the C++ kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a
# scratch copy of the repository (the normal in-place build is left alone) and
# runs the op tests under them. Fails on any sanitizer report.
#
#   bash scripts/sanitize.sh [pytest args]     # default: the op tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(pwd)/.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d /tmp/miniplaces-sanitize.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -r setup.py csrc miniplaces_ext tests "$WORK"/
rm -f "$WORK"/miniplaces_ext/_C*.so
echo "==> ASan+UBSan build in $WORK"
(cd "$WORK" && MINIPLACES_SANITIZE=address,undefined FORCE_CUDA=0 MINIPLACES_DEBUG=1 \
  "$PY" setup.py -q build_ext --inplace > build.log 2>&1) || { tail -30 "$WORK/build.log"; exit 1; }
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
TESTS=${*:-tests/test_conv_vs_torch.py tests/test_gradcheck.py tests/test_bad_input.py tests/test_reference.py}
echo "==> pytest under ASan+UBSan: $TESTS"
cd "$WORK"
LOG="$WORK/sanitize.log"
set +e
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONMALLOC=malloc \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  PYTHONPATH="$WORK" "$PY" -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:" "$LOG"; then
  echo "==> sanitizer reports found"; exit 1
fi
echo "==> sanitizers clean (pytest exit $rc)"
exit "$rc"
