"""Loads the compiled kernels (miniplaces_ext._C) into torch.ops.miniplaces_ext."""
from __future__ import annotations

import importlib.util

import torch

_BUILD_HINT = (
    "the compiled kernels (miniplaces_ext._C) were not found. Build them from the repository root with\n"
    "    pip install --no-build-isolation -e .\n"
    "(set CUDA_HOME=/usr/local/cuda and TORCH_CUDA_ARCH_LIST=9.0 to include the CUDA kernels)."
)


def load() -> str:
    """Loads the shared library once and returns its path; raises ImportError if it is not built."""
    spec = importlib.util.find_spec("miniplaces_ext._C")
    if spec is None or spec.origin is None:
        raise ImportError(_BUILD_HINT)
    torch.ops.load_library(spec.origin)
    return spec.origin


def cuda_kernels_built() -> bool:
    """True when the library holds CUDA kernels for our ops (a CUDA build), whether or not a GPU is present."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("miniplaces_ext::conv2d_forward", "CUDA")
