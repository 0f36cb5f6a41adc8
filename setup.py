"""Builds miniplaces_ext._C: our C++ CPU convolution kernels, plus the CUDA ones.

Environment switches:
  FORCE_CUDA=1            build the CUDA kernels (fail if that is impossible)
  FORCE_CUDA=0            CPU-only build
  (unset)                 CUDA kernels when torch has CUDA and nvcc is found
  MINIPLACES_DEBUG=1      -O0 -g builds
  TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "9.0" for H100/H200
  CUDA_HOME               CUDA toolkit root (e.g. /usr/local/cuda)
Install with `pip install --no-build-isolation -e .` (setup.py imports torch).
"""
from __future__ import annotations

import glob
import os
import sysconfig

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if force == "1":
        if not possible:
            raise RuntimeError(
                f"FORCE_CUDA=1 but CUDA cannot be built: torch.version.cuda={torch.version.cuda}, "
                f"CUDA_HOME={CUDA_HOME}. Install a CUDA build of torch and set CUDA_HOME."
            )
        return True
    return possible


def _nvidia_include_dirs() -> list[str]:
    """Header folders of the pip CUDA wheels (cusparse.h etc. needed by ATen/cuda headers)."""
    site = sysconfig.get_paths()["purelib"]
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


def _extension():
    debug = os.environ.get("MINIPLACES_DEBUG") == "1"
    sources = ["csrc/conv.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is inline OpenMP in torch's builds: without -fopenmp it runs serially.
    cxx += ["-std=c++20", "-fopenmp"]
    sanitize = os.environ.get("MINIPLACES_SANITIZE")
    link = ["-fopenmp"]
    if sanitize:
        cxx += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
        link += [f"-fsanitize={sanitize}"]
    if _want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3"]
        nvcc += ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "miniplaces_ext._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc"), *_nvidia_include_dirs()],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    return CppExtension(
        "miniplaces_ext._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    name="miniplaces_ext",
    version="0.1.0",
    description="Convolution kernels of our own (C++/CUDA) as PyTorch custom ops, and a Miniplaces workflow on them",
    packages=find_packages(include=["miniplaces_ext", "miniplaces_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "pillow", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis", "expecttest"]},
)
