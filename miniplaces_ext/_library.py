"""Loads the compiled kernels (miniplaces_ext._C) into torch.ops.miniplaces_ext.

Before loading, the torch that runs is compared with the torch the library was
compiled against (miniplaces_ext/_build_info.py, written by setup.py): a
mismatch is one clear ImportError naming both versions and the fix, not an
undefined-symbol trace.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator, Optional

import torch
from torch.nn.modules.utils import _pair

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps -e ."


def _build_info():
    try:
        from miniplaces_ext import _build_info
    except ImportError:
        return None
    return _build_info


def load() -> str:
    """Loads the shared library once and returns its path; raises ImportError with the fix if it can't."""
    spec = importlib.util.find_spec("miniplaces_ext._C")
    info = _build_info()
    if spec is None or spec.origin is None or info is None:
        raise ImportError(
            "miniplaces_ext: the compiled kernels (miniplaces_ext._C) were not found. From the repository root run "
            "`pip install -e .` (or, to build against the torch already installed, "
            f"`{REBUILD}`)")
    if info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"miniplaces_ext was compiled against torch {info.TORCH_VERSION} but torch {torch.__version__} is "
            f"installed. Rebuild it against this torch: `{REBUILD}` in the repository (or reinstall the package), "
            f"or install torch=={info.TORCH_VERSION.split('+')[0]}.")
    try:
        torch.ops.load_library(spec.origin)
    except OSError as exc:
        raise ImportError(f"miniplaces_ext: cannot load {spec.origin}: {exc}. Rebuild it: `{REBUILD}`") from None
    return spec.origin


def cuda_kernels_built() -> bool:
    """True when the library holds CUDA kernels for our ops (a CUDA build), whether or not a GPU is present."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("miniplaces_ext::conv2d_forward", "CUDA")


def cpu_capabilities() -> dict[str, object]:
    """What the CPU kernels found and chose.

    ``{"detected": "avx2", "chosen": "avx2", "algo": "auto", "bf16": "auto", "avx512_bf16": "no",
    "amx_bf16": "no", "supported": ["portable", "avx2"]}``: the highest instruction-set level of
    this CPU, the level in use (the ``isa`` option of :func:`set_cpu_options`), the
    algorithm option, how bfloat16 direct layers multiply (the ``bf16`` option), whether the CPU has
    AVX512-BF16 and AMX-BF16 (with the tile state granted by the OS), and every level this CPU
    can run. Raises RuntimeError if a switch is invalid or asks for more than
    the CPU has.
    """
    fields = dict(item.split("=", 1) for item in torch.ops.miniplaces_ext.cpu_capabilities().split())
    return {**fields, "supported": fields["supported"].split(",")}


def cpu_conv_algorithm(input: torch.Tensor, weight: torch.Tensor, stride: int | tuple[int, int] = 1,
                       padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                       groups: int = 1, phase: str = "forward") -> str:
    """The algorithm our CPU forward pass runs for this 2-D convolution: ``"winograd"``,
    ``"direct"``, ``"direct-bf16"`` / ``"direct-bf16-tiles"`` (the direct kernel multiplying bfloat16
    pairs in vector registers / AMX tiles) or ``"gemm"``
    (im2col + GEMM; for 1x1 layers without padding a GEMM over the sampled pixels), as chosen
    by the options of :func:`set_cpu_options` and the CPU. Zero padding only (``padding`` as ints); tensors may be on the meta device.

    ``phase="forward"`` answers for an evaluation forward (under ``torch.inference_mode()`` or
    ``torch.no_grad()``, or with no input requiring grad), which keeps each packed weight for the
    next call; ``phase="training_forward"`` for a forward that autograd records, which packs its
    weight per call and so takes Winograd only where more output tiles repay the transform.

    ``phase="grad_weight"`` names what computes the weight gradient instead: ``"direct-bf16-tiles"``
    (bfloat16 on tiles), ``"direct"`` (our weight-gradient kernel) or ``"gemm"`` (im2col + GEMMs in
    fixed tiles); each gives the same bits on any thread count."""
    return torch.ops.miniplaces_ext.cpu_conv_algorithm(input, weight, _pair(stride), _pair(padding), _pair(dilation),
                                                       groups, phase)


def cpu_conv_plan(input: torch.Tensor, weight: torch.Tensor, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                  groups: int = 1, phase: str = "forward") -> dict[str, str]:
    """The whole plan our CPU side makes for one pass of this 2-D convolution (the arguments and
    phases of :func:`cpu_conv_algorithm`), decided once per call: ``pass``, ``algorithm``, ``isa``
    (the vector level), ``dtype``, ``unit`` (the bfloat16 unit: ``none``, ``pairs`` or ``tiles``,
    ``(native)`` or ``(emulated)``), ``input`` (``as_is``: read through its strides; ``widened``:
    bfloat16/float16 widened to float32; ``lowered``: few-channel receptive fields as rows;
    ``columns``: im2col), ``block`` (output channels per packed weight block), ``weight_cached``,
    ``epilogue``, and for the weight-gradient kernel ``vectors_over``.

    >>> miniplaces_ext.cpu_conv_plan(torch.empty(32, 64, 56, 56), torch.empty(64, 64, 3, 3), padding=1)["algorithm"]
    'winograd'
    """
    text = torch.ops.miniplaces_ext.cpu_conv_plan(input, weight, _pair(stride), _pair(padding), _pair(dilation),
                                                  groups, phase)
    return dict(item.split("=", 1) for item in text.split())


def clear_weight_cache() -> None:
    """Forgets the packed weights the CPU kernels keep between inference calls.

    Outside training (``torch.inference_mode()``, ``torch.no_grad()``, or no input requiring
    grad) each weight is packed for its kernel once and reused while the tensor lives and its
    version counter is unchanged, which every in-place op on it bumps. Changes made through
    ``.data`` bypass that counter: call this after them.
    """
    torch.ops.miniplaces_ext.clear_weight_cache()


def weight_cache_size() -> int:
    """How many packed weights the CPU kernels hold (see :func:`clear_weight_cache`)."""
    return torch.ops.miniplaces_ext.weight_cache_size()


_OPTION_NAMES = ("isa", "algo", "bf16", "column_bytes")


def get_cpu_options() -> dict[str, object]:
    """The CPU kernels' switches in force: ``{"isa": "avx2", "algo": "auto", "bf16": "auto",
    "column_bytes": 4194304}`` (see :func:`set_cpu_options`)."""
    fields = dict(item.split("=", 1) for item in torch.ops.miniplaces_ext.cpu_options().split())
    return {**fields, "column_bytes": int(fields["column_bytes"])}


def set_cpu_options(isa: Optional[str] = None, algo: Optional[str] = None, bf16: Optional[str] = None,
                    column_bytes: Optional[int] = None) -> dict[str, object]:
    """Sets the CPU kernels' switches for every later call and returns the previous ones.

    - ``isa``: ``"portable"``, ``"avx2"`` or ``"avx512"``, lowers the instruction-set level (a
      level this CPU lacks is an error);
    - ``algo``: ``"auto"``, ``"direct"``, ``"gemm"`` or ``"winograd"``, forces an algorithm where
      it applies;
    - ``bf16``: ``"auto"``, ``"pairs"``, ``"tiles"`` or ``"widen"``, how bfloat16 layers on the
      direct kernel multiply (``pairs``/``tiles`` run emulated where the CPU lacks the instructions);
    - ``column_bytes``: the cap on one im2col chunk of the GEMM path.

    ``None`` keeps an option as it is. Their defaults come from ``MINIPLACES_CPU_ISA``,
    ``MINIPLACES_CPU_ALGO``, ``MINIPLACES_CPU_BF16`` and ``MINIPLACES_CPU_COLUMN_BYTES``, read once
    at import; changing the environment later has no effect. Raises RuntimeError for a bad value.
    """
    previous = get_cpu_options()
    torch.ops.miniplaces_ext.set_cpu_options(isa, algo, bf16, column_bytes)
    return previous


@contextlib.contextmanager
def cpu_options(**options: object) -> Iterator[dict[str, object]]:
    """``with cpu_options(isa="avx2", algo="direct"):`` runs the block with those switches (see
    :func:`set_cpu_options`) and restores the previous ones after it."""
    unknown = set(options) - set(_OPTION_NAMES)
    if unknown:
        raise TypeError(f"cpu_options() got unknown options {sorted(unknown)}; use {', '.join(_OPTION_NAMES)}")
    previous = set_cpu_options(**options)  # type: ignore[arg-type]
    try:
        yield get_cpu_options()
    finally:
        set_cpu_options(**previous)  # type: ignore[arg-type]
