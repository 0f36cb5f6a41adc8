"""Whether the compiled miniplaces_ext._C is current, so that scripts/setup.sh can skip a rebuild.

A build is current when it was compiled (setup.py records this in _build_info.py after
build_ext succeeds) from the same sources and build switches, for the torch installed now, with
the CUDA kernels if FORCE_CUDA=1 asks for them (and without if FORCE_CUDA=0)::

    python miniplaces_ext/_build_stamp.py   # exit 0: current; exit 1: one line saying why not

Dependency-free: setup.py loads this file before torch is imported.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Environment variables that change the compiled code (see setup.py).
SWITCHES = ("TORCH_CUDA_ARCH_LIST", "MINIPLACES_DEBUG", "MINIPLACES_SANITIZE")


def source_fingerprint() -> str:
    """SHA-256 of setup.py, every file under csrc/ and the build switches in the environment."""
    digest = hashlib.sha256()
    for path in [ROOT / "setup.py", *sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file())]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for name in SWITCHES:
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()


def why_stale() -> str | None:
    """None when the built extension is current; otherwise why it must be rebuilt."""
    info_path = ROOT / "miniplaces_ext" / "_build_info.py"
    if not info_path.is_file():
        return "not built yet"
    info: dict = {}
    exec(info_path.read_text(), info)
    if not list((ROOT / "miniplaces_ext").glob("_C*.so")):
        return "no compiled extension in miniplaces_ext/"
    if info.get("SOURCES") != source_fingerprint():
        return "the sources or build switches changed since the last build"
    try:
        import torch  # here only: setup.py calls source_fingerprint() before torch may be importable
    except ImportError:
        return "torch is not installed"
    torch_version = torch.__version__
    if torch_version != info.get("TORCH_VERSION"):
        return f"built against torch {info.get('TORCH_VERSION')}, torch {torch_version} is installed"
    force = os.environ.get("FORCE_CUDA")
    if force in ("0", "1") and info.get("WITH_CUDA") != (force == "1"):
        return f"FORCE_CUDA={force} but the last build {'had' if info.get('WITH_CUDA') else 'lacked'} the CUDA kernels"
    try:
        importlib.metadata.version("miniplaces_ext")
    except importlib.metadata.PackageNotFoundError:
        return "miniplaces_ext is not installed in this environment"
    return None


if __name__ == "__main__":
    reason = why_stale()
    if reason is not None:
        print(reason)
    sys.exit(0 if reason is None else 1)
