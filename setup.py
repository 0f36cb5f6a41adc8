"""Builds miniplaces_ext._C (our C++ CPU kernels, plus the CUDA ones when a toolkit works).

Metadata lives in pyproject.toml; this file adds the extension and the one
dependency that must be computed: the runtime torch is pinned to the version
the extension is compiled against (its C++ ABI is not stable across releases).

Environment switches:
  FORCE_CUDA=1            build the CUDA kernels, or fail saying why not
  FORCE_CUDA=0            CPU-only build
  (unset)                 CUDA kernels when torch has CUDA and a working toolkit of the
                          same major version is found; otherwise CPU-only, with one warning line
  CUDA_HOME               CUDA toolkit root (default: searched, e.g. /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "7.5;8.0;8.6;8.9;9.0+PTX")
  MINIPLACES_DEBUG=1      -O0 -g builds, debug info kept
  MINIPLACES_SANITIZE=... -fsanitize=... (see scripts/sanitize.sh)
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


def _warn(message: str) -> None:
    print(f"miniplaces_ext setup: WARNING: {message}", file=sys.stderr)


def _toolkit_problem(root: Path) -> str | None:
    """Why `root` is not a usable CUDA toolkit, or None if it has nvcc, headers and the runtime library."""
    if not (root / "bin" / "nvcc").is_file():
        return f"{root}/bin/nvcc is missing"
    if not (root / "include" / "cuda_runtime.h").is_file():
        return f"{root}/include/cuda_runtime.h is missing"
    if not any((root / lib / "libcudart.so").exists() for lib in ("lib64", "lib")):
        return f"{root} has no lib64/libcudart.so"
    return None


def _find_cuda_home() -> tuple[Path | None, list[str]]:
    """The first working toolkit among $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, nvcc's parent, /usr/local/cuda-*;
    and why each rejected candidate was rejected."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    rejected = []
    for candidate in dict.fromkeys(c for c in candidates if c):
        problem = _toolkit_problem(Path(candidate))
        if problem is None:
            return Path(candidate), rejected
        rejected.append(problem)
    return None, rejected


def _nvcc_major(cuda_home: Path) -> int | None:
    out = subprocess.run([str(cuda_home / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.", out)
    return int(match.group(1)) if match else None


def _cuda_plan(torch_cuda: str | None) -> Path | None:
    """The toolkit to build the CUDA kernels with, or None for a CPU-only build (FORCE_CUDA=1 raises instead)."""
    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        return None
    problem = None
    cuda_home, rejected = _find_cuda_home()
    if torch_cuda is None:
        problem = "the installed torch is a CPU-only build"
    elif cuda_home is None:
        problem = "no working CUDA toolkit found" + (f" ({'; '.join(rejected)})" if rejected else "")
    elif _nvcc_major(cuda_home) != int(torch_cuda.split(".")[0]):
        problem = f"nvcc in {cuda_home} is CUDA {_nvcc_major(cuda_home)}.x but torch was built with CUDA {torch_cuda}"
    if problem is None:
        return cuda_home
    if force == "1":
        raise SystemExit(f"miniplaces_ext setup: FORCE_CUDA=1 but the CUDA kernels cannot be built: {problem}. "
                         f"Set CUDA_HOME to a toolkit matching torch's CUDA {torch_cuda}.")
    if torch_cuda is not None:  # a CUDA torch without a usable toolkit: say so once
        _warn(f"building the CPU kernels only: {problem}. Set CUDA_HOME (and FORCE_CUDA=1) to build the CUDA ones.")
    return None


def _source_fingerprint() -> str:
    """miniplaces_ext/_build_stamp.py's fingerprint of the sources and build switches (loaded by path:
    importing the package needs torch and the extension)."""
    spec = importlib.util.spec_from_file_location("_build_stamp", ROOT / "miniplaces_ext" / "_build_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_fingerprint()


def _write_build_info(torch_version: str, with_cuda: bool, sources: str) -> None:
    """miniplaces_ext/_build_info.py: what the extension was compiled against, checked at import
    (and by scripts/setup.sh, through _build_stamp.py, to skip a build that is current)."""
    text = (
        '"""Written by setup.py at build time: what miniplaces_ext._C was compiled against."""\n'
        f"TORCH_VERSION = {torch_version!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"SOURCES = {sources!r}\n"
    )
    path = ROOT / "miniplaces_ext" / "_build_info.py"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _extension(torch, cuda_home: Path | None):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("MINIPLACES_DEBUG") == "1"
    # The CUDA-on-CPU harness (testing/cuda_on_cpu) is not shipped: the tests build it on their own.
    sources = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("csrc/*.cpp"), *ROOT.glob("csrc/cpu/**/*.cpp")])
    # -fopenmp: at::parallel_for is inline OpenMP in torch's builds; without it, it runs serially.
    # ISA-specific code is compiled per file with target pragmas; never -march=native.
    cxx = (["-O0", "-g"] if debug else ["-O3"]) + ["-std=c++20", "-fopenmp"]
    link = ["-fopenmp"] + ([] if debug else ["-Wl,--strip-debug"])
    sanitize = os.environ.get("MINIPLACES_SANITIZE")
    if sanitize:
        cxx += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
        link += [f"-fsanitize={sanitize}"]
    include_dirs = [str(ROOT / "csrc")]
    if cuda_home is None:
        return CppExtension("miniplaces_ext._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx}, extra_link_args=link)
    sources += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/cuda/*.cu"))
    # The pip CUDA wheels beside torch hold headers the ATen/cuda headers need (e.g. cusparse.h).
    site = Path(torch.__file__).resolve().parent.parent
    include_dirs += sorted(glob.glob(str(site / "nvidia" / "cu*" / "include")))
    nvcc = (["-O0", "-g", "-G"] if debug else ["-O3"]) + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension("miniplaces_ext._C", sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)


def main() -> None:
    import torch  # provided by [build-system] requires, or the environment with --no-build-isolation

    sources = _source_fingerprint()  # of the environment as given, before defaults are filled in

    cuda_home = _cuda_plan(torch.version.cuda)
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = str(cuda_home)  # read by torch.utils.cpp_extension when it is imported
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        print(f"miniplaces_ext setup: CUDA kernels with {cuda_home} for {os.environ['TORCH_CUDA_ARCH_LIST']}",
              file=sys.stderr)
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension

    class RecordingBuildExtension(BuildExtension.with_options(use_ninja=True)):
        """torch's BuildExtension, recording what it compiled against once the build succeeded."""

        def run(self) -> None:
            super().run()
            _write_build_info(torch.__version__, cuda_home is not None, sources)

    public_version = torch.__version__.split("+")[0]
    setup(
        ext_modules=[_extension(torch, cuda_home)],
        cmdclass={"build_ext": RecordingBuildExtension},
        # pytest is a runtime dependency so that the documented first check, `pip install -e .` then
        # `pytest tests/test_gradcheck.py`, works with nothing else installed; the [test] extra adds the rest.
        install_requires=[f"torch=={public_version}", "numpy", "pillow", "tqdm", "matplotlib", "pytest"],
    )


if __name__ == "__main__":
    main()
