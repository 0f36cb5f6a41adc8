"""Train the course networks on Miniplaces (CPU or GPU; torchrun for several processes).

    python -m miniplaces_ext.train --arch alexnet --epochs 2 --amp bf16 --channels-last --out runs/alexnet
    python -m miniplaces_ext.train --arch resnet18 --image-size 64 --epochs 3 --out runs/r18-64
    python -m miniplaces_ext.train --arch resnet18 --image-size 128 --init runs/r18-64/resnet18.pt ...
    python -m miniplaces_ext.train --resume runs/alexnet          # continue where it stopped
    torchrun --nproc_per_node=2 -m miniplaces_ext.train --arch alexnet ...   # DDP (gloo on CPU, nccl on GPU)

Every epoch writes OUT/checkpoint.pt atomically (model, optimizer, scheduler,
scaler, RNG state, position), appends a JSON line to OUT/log.jsonl, redraws
OUT/curve.png and exports the best weights as OUT/<arch>.pt (a plain
state_dict the other commands load) with a model card OUT/<arch>.json.
Ctrl-C or SIGTERM finishes the current step, writes a resumable checkpoint
and exits 0. Data order and augmentation are functions of (seed, epoch,
image), so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from tqdm import tqdm

from miniplaces_ext import cli, data, evaluate, models
from miniplaces_ext import nn as ext_nn

log = logging.getLogger("miniplaces_ext.train")


# ---------------------------------------------------------------------------
# Data: deterministic augmentation and sharded epoch order


def random_resized_crop(image: Image.Image, size: int, scale: tuple[float, float], gen: torch.Generator
                        ) -> Image.Image:
    """A crop of random area fraction in `scale` and aspect ratio in [3/4, 4/3], resized to size x size."""
    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(1, generator=gen).item()
        ratio = math.exp(log_ratio)
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            return image.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.resize((size, size), Image.BILINEAR, box=box)


class TrainTransform:
    """Random-resized crop + horizontal flip + normalisation, seeded per (seed, epoch, image)."""

    def __init__(self, size: int, scale: tuple[float, float], seed: int):
        self.size, self.scale, self.seed, self.epoch = size, scale, seed, 0

    def __call__(self, image: Image.Image, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        image = random_resized_crop(image.convert("RGB"), self.size, self.scale, gen)
        if torch.rand(1, generator=gen).item() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return data.preprocess(image, self.size)


class EpochSampler(torch.utils.data.Sampler[int]):
    """The distributed sampler: a permutation fixed by (seed, epoch), rank r taking every world-th
    index (padded so all ranks see the same count), starting after `offset` of its own indices."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.offset = 0, 0

    def indices(self) -> list[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        per_rank = math.ceil(self.size / self.world)
        order += order[: per_rank * self.world - self.size]
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.offset:])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world) - self.offset


# ---------------------------------------------------------------------------
# Training state


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW; weight decay on conv/linear weights only."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)


def warmup_cosine(total_steps: int, warmup: int):
    """lr factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def plot_curve(history: list[dict], path: Path, title: str) -> None:
    """Training loss and validation accuracy per epoch, as a PNG."""
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    fig = cli.new_figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [100 * h["val_top1"] for h in history], "s-", color="tab:red", label="val top-1")
    ax2.plot(epochs, [100 * h["val_top5"] for h in history], "^--", color="tab:orange", label="val top-5")
    ax2.set_ylabel("val accuracy (%)", color="tab:red")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    cli.save_figure(fig, path)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops after the current step."""

    def __init__(self):
        self.raised = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.raised:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = True
        log.warning("signal %d: finishing this step, then writing a resumable checkpoint", signum)


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-5)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--image-size", type=int, default=128, help="training (and validation) image size")
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.3, 1.0), metavar=("MIN", "MAX"),
                        help="area range of the random-resized crop")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                        help="autocast dtype (bf16 works on CPU; fp16 needs CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--init", help="start from these weights (e.g. a 64 px run, to fine-tune at 128 px)")
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--val-limit", type=int, help="validate on the first N val images (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/train", help="output folder")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its arguments are reused)")
    parser.add_argument("--stop-after-epochs", type=int, metavar="K",
                        help="end this invocation after K more epochs (resume later with --resume); "
                             "for time-boxed jobs")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume:
        path = Path(args.resume) / "checkpoint.pt"
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            sys.exit(f"error: nothing to resume: {path} does not exist")
        except Exception as exc:  # truncated or corrupt: report, never use
            sys.exit(f"error: the checkpoint {path} is unreadable ({exc}); it was not used. Restore it or start "
                     f"a new run with --out.")
        saved = checkpoint["args"]
        saved.update(resume=args.resume, out=args.resume, no_progress=args.no_progress, workers=args.workers,
                     stop_after_epochs=args.stop_after_epochs)
        args = argparse.Namespace(**saved)
    else:
        checkpoint = None

    world, rank = cli.torchrun_env()
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local}"
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    device = cli.setup(args)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    if args.amp == "fp16" and device.type != "cuda":
        sys.exit("error: --amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    try:
        transform = TrainTransform(args.image_size, tuple(args.crop_scale), args.seed)
        train_set = data.MiniplacesDataset(args.data_root, "train", limit=args.limit, transform=transform)
        val_set = data.MiniplacesDataset(args.data_root, "val", limit=args.val_limit, size=args.image_size)
    except data.DataNotFoundError as exc:
        sys.exit(f"error: {exc}")

    model = models.build(args.arch)
    if args.init and not checkpoint:
        model.load_state_dict(models.load_checkpoint(args.arch, args.init).state_dict())
    if args.use_custom_conv:
        ext_nn.swap_convs(model)
    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    optimizer = build_optimizer(model, args)
    sampler = EpochSampler(len(train_set), args.seed, rank, world)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.epochs * steps_per_epoch,
                                                                           args.warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    start_epoch, offset, history, best = 0, 0, [], -1.0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        start_epoch, offset = checkpoint["epoch"], checkpoint["batch_in_epoch"]
        history, best = checkpoint["history"], checkpoint["best_top1"]
        log.info("resuming %s at epoch %d, batch %d", out, start_epoch + 1, offset)
    train_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    stop = StopFlag()
    stop.install()
    started = time.time()

    def save(epoch: int, batch_in_epoch: int) -> None:
        if rank == 0:
            cli.save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng": {"torch": torch.get_rng_state()}, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                         "history": history, "best_top1": best, "args": vars(args)}, out / "checkpoint.pt")

    last_epoch = args.epochs if not args.stop_after_epochs else min(args.epochs, start_epoch + args.stop_after_epochs)
    for epoch in range(start_epoch, last_epoch):
        transform.epoch = sampler.epoch = epoch
        sampler.offset = offset * args.batch_size
        loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers, collate_fn=data.collate)
        train_model.train()
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=offset, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=args.no_progress or rank != 0)
        step_in_epoch = offset
        for batch in loader:
            x = batch.images.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch.labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(train_model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step_in_epoch += 1
            loss_sum += loss.item() * len(y)
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
            if stop.raised:
                break
        bar.close()
        offset = 0
        if stop.raised:
            save(epoch, step_in_epoch)
            log.warning("stopped at epoch %d, batch %d; resume with --resume %s", epoch + 1, step_in_epoch, out)
            break
        train_seconds = time.perf_counter() - t0
        if rank == 0:
            res = evaluate.evaluate(model.eval(), val_set, 200, args.workers, device, progress=not args.no_progress)
            entry = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "val_top1": res["top1"],
                     "val_top5": res["top5"], "val_images": res["images"],
                     "images_per_s": seen * world / train_seconds, "lr": scheduler.get_last_lr()[0],
                     "epoch_seconds": train_seconds, "wall_seconds": time.time() - started}
            history.append(entry)
            print(json.dumps(entry), flush=True)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            plot_curve(history, out / "curve.png", f"{args.arch}, {args.image_size} px, {len(train_set)} images")
            if entry["val_top1"] > best:
                best = entry["val_top1"]
                export(model, args, entry, device, out, train_set.classes)
        save(epoch + 1, 0)
        if world > 1:
            dist.barrier()
    if world > 1:
        check_ranks_in_sync(model, world)
        dist.destroy_process_group()
    return 0


def check_ranks_in_sync(model: nn.Module, world: int) -> None:
    """Raises unless every rank holds bit-identical parameters (DDP's promise); logs it on rank 0."""
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])
    mine = torch.tensor([flat.sum().item(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum().item()])
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine.to(next(model.parameters()).device) if dist.get_backend() == "nccl" else mine)
    if any(not torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered):
        raise RuntimeError(f"parameters differ between ranks: {[g.tolist() for g in gathered]}")
    log.warning("parameters identical on %d ranks", world)


def export(model: nn.Module, args, entry: dict, device: torch.device, out: Path, classes: list[str]) -> None:
    """The weights as <arch>.pt ({"state_dict", "classes", "arch"}: torch conv modules' keys and the class
    names, so predict needs no data set) plus a model card <arch>.json."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cli.save_torch({"state_dict": state, "classes": classes, "arch": args.arch}, out / f"{args.arch}.pt")
    card = {"arch": args.arch, "data": {"train_images": args.limit or "all listed in train.txt",
                                        "val_images": entry["val_images"], "image_size": args.image_size},
            "recipe": {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "verbose")},
            "command": " ".join(sys.argv), "epoch": entry["epoch"], "wall_seconds": entry["wall_seconds"],
            "device": str(device), "host": platform.node(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "val_top1": entry["val_top1"], "val_top5": entry["val_top5"]}
    cli.write_json(out / f"{args.arch}.json", card)


if __name__ == "__main__":
    raise SystemExit(main())
