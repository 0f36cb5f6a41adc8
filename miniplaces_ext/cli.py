"""Arguments and set-up shared by every command: --arch, --weights, --data-root, --device,
--use-custom-conv, --json, --threads."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from miniplaces_ext import models, nn as ext_nn


def add_common_args(parser: argparse.ArgumentParser, archs: tuple[str, ...] = models.ARCHS) -> None:
    """Adds the options every workflow command shares."""
    parser.add_argument("--arch", default="resnet18", choices=archs, help="network (default: resnet18)")
    parser.add_argument("--weights", help="checkpoint file (default: $MINIPLACES_WEIGHTS/<arch>.pt, "
                                          "else models/<arch>.pt)")
    parser.add_argument("--data-root", help="Miniplaces folder (default: $MINIPLACES_ROOT, else ./data/miniplaces)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--use-custom-conv", action="store_true",
                        help="run every convolution on miniplaces_ext's kernels (default: torch's)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def setup(args: argparse.Namespace) -> torch.device:
    """Logging, threads and the device; exits with a message for an unusable device."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but no CUDA GPU is available")
    return device


def torchrun_env() -> tuple[int, int]:
    """(world size, rank) as torchrun sets them; (1, 0) for a plain single process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def load_model(arch: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The network with its weights, in eval mode, on `device`, channels_last, convs swapped if asked."""
    try:
        model = models.load_checkpoint(arch, models.find_weights(arch, args.weights))
    except (FileNotFoundError, models.CheckpointError) as exc:
        sys.exit(f"error: {exc}")
    if args.use_custom_conv:
        ext_nn.swap_convs(model)
    return model.to(device, memory_format=torch.channels_last).eval()


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Calls write(tmp) on a temp file beside `path`, then renames it over `path`.

    Readers see the old complete file or the new complete one, never a partial
    one; on any error (or Ctrl-C) the temp file is removed. The file gets the
    usual permissions (0666 & ~umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Writes JSON atomically; '-' prints it."""
    text = json.dumps(payload, indent=2)
    if str(path) == "-":
        print(text)
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def save_image(image, path: str | Path) -> None:
    """Saves a PIL image atomically; the format follows the extension (PNG by default)."""
    suffix = Path(path).suffix or ".png"
    atomic_write(path, lambda tmp: image.save(tmp), suffix=suffix)


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), suffix=".png")
    finally:
        plt.close(fig)
