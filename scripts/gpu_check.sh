#!/usr/bin/env bash
# GPU host check (no internet needed): build in place with the CUDA kernels,
# run the CUDA tests, compute-sanitizer (memcheck, racecheck) on a small
# program, and the GPU benchmark. Writes a report to ${OUT:-gpu_check_out}/.
#
#   bash scripts/gpu_check.sh            # uses the python3 that has torch
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
status=0
step() { echo "=== $*" | tee -a "$OUT/report.txt"; }

step "build ($($PY -c 'import torch; print(torch.__version__)'), CUDA_HOME=$CUDA_HOME)"
$PY -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
$PY -c "import miniplaces_ext as m; assert m.cuda_kernels_built(); import torch; print(torch.cuda.get_device_name())" \
  | tee -a "$OUT/report.txt" || exit 1

step "CUDA tests"
$PY -m pytest tests/ -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.log" | tail -3 | tee -a "$OUT/report.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

cat > "$OUT/sanitize_prog.py" <<'PY'
import torch, miniplaces_ext as me
for (n, c, h, co, k, s, p, d, g) in [(2, 8, 17, 16, 3, 1, 1, 1, 1), (3, 6, 13, 12, 5, 2, 2, 2, 3), (1, 4, 9, 4, 3, 1, 1, 1, 4)]:
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(n, c, h, h, device="cuda", dtype=dtype, requires_grad=True)
        w = torch.randn(co, c // g, k, k, device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(co, device="cuda", dtype=dtype, requires_grad=True)
        me.conv2d(x, w, b, s, p, d, g).sum().backward()
torch.cuda.synchronize()
print("sanitizer program done")
PY
for tool in memcheck racecheck; do
  step "compute-sanitizer --tool $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 9 $PY "$OUT/sanitize_prog.py" > "$OUT/sanitizer_$tool.log" 2>&1
  rc=$?; tail -2 "$OUT/sanitizer_$tool.log" | tee -a "$OUT/report.txt"; [ $rc -eq 0 ] || status=1
done

step "GPU benchmark (vs cuDNN, TF32 off, cudnn.benchmark on)"
$PY -m miniplaces_ext.bench --device cuda --batch-size 64 256 --models --min-time 0.2 --json "$OUT/bench_cuda.json" \
  2>/dev/null | tee -a "$OUT/report.txt" || status=1

step "done, status $status"
exit $status
