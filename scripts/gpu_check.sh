#!/usr/bin/env bash
# GPU host check (no internet needed): build in place with the CUDA kernels,
# run the CUDA tests, compute-sanitizer (memcheck, racecheck, synccheck) on a
# small program covering every kernel (SIMT and tensor-core paths), the
# benchmark against cuDNN (fp32, TF32, fp16, bf16; batch 64 and 256) and
# whole-model evaluation images/s (ours vs torch's convs, when the data set is
# there). Writes ${OUT:-gpu_check_out}/report.txt and summary.json.
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
for (n, c, h, co, k, s, p, d, g) in [(2, 8, 17, 16, 3, 1, 1, 1, 1), (3, 6, 13, 12, 5, 2, 2, 2, 3), (1, 4, 9, 4, 3, 1, 1, 1, 4),
                                     (2, 16, 12, 32, 1, 2, 0, 1, 1)]:
    for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False),
                        (torch.float64, False)):
        torch.backends.cudnn.allow_tf32 = tf32
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(n, c, h, h, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
            x.requires_grad_()
            w = torch.randn(co, c // g, k, k, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.randn(co, device="cuda", dtype=dtype, requires_grad=True)
            me.conv2d(x, w, b, s, p, d, g).sum().backward()
torch.cuda.synchronize()
print("sanitizer program done")
PY
for tool in memcheck racecheck synccheck; do
  step "compute-sanitizer --tool $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 9 $PY "$OUT/sanitize_prog.py" > "$OUT/sanitizer_$tool.log" 2>&1
  rc=$?; tail -2 "$OUT/sanitizer_$tool.log" | tee -a "$OUT/report.txt"; [ $rc -eq 0 ] || status=1
done

for mode in float32 tf32 float16 bfloat16; do
  step "GPU benchmark vs cuDNN: $mode (cudnn.benchmark on)"
  if [ "$mode" = tf32 ]; then args=(--dtype float32 --tf32); else args=(--dtype "$mode"); fi
  $PY -m miniplaces_ext.bench --device cuda "${args[@]}" --batch-size 64 256 --models --min-time 0.2 \
    --json "$OUT/bench_$mode.json" 2>/dev/null | tee -a "$OUT/report.txt" || status=1
done

if $PY -c "from miniplaces_ext import data; data.resolve_root()" 2>/dev/null; then
  for conv in custom torch; do
    step "evaluate ResNet-18 on the val set, $conv convs"
    flag=$([ "$conv" = custom ] && echo --use-custom-conv)
    $PY -m miniplaces_ext.evaluate --device cuda $flag --no-progress --json "$OUT/evaluate_$conv.json" \
      2>&1 | tail -3 | tee -a "$OUT/report.txt" || status=1
  done
else
  step "evaluate: skipped, no data set (bash scripts/setup.sh links ../shared/miniplaces)"
fi

$PY - "$OUT" <<'PY' | tee -a "$OUT/report.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(f"summary.json: {', '.join(summary)}")
PY

step "done, status $status"
exit $status
