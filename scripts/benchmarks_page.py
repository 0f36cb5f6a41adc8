"""Writes docs/benchmarks.md, its charts and the README's benchmark summary from `bench --json` files.

    python scripts/benchmarks_page.py            # docs/bench/*.json -> docs/benchmarks.md, docs/img/bench_*.png,
                                                 # and the block between the README's benchmark markers
    python scripts/benchmarks_page.py --check    # exit 1 if the page or the README block is not what the
                                                 # JSON files give (tests/test_bench.py runs this)

Every figure on the page comes from a file in docs/bench/, written by
`python -m miniplaces_ext.bench ... --json docs/bench/NN-<label>.json`; nothing is copied by hand.
The files are listed in name order (oldest first); the README shows the newest with whole-network rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "docs" / "bench"
PAGE = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- benchmarks:begin (scripts/benchmarks_page.py) -->", "<!-- benchmarks:end -->"
TARGET = 1.10  # issue 25: no float32 layer above 1.10 of oneDNN's time in forward

MODEL_COLUMNS = [("torch", "torch eager"), ("torch_compile", "torch.compile (freezing)"),
                 ("torch_compile_autocast", "torch.compile (freezing), float32 net under bf16 autocast"),
                 ("ours", "ours (swap_convs)"), ("fused", "ours fused"), ("fused_compile", "ours fused, compiled")]


def load(paths: list[Path]) -> list[tuple[str, dict]]:
    """(file stem, report) for each bench JSON file, in name order."""
    return [(p.stem, json.loads(p.read_text())) for p in sorted(paths)]


def chart_path(stem: str) -> Path:
    return ROOT / "docs" / "img" / f"bench_{stem}.png"


def describe(report: dict) -> str:
    """One line naming where and when a report was measured."""
    cpu = report.get("cpu", {})
    isa = [cpu.get("detected", "?")] + [name for name in ("avx512_bf16", "amx_bf16") if cpu.get(name) == "yes"]
    peak = report.get("fma_peak_gflops")
    parts = [report.get("cpu_model", "unknown CPU"), "/".join(isa), f"{report.get('threads', '?')} threads",
             f"torch {report.get('torch', '?')}", f"measured {report.get('date') or 'date not recorded'}",
             f"commit {report.get('commit') or 'not recorded'}"]
    if peak:
        parts.append(f"float32 FMA peak {peak:.0f} GFLOP/s")
    # From run 06 on, bench calls reuse_freed_memory() for every path; before, glibc's defaults made
    # torch's eager calls on large activations pay page faults (allocator.py).
    parts.append("malloc: reuse_freed_memory()" if report.get("reuse_freed_memory") else "malloc: glibc defaults")
    return ", ".join(parts)


def totals_of(run: dict, net: str) -> dict | None:
    return next((t for t in run["totals"] if t["net"] == net), None)


def model_row(run: dict, net: str) -> dict | None:
    return next((m for m in run.get("models", []) if m["net"] == net), None)


def summary_rows(reports: list[tuple[str, dict]]) -> list[str]:
    """The history table: one row per report and dtype."""
    lines = ["| measurement | dtype | ResNet-18 geomean fwd / f+b | AlexNet geomean fwd / f+b | "
             f"fwd layers above {TARGET:.2f} | ResNet-18 eval img/s: torch eager / torch.compile / ours fused |",
             "| --- | --- | --- | --- | --- | --- |"]
    for stem, report in reports:
        for run in report["runs"]:
            cells = [f"[{stem}](#{stem})", f"{run['dtype']}, batch {run['batch']}"]
            for net in ("resnet18", "alexnet"):
                t = totals_of(run, net)
                cells.append(f"{t['fwd_geomean']:.2f} / {t['fwdbwd_geomean']:.2f}" if t else "–")
            above = sorted((r for r in run["layers"] if r["fwd_ratio"] > TARGET), key=lambda r: -r["fwd_ratio"])
            worst = ", ".join(f"{r['net']} {r['name']} {r['fwd_ratio']:.2f}" for r in above[:3])
            cells.append("none" if not above else worst if len(above) <= 3 else f"{len(above)}; worst {worst}")
            m = model_row(run, "resnet18")
            cells.append(" / ".join(f"{m[k + '_images_per_s']:.0f}" if k + "_images_per_s" in m else "–"
                                    for k in ("torch", "torch_compile", "fused")) if m else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def layer_table(run: dict, peak: float | None) -> list[str]:
    head = ["net", "layer", "×", "algorithm", "torch fwd ms", "ours fwd ms", "ratio", "torch f+b ms", "ours f+b ms",
            "ratio", "GFLOP/s torch", "GFLOP/s ours"]
    if peak:
        head += ["% peak torch", "% peak ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in run["layers"]:
        cells = [r["net"], r["name"], str(r["count"]), r.get("algo", ""), f"{r['torch_fwd_ms']:.2f}",
                 f"{r['ours_fwd_ms']:.2f}", f"**{r['fwd_ratio']:.2f}**" if r["fwd_ratio"] > TARGET else
                 f"{r['fwd_ratio']:.2f}", f"{r['torch_fwdbwd_ms']:.2f}", f"{r['ours_fwdbwd_ms']:.2f}",
                 f"{r['fwdbwd_ratio']:.2f}", f"{r['torch_fwd_gflops']:.0f}", f"{r['ours_fwd_gflops']:.0f}"]
        if peak:
            cells += [f"{100 * r['torch_fwd_gflops'] / peak:.0f} %", f"{100 * r['ours_fwd_gflops'] / peak:.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    for t in run["totals"]:
        line = (f"- {t['net']}: geomean of the layer ratios {t['fwd_geomean']:.2f} forward, "
                f"{t['fwdbwd_geomean']:.2f} forward+backward; all conv layers (weighted by count) "
                f"{t['fwd_ratio']:.2f} / {t['fwdbwd_ratio']:.2f}")
        lines.append(line)
    return lines


def models_table(run: dict) -> list[str]:
    present = [(k, label) for k, label in MODEL_COLUMNS if any(k + "_images_per_s" in m for m in run["models"])]
    lines = ["| network | " + " | ".join(label for _, label in present) + " |", "|" + " --- |" * (len(present) + 1)]
    for m in run["models"]:
        weights = f" ({m['weights']} weights)" if m.get("weights") else ""
        lines.append(f"| {m['net']}{weights} | " + " | ".join(f"{m[k + '_images_per_s']:.1f}" if k + "_images_per_s" in m
                                                       else "–" for k, _ in present) + " |")
    return lines


def page(reports: list[tuple[str, dict]]) -> str:
    """docs/benchmarks.md's text."""
    out = ["# Benchmarks", "",
           "Generated by `python scripts/benchmarks_page.py` from the `python -m miniplaces_ext.bench --json` files",
           "in [docs/bench/](bench/); do not edit by hand. Times are ours / torch's (oneDNN) in the same run,",
           "batch 32, 128×128 inputs, NCHW unless stated: a ratio below 1 means ours is faster. Whole-network rows",
           "are images/s of eval under `torch.inference_mode()`: torch's and swap_convs' networks get their images",
           "already in the run's dtype and channels_last; ours fused and the autocast column get float32 NCHW images",
           "and convert them themselves. To add a measurement, on a quiet machine (nothing else running):", "",
           "```bash",
           "python -m miniplaces_ext.bench --net all --dtype float32 bfloat16 --models --compile \\",
           "    --json docs/bench/NN-<date>-<label>.json",
           "python scripts/benchmarks_page.py",
           "```", "",
           "Figures from sessions before the JSON files were kept (AMD Zen 1, Zen 3 and Zen 4 VMs, November and",
           "early December 2026) are in the git history of README.md.", "",
           "## History", "", *summary_rows(reports), ""]
    for stem, report in reports:
        out += [f'<a id="{stem}"></a>', f"## {stem}", "", describe(report) + ".",
                *([f"_{report['note']}._"] if report.get("note") else []), ""]
        peak = report.get("fma_peak_gflops")
        for run in report["runs"]:
            layout = "channels_last" if report.get("channels_last") else "NCHW"
            out += [f"### {run['dtype']}, batch {run['batch']}, {layout}", "", *layer_table(run, peak), ""]
            if run.get("models"):
                out += ["Whole networks, images/s:", "", *models_table(run), ""]
        if chart_path(stem).exists():
            out += [f"![{stem}](img/{chart_path(stem).name})", ""]
    return "\n".join(out)


def readme_block(reports: list[tuple[str, dict]]) -> str:
    """The README's summary: the newest full measurement's (one with whole-network rows) geomeans and
    images/s."""
    full = [r for r in reports if any(run.get("models") for run in r[1]["runs"])]
    stem, report = (full or reports)[-1]
    lines = [BEGIN, f"Newest measurement ({describe(report)}):", "",
             "| dtype | ResNet-18 layers, geomean fwd / f+b | AlexNet layers | ResNet-18 eval img/s: "
             "torch eager / torch.compile / ours fused |", "| --- | --- | --- | --- |"]
    for run in report["runs"]:
        cells = [run["dtype"]]
        for net in ("resnet18", "alexnet"):
            t = totals_of(run, net)
            cells.append(f"{t['fwd_geomean']:.2f} / {t['fwdbwd_geomean']:.2f}" if t else "–")
        m = model_row(run, "resnet18")
        cells.append(" / ".join(f"{m[k + '_images_per_s']:.0f}" if k + "_images_per_s" in m else "–"
                                for k in ("torch", "torch_compile", "fused")) if m else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![benchmark chart](docs/img/{chart_path(stem).name})", END]
    return "\n".join(lines)


def with_readme_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing: exit 1 if the page or the README block is stale")
    args = parser.parse_args(argv)
    reports = load(list(BENCH_DIR.glob("*.json")))
    if not reports:
        raise SystemExit(f"no bench JSON files in {BENCH_DIR}")
    if args.check:
        text = page(reports) + "\n"
        readme = with_readme_block(README.read_text(), readme_block(reports))
        stale = [str(p.relative_to(ROOT)) for p, want in ((PAGE, text), (README, readme))
                 if not p.exists() or p.read_text() != want]
        stale += [str(chart_path(s).relative_to(ROOT)) for s, _ in reports if not chart_path(s).exists()]
        if stale:
            print("stale: " + ", ".join(stale) + " (run python scripts/benchmarks_page.py)", file=sys.stderr)
            return 1
        return 0
    from miniplaces_ext.bench import plot  # matplotlib and torch: only when writing

    for stem, report in reports:  # a chart is drawn once (its JSON never changes afterwards)
        if not chart_path(stem).exists():
            plot(report["runs"], str(chart_path(stem)), f"{stem}: {report.get('cpu_model', '')}, "
                                                        f"{report.get('threads', '?')} threads")
    PAGE.write_text(page(reports) + "\n")  # after the charts: the page links those that exist
    README.write_text(with_readme_block(README.read_text(), readme_block(reports)))
    print(f"wrote {PAGE.relative_to(ROOT)}, the README block and {len(reports)} charts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
