"""The benchmark CLI runs end to end and reports ratios for every layer and network."""
from __future__ import annotations

import json

import torch

import miniplaces_ext
from miniplaces_ext import bench


def test_bench_smoke(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert bench.main(["--net", "alexnet", "--batch-size", "2", "--min-time", "0", "--models", "--json",
                       str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert [r["name"] for r in run["layers"]] == [l.name for l in bench.LAYERS if l.net == "alexnet"]
    assert all(r["fwd_ratio"] > 0 and r["fwdbwd_ratio"] > 0 for r in run["layers"])
    assert {m["net"] for m in run["models"]} == {"resnet18", "alexnet"}
    assert all(m["fused_images_per_s"] > 0 for m in run["models"])  # optimize_for_inference's network
    assert [r["algo"] for r in run["layers"]] == [
        miniplaces_ext.cpu_conv_algorithm(torch.empty(2, l.in_channels, l.size, l.size, device="meta"),
                                          torch.empty(l.out_channels, l.in_channels, l.kernel, l.kernel, device="meta"),
                                          l.stride, l.padding)
        for l in bench.LAYERS if l.net == "alexnet"]
    assert report["fma_peak_gflops"] > 0
    assert all(0 < r["ours_fwd_gflops"] for r in run["layers"])
    printed = capsys.readouterr().out
    assert "3x3 layers ratio" in printed and "geomean of layer ratios" in printed and "FMA peak" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_algorithm_choice_is_reported():
    """cpu_conv_algorithm names what the dispatcher runs; forcing a switch changes the answer."""
    x, w = torch.empty(32, 64, 32, 32, device="meta"), torch.empty(64, 64, 3, 3, device="meta")
    level = miniplaces_ext.cpu_capabilities()["chosen"]
    assert miniplaces_ext.cpu_conv_algorithm(x, w, 1, 1) == ("gemm" if level == "portable" else "winograd")
    assert miniplaces_ext.cpu_conv_algorithm(x, w, 2, 1) == ("gemm" if level == "portable" else "direct")
    assert miniplaces_ext.cpu_conv_algorithm(x.double(), w.double(), 1, 1) == "gemm"


def test_bench_runs_each_dtype(tmp_path):
    """--dtype takes several dtypes, one run each; each layer reports the algorithm the dispatcher
    runs for that dtype (cpu_conv_algorithm: float32's choice, or a bfloat16 kernel such as
    "direct-bf16" / "direct-bf16-tiles" where the CPU multiplies bfloat16 natively)."""
    out = tmp_path / "bench.json"
    assert bench.main(["--net", "alexnet", "--batch-size", "1", "--min-time", "0", "--no-peak",
                       "--dtype", "float32", "bfloat16", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["dtype"] for r in runs] == ["float32", "bfloat16"]
    layers = [layer for layer in bench.LAYERS if layer.net == "alexnet"]
    for run in runs:
        dtype = getattr(torch, run["dtype"])
        expected = [miniplaces_ext.cpu_conv_algorithm(
            torch.empty(1, layer.in_channels, layer.size, layer.size, device="meta", dtype=dtype),
            torch.empty(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel, device="meta", dtype=dtype),
            layer.stride, layer.padding) for layer in layers]
        assert [r["algo"] for r in run["layers"]] == expected, run["dtype"]
    assert all(r["fwd_ratio"] > 0 and r["fwdbwd_ratio"] > 0 for run in runs for r in run["layers"])


def test_benchmarks_page_is_generated_from_the_json():
    """docs/benchmarks.md and the README's benchmark block are what scripts/benchmarks_page.py
    makes of docs/bench/*.json: no figure there is copied by hand, and none goes stale."""
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmarks_page.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
