"""Benchmark our conv kernels against torch.nn.functional in the same run.

    python -m miniplaces_ext.bench                       # CPU, batch 32, fp32
    python -m miniplaces_ext.bench --json bench.json     # also write the results
    python -m miniplaces_ext.bench --plot bench.png       # and a bar chart of the ratios
    python -m miniplaces_ext.bench --dtype float32 bfloat16  # both dtypes (bf16: against oneDNN's bf16)
    python -m miniplaces_ext.bench --device cuda --batch-size 64 256 --models

For each distinct conv layer of ResNet-18-2018 and AlexNet-2018 (128x128
input) it times forward and forward+backward of ours and torch's and reports
the ratio ours/torch (< 1 means we are faster), the algorithm our CPU path
chose, and forward GFLOP/s of both as a share of this machine's measured
float32 FMA peak. "model" rows add the layers up, weighted by how often each
occurs in the network; the geomean rows average the per-layer ratios.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import miniplaces_ext
from miniplaces_ext import cli

log = logging.getLogger("miniplaces_ext.bench")
LAYER_ROUNDS = 2  # bench_layer: interleaved rounds of torch's and ours
MODEL_ROUNDS = 3  # bench_models: interleaved rounds per path


@dataclass(frozen=True)
class Layer:
    """One conv layer of a network, at a given input size."""

    net: str
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    size: int  # input height = width
    count: int  # how many layers of the network have this shape

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def flops(self, batch: int) -> int:
        """Multiply-adds x 2 of the forward pass."""
        return 2 * batch * self.out_channels * self.out_size**2 * self.in_channels * self.kernel**2


# Conv layers of the 2018 course networks at 128x128 input.
LAYERS = [
    Layer("resnet18", "Conv1 7x7/2", 3, 64, 7, 2, 3, 128, 1),
    Layer("resnet18", "layer1 3x3", 64, 64, 3, 1, 1, 64, 4),
    Layer("resnet18", "layer2.0.Conv1 3x3/2", 64, 128, 3, 2, 1, 64, 1),
    Layer("resnet18", "layer2 3x3", 128, 128, 3, 1, 1, 32, 3),
    Layer("resnet18", "layer2 downsample 1x1/2", 64, 128, 1, 2, 0, 64, 1),
    Layer("resnet18", "layer3.0.Conv1 3x3/2", 128, 256, 3, 2, 1, 32, 1),
    Layer("resnet18", "layer3 3x3", 256, 256, 3, 1, 1, 16, 3),
    Layer("resnet18", "layer3 downsample 1x1/2", 128, 256, 1, 2, 0, 32, 1),
    Layer("resnet18", "layer4.0.Conv1 3x3/2", 256, 512, 3, 2, 1, 16, 1),
    Layer("resnet18", "layer4 3x3", 512, 512, 3, 1, 1, 8, 3),
    Layer("resnet18", "layer4 downsample 1x1/2", 256, 512, 1, 2, 0, 16, 1),
    Layer("alexnet", "features.0 11x11/4", 3, 64, 11, 4, 2, 128, 1),
    Layer("alexnet", "features.3 5x5", 64, 192, 5, 1, 2, 31, 1),
    Layer("alexnet", "features.7 3x3", 192, 384, 3, 1, 1, 15, 1),
    Layer("alexnet", "features.10 3x3", 384, 256, 3, 1, 1, 15, 1),
    Layer("alexnet", "features.13 3x3", 256, 256, 3, 1, 1, 15, 1),
]


def _timer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_ms(fn: Callable[[], object], device: torch.device, min_time: float, warmup: int = 2) -> float:
    """Median wall time of `fn` in ms over at least 3 runs and `min_time` seconds."""
    sync = _timer(device)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_layer(layer: Layer, batch: int, device: torch.device, dtype: torch.dtype, channels_last: bool,
                min_time: float) -> dict:
    """Times forward and forward+backward of ours and torch's on one layer shape."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size, generator=gen).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel, generator=gen) * 0.05)
    w = w.to(device, dtype).requires_grad_()
    x.requires_grad_()
    args = (None, layer.stride, layer.padding)
    row = {**asdict(layer), "batch": batch, "gflop": layer.flops(batch) / 1e9,
           "algo": miniplaces_ext.cpu_conv_algorithm(x, w, layer.stride, layer.padding)
           if device.type == "cpu" else "implicit-gemm"}
    def fwd_bwd(conv: Callable[..., Tensor]) -> tuple[Tensor, ...]:
        out = conv(x, w, *args)
        return torch.autograd.grad(out, (x, w), torch.ones_like(out))

    # Interleaved rounds, each measurement's best round kept, as in bench_models: a transient
    # slowdown of a shared machine during one median then costs neither side its figure.
    for round_ in range(LAYER_ROUNDS):
        for label, conv in (("torch", F.conv2d), ("ours", miniplaces_ext.conv2d)):
            with torch.no_grad():
                ms = time_ms(lambda: conv(x, w, *args), device, min_time / LAYER_ROUNDS)
            row[f"{label}_fwd_ms"] = min(row.get(f"{label}_fwd_ms", math.inf), ms)
            ms = time_ms(lambda: fwd_bwd(conv), device, min_time / LAYER_ROUNDS)
            row[f"{label}_fwdbwd_ms"] = min(row.get(f"{label}_fwdbwd_ms", math.inf), ms)
    row["fwd_ratio"] = row["ours_fwd_ms"] / row["torch_fwd_ms"]
    row["fwdbwd_ratio"] = row["ours_fwdbwd_ms"] / row["torch_fwdbwd_ms"]
    for label in ("torch", "ours"):
        row[f"{label}_fwd_gflops"] = row["gflop"] / row[f"{label}_fwd_ms"] * 1e3
    return row


def bench_models(batch: int, device: torch.device, dtype: torch.dtype, min_time: float,
                 compiled: bool = False) -> list[dict]:
    """Whole-network eval throughput (images/s, inference_mode, channels_last; the provided weights
    where found, random images): torch's convs, ours
    (swap_convs), and for float32 / bfloat16 optimize_for_inference's fused network ("fused"; float32
    images in). With `compiled`, also torch.compile with inductor's freezing of torch's network
    ("torch_compile", what a user who wants speed picks; its weights and images already in `dtype`),
    for bfloat16 the float32 network compiled and run under torch.autocast on float32 NCHW images
    ("torch_compile_autocast", the fused network's terms), and torch.compile(fused, fullgraph=True)
    ("fused_compile")."""
    import torch._inductor.config as inductor_config

    from miniplaces_ext import models

    rows = []
    for arch in models.ARCHS:
        base, weights = _eval_network(arch)
        model = copy.deepcopy(base).to(device, dtype, memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 128, 128, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        row = {"net": arch, "batch": batch, "weights": weights}
        nets = {"torch": (model, x)}
        if compiled:
            nets["torch_compile"] = (torch.compile(copy.deepcopy(model)), x)
            if dtype == torch.bfloat16:  # the float32 network under autocast, as PyTorch's docs run bf16
                nets["torch_compile_autocast"] = (
                    _under_autocast(torch.compile(copy.deepcopy(base).to(device, memory_format=torch.channels_last)),
                                    device, dtype), x.float().contiguous())
        if dtype in (torch.float32, torch.bfloat16):
            fused = miniplaces_ext.optimize_for_inference(base.to(device), dtype)
            nets["fused"] = (fused, x.float())
            if compiled:
                nets["fused_compile"] = (torch.compile(fused, fullgraph=True), x.float())
        # "ours" runs the same model after swap_convs: a copy keeps torch's convs for "torch".
        nets["ours"] = (miniplaces_ext.swap_convs(copy.deepcopy(model)), x)
        # Rounds over all paths in turn, each path's best round kept: a transient slowdown of this
        # shared VM (one path's median once read 30 % low) then costs no path its figure.
        best: dict[str, float] = {}
        for round_ in range(MODEL_ROUNDS):
            for label, (net, inputs) in nets.items():
                log.info("%s eval, %s: %s (round %d of %d) ...", arch, dtype, label, round_ + 1, MODEL_ROUNDS)
                with torch.inference_mode(), inductor_config.patch(freezing=True):
                    ms = time_ms(lambda: net(inputs), device, min_time / MODEL_ROUNDS)
                best[label] = min(best.get(label, math.inf), ms)
        for label, ms in best.items():
            row[f"{label}_images_per_s"] = batch / ms * 1e3
        row["ratio"] = row["torch_images_per_s"] / row["ours_images_per_s"]
        rows.append(row)
    return rows


def _eval_network(arch: str) -> tuple[torch.nn.Module, str]:
    """The course network `arch` in eval mode with the provided weights where they are found
    (models.find_weights), else random ones, and which ("provided" / "random"). The weights matter
    to the fused bfloat16 AlexNet: its fc6 and fc7 run factored only where their rank is low."""
    from miniplaces_ext import models

    try:
        return models.load_checkpoint(arch, models.find_weights(arch)).eval(), "provided"
    except FileNotFoundError:
        log.info("%s: no provided weights found, timing random ones", arch)
        return models.build(arch).eval(), "random"


def _under_autocast(model: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                    dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """model(x) run under torch.autocast(device, dtype)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model(x)
    return run


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def summarise(rows: list[dict]) -> list[dict]:
    """Per-network totals (each layer weighted by its count), their ratios, and the geomean of
    the per-layer ratios."""
    totals = []
    for net in sorted({r["net"] for r in rows}):
        sel = [r for r in rows if r["net"] == net]
        total = {"net": net, "name": "model (all conv layers)", "count": sum(r["count"] for r in sel)}
        for key in ("torch_fwd_ms", "ours_fwd_ms", "torch_fwdbwd_ms", "ours_fwdbwd_ms", "gflop"):
            total[key] = sum(r[key] * r["count"] for r in sel)
        total["fwd_ratio"] = total["ours_fwd_ms"] / total["torch_fwd_ms"]
        total["fwdbwd_ratio"] = total["ours_fwdbwd_ms"] / total["torch_fwdbwd_ms"]
        for label in ("torch", "ours"):
            total[f"{label}_fwd_gflops"] = total["gflop"] / total[f"{label}_fwd_ms"] * 1e3
        total["fwd_geomean"] = geomean([r["fwd_ratio"] for r in sel])
        total["fwdbwd_geomean"] = geomean([r["fwdbwd_ratio"] for r in sel])
        sel3 = [r for r in sel if r["kernel"] == 3]
        if sel3:
            for kind in ("fwd", "fwdbwd"):
                ours = sum(r[f"ours_{kind}_ms"] * r["count"] for r in sel3)
                theirs = sum(r[f"torch_{kind}_ms"] * r["count"] for r in sel3)
                total[f"3x3_{kind}_ratio"] = ours / theirs
        totals.append(total)
    return totals


def format_table(rows: list[dict], totals: list[dict], peak_gflops: float | None) -> str:
    """A plain-text table of the results (times in ms; GFLOP/s and % of peak of the forward)."""
    head = f"{'net':9} {'layer':24} {'x':>2} {'algo':>8} {'torch fwd':>10} {'ours fwd':>9} {'ratio':>6} " \
           f"{'torch f+b':>10} {'ours f+b':>9} {'ratio':>6} {'GFLOP/s torch':>14} {'ours':>6}"
    if peak_gflops:
        head += f" {'% peak torch':>13} {'ours':>5}"
    lines = [head, "-" * len(head)]
    for r in [*rows, *totals]:
        line = (f"{r['net']:9} {r['name'][:24]:24} {r['count']:>2} {r.get('algo', ''):>8} {r['torch_fwd_ms']:>10.2f} "
                f"{r['ours_fwd_ms']:>9.2f} {r['fwd_ratio']:>6.2f} {r['torch_fwdbwd_ms']:>10.2f} "
                f"{r['ours_fwdbwd_ms']:>9.2f} {r['fwdbwd_ratio']:>6.2f} {r['torch_fwd_gflops']:>14.1f} "
                f"{r['ours_fwd_gflops']:>6.1f}")
        if peak_gflops:
            line += f" {100 * r['torch_fwd_gflops'] / peak_gflops:>12.0f}% {100 * r['ours_fwd_gflops'] / peak_gflops:>4.0f}%"
        lines.append(line)
    for t in totals:
        lines.append(f"{t['net']}: geomean of layer ratios forward {t['fwd_geomean']:.2f}, "
                     f"forward+backward {t['fwdbwd_geomean']:.2f}")
        if "3x3_fwd_ratio" in t:
            lines.append(f"{t['net']}: 3x3 layers ratio forward {t['3x3_fwd_ratio']:.2f}, "
                         f"forward+backward {t['3x3_fwdbwd_ratio']:.2f}")
    if peak_gflops:
        lines.append(f"measured float32 FMA peak of {torch.get_num_threads()} threads: {peak_gflops:.1f} GFLOP/s")
    return "\n".join(lines)


def plot(runs: list[dict], path: str, title: str) -> None:
    """A horizontal bar chart of ours/torch time per layer (forward and forward+backward)."""
    rows = [(f" b{run['batch']} {run['dtype']}", r) for run in runs for r in run["layers"]]
    labels = [f"{r['net']} {r['name']} [{r.get('algo', '')}]" + (run_label if len(runs) > 1 else "")
              for run_label, r in rows]
    fig = cli.new_figure(figsize=(9, 0.32 * len(rows) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [r["fwd_ratio"] for _, r in rows], height=0.4, label="forward")
    ax.barh([y + 0.2 for y in ys], [r["fwdbwd_ratio"] for _, r in rows], height=0.4, label="forward+backward")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time ours / torch (< 1: ours faster)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    cli.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=None,
                        help="batch sizes (default: 32 on CPU, 64 256 on CUDA)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64", "float16", "bfloat16"],
                        help="one run per dtype (default: float32); bfloat16/float16 are computed by our CPU "
                             "kernels in float32 and compared with torch's own path for that dtype")
    parser.add_argument("--net", choices=["resnet18", "alexnet", "all"], default="all")
    parser.add_argument("--channels-last", action="store_true", help="feed channels_last inputs to both")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per measurement")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA: let float32 convolutions (cuDNN's and ours) use TF32 tensor cores (default: off)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--models", action="store_true",
                        help="also time whole-network eval (images/s): torch's convs, ours (swap_convs) and "
                             "optimize_for_inference's fused network")
    parser.add_argument("--compile", action="store_true",
                        help="with --models: also torch.compile with inductor freezing, and the fused network "
                             "under torch.compile (minutes: each is compiled first)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (default: reuse_freed_memory(), as the commands do, "
                             "for every path alike)")
    parser.add_argument("--plot", metavar="PNG", help="write a bar chart of the ratios to PNG")
    parser.add_argument("--no-peak", action="store_true", help="skip measuring the CPU's FMA peak (~1 s)")
    cli.add_json_arg(parser, "all rows and totals")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but no GPU is available")
        if not miniplaces_ext.cuda_kernels_built():
            parser.error("this build has no CUDA kernels; rebuild with FORCE_CUDA=1")
        torch.backends.cudnn.benchmark = True
        # float32 as TF32 on tensor cores, for cuDNN and ours alike, only when asked
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = not args.default_malloc and miniplaces_ext.reuse_freed_memory()
    batches = args.batch_size or ([32] if device.type == "cpu" else [64, 256])
    layers = [l for l in LAYERS if args.net in ("all", l.net)]

    say = cli.table_printer(args)
    peak = None
    if device.type == "cpu" and not args.no_peak:
        peak = max(torch.ops.miniplaces_ext.cpu_fma_peak_gflops() for _ in range(3))
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": cli.git_commit(), "device": str(device), "dtypes": args.dtype,
              "threads": torch.get_num_threads(), "cpu": miniplaces_ext.cpu_capabilities(),
              "cpu_model": cli.cpu_model(), "fma_peak_gflops": peak, "torch": torch.__version__,
              "channels_last": args.channels_last, "reuse_freed_memory": reused, "runs": []}
    for dtype_name, batch in [(d, b) for d in args.dtype for b in batches]:
        dtype = getattr(torch, dtype_name)
        rows = []
        for layer in layers:
            log.info("batch %d, %s: %s %s ...", batch, dtype_name, layer.net, layer.name)
            rows.append(bench_layer(layer, batch, device, dtype, args.channels_last, args.min_time))
        totals = summarise(rows)
        say(f"\nbatch {batch}, {dtype_name}, {device}, {torch.get_num_threads()} threads, times in ms")
        say(format_table(rows, totals, peak))
        run = {"batch": batch, "dtype": dtype_name, "layers": rows, "totals": totals}
        if args.models:
            run["models"] = bench_models(batch, device, dtype, args.min_time, args.compile)
            for m in run["models"]:
                rates = ", ".join(f"{k[:-len('_images_per_s')]} {v:.1f}" for k, v in m.items()
                                  if k.endswith("_images_per_s"))
                say(f"{m['net']} eval, batch {batch}, {dtype_name}, images/s: {rates}")
        report["runs"].append(run)
    if args.json:
        cli.write_json(args.json, report)
    if args.plot:
        plot(report["runs"], args.plot, f"{report['cpu_model']}, {report['threads']} threads, "
                                        f"{', '.join(args.dtype)}, torch {torch.__version__}")
        log.info("wrote %s", args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
