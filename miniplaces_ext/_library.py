"""Loads the compiled kernels (miniplaces_ext._C) into torch.ops.miniplaces_ext.

Before loading, the torch that runs is compared with the torch the library was
compiled against (miniplaces_ext/_build_info.py, written by setup.py): a
mismatch is one clear ImportError naming both versions and the fix, not an
undefined-symbol trace.
"""
from __future__ import annotations

import importlib.util

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
    this CPU, the level in use (lowered by ``MINIPLACES_CPU_ISA=portable|avx2|avx512``), the
    algorithm switch (``MINIPLACES_CPU_ALGO=auto|direct|gemm|winograd``), how bfloat16 direct
    layers multiply (``MINIPLACES_CPU_BF16=auto|pairs|tiles|widen``), whether the CPU has
    AVX512-BF16 and AMX-BF16 (with the tile state granted by the OS), and every level this CPU
    can run. Raises RuntimeError if a switch is invalid or asks for more than
    the CPU has.
    """
    fields = dict(item.split("=", 1) for item in torch.ops.miniplaces_ext.cpu_capabilities().split())
    return {**fields, "supported": fields["supported"].split(",")}


def cpu_conv_algorithm(input: torch.Tensor, weight: torch.Tensor, stride: int | tuple[int, int] = 1,
                       padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                       groups: int = 1) -> str:
    """The algorithm our CPU forward pass runs for this 2-D convolution: ``"winograd"``,
    ``"direct"``, ``"direct-bf16"`` / ``"direct-bf16-tiles"`` (the direct kernel multiplying bfloat16
    pairs in vector registers / AMX tiles) or ``"gemm"``
    (im2col + GEMM; for 1x1 layers without padding a GEMM over the sampled pixels), as chosen
    by ``MINIPLACES_CPU_ALGO``, ``MINIPLACES_CPU_BF16`` and the ISA level. Zero padding only (``padding`` as ints); tensors may be on the meta device."""
    return torch.ops.miniplaces_ext.cpu_conv_algorithm(input, weight, _pair(stride), _pair(padding), _pair(dilation),
                                                       groups)


def clear_weight_cache() -> None:
    """Forgets the packed weights the CPU kernels keep between inference calls.

    Under ``torch.inference_mode()`` each weight is packed for its kernel once and reused
    while the tensor lives and its version counter is unchanged, which every in-place op
    on it bumps. Changes made through ``.data`` bypass that counter: call this after them.
    """
    torch.ops.miniplaces_ext.clear_weight_cache()


def weight_cache_size() -> int:
    """How many packed weights the CPU kernels hold (see :func:`clear_weight_cache`)."""
    return torch.ops.miniplaces_ext.weight_cache_size()
