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
from typing import Any

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


def load_model(arch: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The network with its weights, in eval mode, on `device`, channels_last, convs swapped if asked."""
    try:
        model = models.load_checkpoint(arch, models.find_weights(arch, args.weights))
    except (FileNotFoundError, models.CheckpointError) as exc:
        sys.exit(f"error: {exc}")
    if args.use_custom_conv:
        ext_nn.swap_convs(model)
    return model.to(device, memory_format=torch.channels_last).eval()


def write_json(path: str | Path, payload: Any) -> None:
    """Writes JSON atomically (temp file + rename); '-' prints it."""
    text = json.dumps(payload, indent=2)
    if str(path) == "-":
        print(text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text + "\n")
    try:
        os.replace(f.name, path)
    except BaseException:
        Path(f.name).unlink(missing_ok=True)
        raise


def save_image(image, path: str | Path) -> None:
    """Saves a PIL image atomically (temp file + rename); the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix or ".png")
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
