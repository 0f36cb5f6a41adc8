"""Builds and loads the CUDA-on-CPU harness (testing/cuda_on_cpu), a test-only extension.

The harness compiles our CUDA kernels' source (csrc/cuda/*.cuh) as host C++ and runs it thread
by thread; it is not part of the shipped ``miniplaces_ext._C`` (``pip install .`` never builds
it). The first call compiles it with torch's JIT extension builder into ``build/cuda_on_cpu``
(about a minute on 2 cores; later sessions reuse the build until a source changes), loads it and
returns ``torch.ops.cuda_on_cpu``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

ROOT = Path(__file__).resolve().parents[1]


def load_harness() -> torch._ops._OpNamespace:
    """Compile (if needed) and load the harness; return its op namespace ``torch.ops.cuda_on_cpu``."""
    if not hasattr(load_harness, "_loaded"):
        sources = sorted(str(p) for p in (ROOT / "testing" / "cuda_on_cpu").glob("*.cpp"))
        sources.append(str(ROOT / "csrc" / "conv_geometry.cpp"))  # argument checks and output size
        build = ROOT / "build" / "cuda_on_cpu"
        build.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
        # ninja comes with the test requirements into the venv's bin/, which is not on PATH when
        # the venv's python runs without `activate`.
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        load(name="cuda_on_cpu_harness", sources=sources, extra_include_paths=[str(ROOT / "csrc")],
             extra_cflags=["-O3", "-std=c++20"], build_directory=str(build), is_python_module=False,
             verbose=False)
        load_harness._loaded = True
    return torch.ops.cuda_on_cpu
