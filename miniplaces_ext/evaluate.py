"""Top-1/top-5 accuracy of the course networks on a Miniplaces split.

    python -m miniplaces_ext.evaluate --use-custom-conv                 # ResNet-18, full val set
    python -m miniplaces_ext.evaluate --arch all --limit 500 --json results.json
    python -m miniplaces_ext.evaluate --use-custom-conv --compare-native --confusion confusion.png
    python -m miniplaces_ext.evaluate --split test --submission submission.txt   # challenge file (kit format)
    python -m miniplaces_ext.evaluate --use-custom-conv --dtype bfloat16 --compare-native   # bf16, vs torch
    torchrun --nproc_per_node=2 -m miniplaces_ext.evaluate --use-custom-conv     # split sharded over 2 processes

Batched, with parallel decoding, a progress bar and images/s. With
--use-custom-conv every convolution runs on miniplaces_ext's kernels, in the network
miniplaces_ext.optimize_for_inference prepares (BatchNorm folded, ReLU and residual
adds in our kernels' epilogue, weights channels_last in --dtype); --no-fuse runs the
network as swap_convs leaves it instead. --compare-native also runs torch's eager
float32 network on the same batches and reports how often the predictions agree and
the largest logit difference. --submission writes
every image's top-5 class ids in the development kit's format (submission.py); on
the test split (unlabelled) that is all it reports.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import time

import torch
import torch._inductor.config as inductor_config
import torch.distributed as dist
from tqdm import tqdm

from miniplaces_ext import cli, data, models, nn as ext_nn, report as html_report, submission

log = logging.getLogger("miniplaces_ext.evaluate")


def evaluate(model: torch.nn.Module, dataset: data.MiniplacesDataset, batch_size: int, workers: int,
             device: torch.device, native: torch.nn.Module | None = None, progress: bool = True,
             rank: int = 0, world: int = 1) -> dict:
    """Runs `model` over `dataset`; returns accuracies (None on an unlabelled split), timings,
    per-class counts, the confusion matrix, every image's top-5 class ids ("top5_ids", by index) and
    top-1 softmax probability ("confidence"); with `native`, torch's convs' accuracy and agreement.

    With world > 1 (torch.distributed initialised) each rank takes every world-th
    image and the counts are summed over ranks, so every rank returns the totals.
    """
    classes = len(dataset.classes)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    top5_hits = 0
    seen = 0
    native_top1 = native_top5 = 0
    top5_ids: dict[int, list[int]] = {}
    confidence: dict[int, float] = {}
    skipped: list[int] = []
    agree = 0
    max_delta = 0.0
    start = time.perf_counter()
    shard = list(range(rank, len(dataset), world))
    bar = tqdm(total=len(shard), unit="img", disable=not progress or rank != 0, desc=type(model).__name__)
    with torch.inference_mode():
        for batch in data.loader(dataset, batch_size, workers, sampler=shard if world > 1 else None):
            skipped += batch.skipped
            bar.update(len(batch.labels) + len(batch.skipped))
            if len(batch.labels) == 0:
                continue
            x = batch.images.to(device, memory_format=torch.channels_last)
            logits = model(x).float().cpu()
            top5 = logits.topk(5, dim=1).indices
            top5_ids.update(zip(batch.indices.tolist(), top5.tolist()))
            confidence.update(zip(batch.indices.tolist(), logits.softmax(1).amax(1).tolist()))
            labelled = batch.labels >= 0  # the test split has no labels
            labels, top5_labelled = batch.labels[labelled], top5[labelled]
            confusion.index_put_((labels, top5_labelled[:, 0]), torch.ones_like(labels), accumulate=True)
            top5_hits += (top5_labelled == labels[:, None]).any(1).sum().item()
            seen += len(labels)
            if native is not None:
                ref = native(x).float().cpu()
                agree += (ref.argmax(1) == top5[:, 0]).sum().item()
                ref5 = ref[labelled].topk(5, dim=1).indices
                native_top1 += (ref5[:, 0] == labels).sum().item()
                native_top5 += (ref5 == labels[:, None]).any(1).sum().item()
                max_delta = max(max_delta, (ref - logits).abs().max().item())
            if seen:
                bar.set_postfix(top1=f"{confusion.diag().sum().item() / seen:.2%}", top5=f"{top5_hits / seen:.2%}")
    bar.close()
    if world > 1:
        counts = torch.tensor([top5_hits, seen, agree, native_top1, native_top5], dtype=torch.float64)
        dist.all_reduce(confusion)
        dist.all_reduce(counts)
        gathered: list[list[int]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, skipped)
        skipped = sorted(i for part in gathered for i in part)
        parts: list[tuple[dict, dict]] = [({}, {}) for _ in range(world)]
        dist.all_gather_object(parts, (top5_ids, confidence))
        top5_ids = {i: ids for part in parts for i, ids in part[0].items()}
        confidence = {i: c for part in parts for i, c in part[1].items()}
        top5_hits, seen, agree, native_top1, native_top5 = (int(v) for v in counts.tolist())
        delta = torch.tensor([max_delta], dtype=torch.float64)
        dist.all_reduce(delta, op=dist.ReduceOp.MAX)
        max_delta = delta.item()
    seconds = time.perf_counter() - start
    processed = len(top5_ids)
    result = {
        "images": processed,
        "skipped": len(skipped),
        "skipped_files": [str(dataset.path(i)) for i in skipped],
        "top1": confusion.diag().sum().item() / seen if seen else None,
        "top5": top5_hits / seen if seen else None,
        "seconds": seconds,
        "images_per_second": processed / seconds if seconds else 0.0,
        "per_class_top1": {name: (confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else None
                           for i, name in enumerate(dataset.classes)},
        "confusion": confusion,
        "top5_ids": top5_ids,
        "confidence": confidence,
    }
    if native is not None:
        result["agreement_with_native"] = agree / max(processed, 1)
        result["max_abs_logit_difference"] = max_delta
        result["native_top1"] = native_top1 / seen if seen else None
        result["native_top5"] = native_top5 / seen if seen else None
    return result


def confusion_figure(confusion: torch.Tensor, classes: list[str], title: str):
    """The row-normalised confusion matrix as a matplotlib Figure."""
    norm = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig = cli.new_figure(figsize=(14, 13))
    ax = fig.subplots()
    im = ax.imshow(norm.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=5)
    ax.set_yticks(range(len(classes)), classes, fontsize=5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, fraction=0.03)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: torch.Tensor, classes: list[str], title: str, path: str) -> None:
    """Writes the row-normalised confusion matrix as a PNG."""
    cli.save_figure(confusion_figure(confusion, classes, title), path, dpi=150)


def summary_table(results: dict[str, dict], convs: str) -> str:
    """The networks' results as one table: network, convolutions, images, top-1, top-5, img/s."""
    lines = [f"{'network':10s} {'convs':7s} {'images':>7s} {'top-1':>7s} {'top-5':>7s} {'img/s':>7s}"]
    for arch, res in results.items():
        top1 = f"{res['top1']:.2%}" if res["top1"] is not None else "-"
        top5 = f"{res['top5']:.2%}" if res["top5"] is not None else "-"
        lines.append(f"{arch:10s} {convs:7s} {res['images']:7d} {top1:>7s} {top5:>7s} "
                     f"{res['images_per_second']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common_args(parser, archs=(*models.ARCHS, "all"))
    parser.add_argument("--split", default="val", choices=["val", "train", "test"],
                        help="split (default: val); test is unlabelled: use it with --submission")
    parser.add_argument("--batch-size", type=cli.positive_int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default: 2)")
    parser.add_argument("--limit", type=cli.positive_int, help="evaluate only the first N images")
    parser.add_argument("--compare-native", action="store_true",
                        help="also run torch's convs; report prediction agreement and max |delta logit|")
    cli.add_json_arg(parser)
    parser.add_argument("--per-class", action="store_true", help="print per-class top-1 accuracy")
    parser.add_argument("--confusion", metavar="PNG", help="write a confusion-matrix picture (one per arch)")
    parser.add_argument("--report", metavar="HTML",
                        help="write one self-contained HTML page: accuracy, per class, confusion, calibration "
                             "(one per arch)")
    parser.add_argument("--submission", metavar="TXT",
                        help="write every image's top-5 class ids in the challenge kit's format (one per arch)")
    cli.add_inference_args(parser)
    parser.add_argument("--compile", action="store_true",
                        help="run the network under torch.compile with inductor's freezing (what a user picks for "
                             "speed with torch's convolutions; compiles on the first batch)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cli.check_inference_args(parser, args)
    if args.split == "test" and not args.submission:
        parser.error("the test split has no labels: add --submission FILE to write the challenge file")
    if args.split == "test" and (args.confusion or args.per_class or args.report):
        parser.error("the test split has no labels: --confusion, --per-class and --report need val or train")
    if args.submission and args.limit:
        parser.error("--submission covers the whole split: drop --limit")
    if args.compare_native and not args.use_custom_conv:
        parser.error("--compare-native compares our kernels with torch's: add --use-custom-conv")
    world, rank = cli.torchrun_env()
    if world > 1:
        dist.init_process_group("gloo")
    device = cli.setup(args)
    try:
        dataset = data.MiniplacesDataset(args.data_root, args.split, limit=args.limit)
    except data.DataNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    if len(dataset) == 0:
        parser.exit(2, f"error: no {args.split} images under {dataset.root / 'images' / args.split}\n")

    say = cli.table_printer(args)
    fused = cli.runs_fused(args)
    report = {"split": args.split, "custom_conv": args.use_custom_conv, "fused": fused, "dtype": args.dtype,
              "compiled": args.compile, "device": str(device), "results": {}}
    for arch in models.ARCHS if args.arch == "all" else (args.arch,):
        model = cli.load_model(arch, args, device)
        native = ext_nn.restore_convs(copy.deepcopy(model)) if args.compare_native else None
        model = cli.inference_network(model, args)
        if args.compile:
            model = torch.compile(model)
        with inductor_config.patch(freezing=True) if args.compile else contextlib.nullcontext():
            res = evaluate(model, dataset, args.batch_size, args.workers, device, native, not args.no_progress,
                           rank, world)
        confusion = res.pop("confusion")
        top5_ids = res.pop("top5_ids")
        confidence = res.pop("confidence")
        if rank != 0:
            continue
        kind = (f"our convs, fused, {args.dtype}" if fused else "our convs") if args.use_custom_conv else "torch convs"
        kind += ", torch.compile (freezing)" if args.compile else ""
        accuracy = f"top-1 {res['top1']:.2%}  top-5 {res['top5']:.2%}  " if res["top1"] is not None else ""
        say(f"{arch} ({kind}) on {res['images']} {args.split} images: {accuracy}"
            f"{res['images_per_second']:.1f} img/s  {res['seconds']:.1f} s"
            + (f"  ({res['skipped']} unreadable files skipped)" if res["skipped"] else ""))
        if args.submission:
            if res["skipped"]:
                parser.exit(1, f"error: no submission written: {res['skipped']} unreadable images, e.g. "
                               f"{res['skipped_files'][0]}\n")
            path = args.submission if args.arch != "all" else args.submission.replace(".txt", f"_{arch}.txt")
            submission.write(path, {dataset.items[i][0]: ids for i, ids in top5_ids.items()})
            say(f"  submission ({len(top5_ids)} images, kit format): {path}")
        if native is not None:
            say(f"  vs torch convs: top-1 agreement {res['agreement_with_native']:.2%}, "
                  f"max |delta logit| {res['max_abs_logit_difference']:.2e}")
        if args.per_class:
            for name, acc in sorted(res["per_class_top1"].items(), key=lambda kv: -(kv[1] or 0)):
                say(f"  {name:30s} {acc:.1%}" if acc is not None else f"  {name:30s} -")
        if args.confusion:
            path = args.confusion if args.arch != "all" else args.confusion.replace(".png", f"_{arch}.png")
            plot_confusion(confusion, dataset.classes, f"{arch} ({kind}), top-1 {res['top1']:.2%}", path)
            say(f"  confusion matrix: {path}")
        if args.report:
            path = args.report.replace(".html", f"_{arch}.html") if args.arch == "all" else args.report
            html_report.write_report(
                path, title=f"Miniplaces {args.split}: {arch} ({kind})", result=res, confusion=confusion,
                confusion_fig=confusion_figure(confusion, dataset.classes, f"{arch} ({kind})"),
                classes=dataset.classes, labels={i: label for i, (_, label) in enumerate(dataset.items)},
                image_paths={i: dataset.path(i) for i in top5_ids}, top5_ids=top5_ids, confidence=confidence,
                settings={"arch": arch, "weights": str(models.find_weights(arch, args.weights)),
                          "convolutions": kind, "split": args.split, "images": res["images"],
                          "skipped (unreadable)": res["skipped"], "data root": str(dataset.root),
                          "device": str(device), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "cpu": cli.cpu_model(),
                          "command": "python -m miniplaces_ext.evaluate " + " ".join(argv or sys.argv[1:]),
                          "date": time.strftime("%Y-%m-%d %H:%M")})
            say(f"  report: {path}")
        report["results"][arch] = res
    if args.arch == "all" and rank == 0:
        say(summary_table(report["results"], "custom" if args.use_custom_conv else "torch"))
    if args.json and rank == 0:
        cli.write_json(args.json, report)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
