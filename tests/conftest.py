"""Shared test helpers: devices, seeded tensors, the real-data location."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import miniplaces_ext

# torch 2.14.1's oneDNN (mkldnn) conv path corrupts its primitive cache on this
# machine: a process that ran some of its channels_last/strided convs dies with
# SIGSEGV in dnnl's primitive_cache_t destructor at exit (reproduced without
# importing miniplaces_ext). The tests only need torch as a reference, so they
# use its native conv kernels; the benchmark still measures oneDNN.
torch.backends.mkldnn.enabled = False

REPO = Path(__file__).resolve().parents[1]


def miniplaces_root() -> Path:
    """$MINIPLACES_ROOT, else ../shared/miniplaces beside the repository."""
    return Path(os.environ.get("MINIPLACES_ROOT", REPO.parent / "shared" / "miniplaces"))


def has_gpu() -> bool:
    """A CUDA device and a build with our CUDA kernels."""
    return torch.cuda.is_available() and miniplaces_ext.cuda_kernels_built()


def _gpu_skip_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return "this build has no CUDA kernels (rebuild with FORCE_CUDA=1)"


requires_gpu = pytest.mark.skipif(not has_gpu(), reason=_gpu_skip_reason())
requires_data = pytest.mark.skipif(not (miniplaces_root() / "val.txt").exists(),
                                   reason=f"Miniplaces data not found at {miniplaces_root()}")

# Devices to run device-generic tests on: CPU always, CUDA when usable.
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_gpu, pytest.mark.cuda])]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and a CUDA build (skips otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
