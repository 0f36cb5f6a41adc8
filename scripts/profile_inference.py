"""Where the time of one ResNet-18 eval batch goes, per path: torch.profiler self time by category.

    python scripts/profile_inference.py                  # batch 32, real val images, markdown table
    python scripts/profile_inference.py --json prof.json

Paths: torch eager (channels_last), our convs by swap_convs, and optimize_for_inference's fused
network, in float32 and in bfloat16 (eager and swap_convs under torch.autocast, the fused network
in bfloat16 throughout). Each runs under torch.inference_mode(), warmed up, then profiled over
several batches; the categories add up the operators' self CPU time per batch, and "outside
operators" is the wall time no operator accounts for (Python, module calls, the profiler itself).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

import miniplaces_ext
from miniplaces_ext import cli, data, models

CATEGORIES = [  # (category, operator names), first match wins
    ("convolutions", ("miniplaces_ext::conv2d_forward", "miniplaces_ext::conv2d_fused", "aten::mkldnn_convolution",
                      "aten::convolution",
                      "aten::_convolution", "aten::conv2d")),
    ("BatchNorm", ("aten::native_batch_norm", "aten::batch_norm", "aten::_batch_norm_impl_index")),
    ("ReLU", ("aten::clamp_min_", "aten::clamp_min", "aten::relu_", "aten::relu")),
    ("residual add", ("aten::add", "aten::add_")),
    ("casts and layout copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone")),
    ("fc (GEMM)", ("aten::addmm", "aten::mm", "aten::linear")),
    ("pooling", ("aten::adaptive_avg_pool2d", "aten::mean", "aten::avg_pool2d", "aten::sum")),
]


def category(name: str) -> str:
    for label, names in CATEGORIES:
        if name in names:
            return label
    return "other operators"


def profile_path(fn, x: torch.Tensor, batches: int) -> dict[str, float]:
    """ms per batch by category, and the wall time."""
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(batches):
                fn(x)
            wall = (time.perf_counter() - start) / batches * 1e3
    out = {label: 0.0 for label, _ in CATEGORIES}
    out["other operators"] = 0.0
    for event in prof.key_averages():
        out[category(event.key)] += event.self_cpu_time_total / batches / 1e3
    out["outside operators"] = max(0.0, wall - sum(out.values()))
    out["wall"] = wall
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="profiled batches per path (default 5)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = models.load_checkpoint("resnet18", models.find_weights("resnet18")).eval()
    dataset = data.MiniplacesDataset(args.data_root, "val", limit=args.batch_size)
    x = torch.stack([dataset[i].image for i in range(args.batch_size)])

    def channels_last(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last)

    eager = copy.deepcopy(model).to(memory_format=torch.channels_last)
    swapped = miniplaces_ext.swap_convs(copy.deepcopy(model)).to(memory_format=torch.channels_last)

    def autocast(net):
        def run(t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(channels_last(t))
        return run

    paths = {
        ("float32", "torch eager"): lambda t: eager(channels_last(t)),
        ("float32", "ours, swap_convs"): lambda t: swapped(channels_last(t)),
        ("float32", "ours, optimize_for_inference"): miniplaces_ext.optimize_for_inference(model, torch.float32),
        ("bfloat16", "torch eager (autocast)"): autocast(eager),
        ("bfloat16", "ours, swap_convs (autocast)"): autocast(swapped),
        ("bfloat16", "ours, optimize_for_inference"): miniplaces_ext.optimize_for_inference(model, torch.bfloat16),
    }
    results = {f"{dtype}: {name}": profile_path(fn, x, args.batches) for (dtype, name), fn in paths.items()}
    labels = [label for label, _ in CATEGORIES] + ["other operators", "outside operators"]
    print(f"ResNet-18, batch {args.batch_size}, {cli.cpu_model()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; ms per batch (self CPU time under torch.profiler)\n")
    print("| path | wall | " + " | ".join(labels) + " |")
    print("|" + " --- |" * (len(labels) + 2))
    for name, r in results.items():
        print(f"| {name} | {r['wall']:.0f} | " + " | ".join(f"{r[k]:.1f}" for k in labels) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cli.cpu_model(), "threads": torch.get_num_threads(), "batch": args.batch_size,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
