"""Arguments and set-up shared by the commands: --arch, --weights, --data-root (where the
command reads the data set), --device, --use-custom-conv, --threads, and --json [PATH]
(JSON to PATH, or to stdout when PATH is omitted or '-')."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from miniplaces_ext import _library as ext_library, models, nn as ext_nn
from miniplaces_ext.allocator import reuse_freed_memory


def add_common_args(parser: argparse.ArgumentParser, archs: tuple[str, ...] = models.ARCHS,
                    data_root: bool = True) -> None:
    """Adds the options the model commands share; --data-root only where the command reads the data set."""
    parser.add_argument("--arch", default="resnet18", choices=archs, help="network (default: resnet18)")
    parser.add_argument("--weights", help="checkpoint file (default: $MINIPLACES_WEIGHTS/<arch>.pt, "
                                          "else models/<arch>.pt)")
    if data_root:
        parser.add_argument("--data-root",
                            help="Miniplaces folder (default: $MINIPLACES_ROOT, else ./data/miniplaces)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--use-custom-conv", action="store_true",
                        help="run every convolution on miniplaces_ext's kernels (default: torch's)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_json_arg(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    """--json [PATH]: the one meaning every command gives it."""
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help=f"write {what} as JSON to PATH, or to stdout (instead of the table) when PATH is "
                             f"omitted or '-'; put it after positional arguments")


def table_printer(args: argparse.Namespace) -> Callable[..., None]:
    """print for the human-readable lines: to stderr when --json sends JSON to stdout."""
    stream = sys.stderr if getattr(args, "json", None) == "-" else sys.stdout
    return lambda *values, **kwargs: print(*values, file=stream, **kwargs)


def setup(args: argparse.Namespace) -> torch.device:
    """Logging, threads and the device; exits with a message for an unusable device.

    Under torchrun, a bare ``--device cuda`` means this process's GPU, cuda:$LOCAL_RANK.
    """
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()  # no page faults on each batch's activations (allocator.py)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but no CUDA GPU is available")
    if device.type == "cuda" and getattr(args, "use_custom_conv", False) and not ext_library.cuda_kernels_built():
        sys.exit("error: --device cuda --use-custom-conv, but this build of miniplaces_ext has no CUDA kernels "
                 "(rebuild with a CUDA toolkit: FORCE_CUDA=1 pip install --no-build-isolation -e .)")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def torchrun_env() -> tuple[int, int]:
    """(world size, rank) as torchrun sets them; (1, 0) for a plain single process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """--no-fuse and --dtype: how --use-custom-conv runs a network for inference (inference_network)."""
    parser.add_argument("--no-fuse", action="store_true",
                        help="with --use-custom-conv: run the network as swap_convs leaves it (BatchNorm, ReLU and "
                             "residual adds as separate passes) instead of optimize_for_inference's fused network")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the fused network's weights and activations (default float32; bfloat16 needs "
                             "--use-custom-conv without --no-fuse)")


def runs_fused(args: argparse.Namespace) -> bool:
    """Whether the command runs optimize_for_inference's fused network: --use-custom-conv without --no-fuse."""
    return getattr(args, "use_custom_conv", False) and not getattr(args, "no_fuse", True)


def check_inference_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One clear error for a --dtype that nothing would run in."""
    if args.dtype != "float32" and not runs_fused(args):
        parser.error("--dtype bfloat16 runs our fused network: add --use-custom-conv (and drop --no-fuse)")


def inference_network(model: nn.Module, args: argparse.Namespace, method: str = "forward") -> Callable[..., Tensor]:
    """What a command runs for inference: with --use-custom-conv, optimize_for_inference's fused
    network of `method` (BatchNorm folded, ReLU and residual adds in our kernels' epilogue, --dtype)
    unless --no-fuse; else the model's own `method`."""
    if runs_fused(args):
        from miniplaces_ext.inference import optimize_for_inference

        return optimize_for_inference(model, getattr(torch, args.dtype), method=method)
    return getattr(model, method)


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
    """Calls write(tmp) on a new temp file beside `path`, flushes it to disk, then renames it over `path`.

    Readers see the old complete file or the new complete one, never a partial
    one, even after a power loss (file and folder are fsynced); on any error (or
    Ctrl-C) the temp file is removed. The temp file is created with mode 0666,
    so the kernel applies the process umask: the usual permissions, without
    touching the process-global umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


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


def new_figure(**kwargs):
    """A matplotlib Figure drawn without pyplot: no global backend is chosen or changed."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Saves a matplotlib figure (from new_figure) as PNG atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), suffix=".png")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo with its family and model numbers (which tell apart
    CPUs that share a name, e.g. "Intel(R) Xeon(R) Processor (family 6 model 167)"), or the
    platform's processor string."""
    fields: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    return f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def git_commit() -> str | None:
    """The checkout's commit (`git describe --always --dirty`) when the package runs from a git
    checkout, else None."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


