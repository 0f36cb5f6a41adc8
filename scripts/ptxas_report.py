"""Per-kernel resource usage of our CUDA kernels without a GPU: ptxas -v for one architecture,
and the occupancy each kernel would get from it.

    python scripts/ptxas_report.py                 # sm_90, prints a Markdown table
    python scripts/ptxas_report.py --arch sm_80 --markdown docs/cuda_kernels_sm80.md

Compiles csrc/cuda/conv_kernel.cu with nvcc (CUDA_HOME, default /usr/local/cuda) and
torch's include paths, reads ptxas's "Used N registers, M bytes smem, spill" lines,
demangles the kernel names and computes blocks per SM from registers, shared memory and
threads (the limits of the architecture below). Exits non-zero when any kernel spills.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Per-SM limits (CUDA occupancy calculator): registers, shared memory (bytes), threads, blocks,
# and the granularity registers are allocated in per warp.
LIMITS = {
    "sm_75": dict(regs=65536, smem=65536, threads=1024, blocks=16, reg_unit=256),
    "sm_80": dict(regs=65536, smem=167936, threads=2048, blocks=32, reg_unit=256),
    "sm_86": dict(regs=65536, smem=102400, threads=1536, blocks=16, reg_unit=256),
    "sm_89": dict(regs=65536, smem=102400, threads=1536, blocks=24, reg_unit=256),
    "sm_90": dict(regs=65536, smem=233472, threads=2048, blocks=32, reg_unit=256),
}
THREADS_PER_BLOCK = 256  # every kernel of conv_kernels.cuh is launched with kThreads = 256


@dataclass
class Kernel:
    name: str
    registers: int = 0
    smem: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


def compile_with_ptxas_verbose(arch: str) -> str:
    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")  # torch's autodetection picks /usr/local here
    import torch
    from torch.utils.cpp_extension import include_paths

    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    site = Path(torch.__file__).resolve().parent.parent
    includes = [*include_paths(device_type="cuda"), str(ROOT / "csrc"),
                *glob.glob(str(site / "nvidia" / "cu*" / "include"))]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(cuda_home / "bin" / "nvcc"), "-std=c++20", "-O3", "--expt-relaxed-constexpr",
               f"-arch={arch}", "-Xptxas", "-v", "-c", str(ROOT / "csrc" / "cuda" / "conv_kernel.cu"),
               "-o", str(Path(tmp) / "conv_kernel.o"), "-DTORCH_EXTENSION_NAME=_C",
               "-D_GLIBCXX_USE_CXX11_ABI=1", *[f"-I{p}" for p in includes]]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"nvcc failed:\n{done.stderr[-4000:]}")
    return done.stderr


def parse(log: str) -> list[Kernel]:
    kernels: list[Kernel] = []
    current: Kernel | None = None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            current = Kernel(m.group(1))
            kernels.append(current)
        elif current and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current.spill_stores, current.spill_loads = int(m.group(1)), int(m.group(2))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            current.registers = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current.smem = int(s.group(1))
    names = subprocess.run(["c++filt"], input="\n".join(k.name for k in kernels), capture_output=True,
                           text=True).stdout.splitlines()
    for k, name in zip(kernels, names):
        k.name = short_name(name)
    return kernels


def short_name(demangled: str) -> str:
    """implicit_gemm_kernel<ForwardProblem<float>> rather than the full namespaces."""
    name = re.sub(r"miniplaces_ext::cuda::(\(anonymous namespace\)::)?", "", demangled)
    name = name.replace("c10::Half", "half").replace("c10::BFloat16", "bfloat16")
    return re.sub(r"\(.*\)$", "", name)


def blocks_per_sm(k: Kernel, arch: str) -> int:
    lim = LIMITS[arch]
    warps = THREADS_PER_BLOCK // 32
    regs_per_warp = -(-k.registers * 32 // lim["reg_unit"]) * lim["reg_unit"]
    by_regs = lim["regs"] // max(1, regs_per_warp * warps)
    by_smem = lim["smem"] // k.smem if k.smem else lim["blocks"]
    by_threads = lim["threads"] // THREADS_PER_BLOCK
    return min(by_regs, by_smem, by_threads, lim["blocks"])


def table(kernels: list[Kernel], arch: str) -> str:
    lim = LIMITS[arch]
    kernels = sorted(kernels, key=lambda k: k.name)
    rows = ["| kernel | registers | shared memory (B) | spills (B st/ld) | blocks/SM | occupancy |",
            "|---|---:|---:|---:|---:|---:|"]
    for k in kernels:
        blocks = blocks_per_sm(k, arch)
        occupancy = blocks * THREADS_PER_BLOCK / lim["threads"]
        rows.append(f"| `{k.name}` | {k.registers} | {k.smem} | {k.spill_stores}/{k.spill_loads} | {blocks} | "
                    f"{occupancy:.0%} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90", choices=sorted(LIMITS))
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    kernels = parse(compile_with_ptxas_verbose(args.arch))
    if not kernels:
        sys.exit("ptxas reported no kernels")
    text = table(kernels, args.arch)
    print(f"ptxas -v, {args.arch}, {THREADS_PER_BLOCK} threads per block\n\n{text}")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    spilling = [k.name for k in kernels if k.spill_stores or k.spill_loads]
    if spilling:
        sys.exit(f"register spills in: {', '.join(spilling)}")


if __name__ == "__main__":
    main()
