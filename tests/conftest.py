"""Shared test helpers: devices, seeded tensors, the real-data location."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch

import miniplaces_ext
from miniplaces_ext import models

REPO = Path(__file__).resolve().parents[1]

# The layouts an operand is given in: NCHW, channels_last, and neither (read through its strides).
LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "strided": lambda t: torch.stack([t, t], dim=-1).flatten(-2)[..., ::2],
}

# Our CUDA kernels, like cuDNN's convolutions, run float32 as TF32 on tensor cores when
# torch.backends.cudnn.allow_tf32 is on (torch's default). The suite holds float32 results to
# float32 arithmetic's bounds, so it runs with TF32 off; test_cuda_on_cpu's TF32 tests turn it on.
torch.backends.cudnn.allow_tf32 = False


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


# The course ResNet-18 weights provided beside the repository (not committed).
PROVIDED_WEIGHTS = REPO.parent / "shared" / "models" / "resnet18.pt"

requires_gpu = pytest.mark.skipif(not has_gpu(), reason=_gpu_skip_reason())
requires_data = pytest.mark.skipif(not (miniplaces_root() / "val.txt").exists(),
                                   reason=f"Miniplaces data not found at {miniplaces_root()}")
requires_weights = pytest.mark.skipif(not PROVIDED_WEIGHTS.exists(),
                                      reason=f"provided weights not found at {PROVIDED_WEIGHTS}")

# Devices to run device-generic tests on: CPU always, CUDA when usable.
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_gpu, pytest.mark.cuda])]

# Every instruction-set level our CPU kernels have, lowest first. Tests parametrised over them
# run each level this CPU has and show the others as skipped, with the reason, so that a run on
# a smaller CPU says what it did not check.
ISA_LEVELS = ("portable", "avx2", "avx512")
_CAPABILITIES = miniplaces_ext.cpu_capabilities()


def isa_params(levels=ISA_LEVELS) -> list:
    """pytest params for `levels`: those this CPU lacks are skipped with the reason."""
    return [pytest.param(level, id=level, marks=() if level in _CAPABILITIES["supported"] else pytest.mark.skip(
        reason=f"this CPU has no {level} (detected: {_CAPABILITIES['detected']})")) for level in levels]


def native_bf16_skip_reason(kernel: str) -> str | None:
    """Why the bfloat16 `kernel` ("pairs": vdpbf16ps, "tiles": tdpbf16ps) cannot run natively
    here, or None when it can."""
    if _CAPABILITIES["detected"] != "avx512":
        return f"native bfloat16 {kernel} need the avx512 level; this CPU has {_CAPABILITIES['detected']}"
    flag = {"pairs": "avx512_bf16", "tiles": "amx_bf16"}[kernel]
    if _CAPABILITIES[flag] != "yes":
        return f"this CPU has no {flag.upper().replace('_', '-')} (or the OS did not grant the tile state)"
    return None


# CPU kernel choices the op tests run under, as (isa option, algo option): the default choice,
# im2col + GEMM, and the direct and Winograd kernels at every ISA level (Winograd where it
# applies: 3x3 stride-1 layers; others take the default); levels this CPU lacks are skipped.
def _cpu_kernel_params() -> list:
    params = [pytest.param(("", "auto"), id="detected-auto"), pytest.param(("", "gemm"), id="detected-gemm")]
    for level in isa_params():
        params += [pytest.param((level.values[0], algo), id=f"{level.values[0]}-{algo}", marks=level.marks)
                   for algo in ("direct", "winograd")]
    return params


CPU_KERNELS = _cpu_kernel_params()

# (device, cpu_kernel) pairs: every CPU kernel choice on the CPU, the default one on CUDA.
DEVICE_KERNELS = [pytest.param("cpu", *k.values, id=f"cpu-{k.id}", marks=k.marks) for k in CPU_KERNELS] + [
    pytest.param("cuda", ("", "auto"), id="cuda", marks=[requires_gpu, pytest.mark.cuda])]


def use_cpu_kernel(cpu_kernel: tuple[str, str]) -> None:
    """Selects a CPU kernel for the rest of the test (an empty ISA keeps the one in force); the
    autouse fixture `_restore_cpu_options` puts the options back after the test."""
    isa, algo = cpu_kernel
    miniplaces_ext.set_cpu_options(isa=isa or None, algo=algo)


_OPTIONS_AT_IMPORT = miniplaces_ext.get_cpu_options()


@pytest.fixture(autouse=True)
def _restore_cpu_options():
    """Every test starts with the options in force at import and leaves them so."""
    yield
    miniplaces_ext.set_cpu_options(**_OPTIONS_AT_IMPORT)


def onednn_defect_applies(x: torch.Tensor, w: torch.Tensor, stride, padding) -> bool:
    """True for the convolutions whose weight gradient torch 2.14.1's oneDNN (v3.12) computes
    wrongly on x86 CPUs: a 1x1 kernel with stride > 1 or padding (oneDNN's "reduce to unit
    stride" path), a channels_last float32 input and fewer input channels than a oneDNN block
    (uxlfoundation/oneDNN#6035: it writes past its workspace, so grad_weight is garbage, the
    call can hang, and a later primitive-cache destructor can SIGSEGV at exit). Reproduced
    here: every grad_weight element wrong against float64, torch's native path right."""
    def positive(v) -> bool:
        return not isinstance(v, str) and any(int(p) > 0 for p in ((v,) if isinstance(v, int) else v))

    strided = any(int(s) > 1 for s in ((stride,) if isinstance(stride, int) else stride))
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and w.dim() == 4
            and tuple(w.shape[2:]) == (1, 1) and (strided or positive(padding)) and w.shape[1] < 16
            and x.is_contiguous(memory_format=torch.channels_last))


def torch_reference(x: torch.Tensor, w: torch.Tensor, stride, padding):
    """Context for computing torch's reference (forward and backward) for this convolution:
    oneDNN, torch's default CPU path, except where onednn_defect_applies, which takes torch's
    native kernel."""
    if onednn_defect_applies(x, w, stride, padding):
        return _onednn_off()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _onednn_off():
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


_EPS = {dtype: torch.finfo(dtype).eps for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


def conv_reference_with_bounds(x, weight, bias, dy, stride, padding, dilation, groups):
    """float64 (output, grad_input, grad_weight, grad_bias) of F.conv2d for these operands
    (as given: low-precision ones already rounded), the same maths on |operands| (each
    element's sum of |products|), and each result's reduction length K."""
    results = []
    for transform in (lambda t: t.detach().double().clone(), lambda t: t.detach().double().abs()):
        leaves = [transform(t).requires_grad_() for t in (x, weight, bias)]
        out = torch.nn.functional.conv2d(*leaves, stride, padding, dilation, groups)
        out.backward(transform(dy))
        results.append((out.detach(), *[t.grad for t in leaves]))
    cout, cg, kh, kw = weight.shape
    pixels = dy.shape[0] * dy.shape[2] * dy.shape[3]
    lengths = (cg * kh * kw + 1, cout // groups * kh * kw, pixels, pixels)  # forward counts the bias
    return results[0], results[1], lengths


def assert_within_accumulation_bound(got, ref, abs_ref, k, name="", operand_rounding=0.0):
    """|got - ref| <= eps(dtype)*|ref| + (K*eps(acc) + 2*operand_rounding)*sum|products| elementwise:
    what a sum of K products accumulated in float32 (float64 for float64) and rounded once to
    got's dtype can be off by, when each operand was first rounded with relative error
    operand_rounding (TF32: 2**-11). A float16/bfloat16 accumulator exceeds it by far."""
    eps_acc = _EPS[torch.float64] if got.dtype == torch.float64 else _EPS[torch.float32]
    bound = _EPS[got.dtype] * ref.abs() + (k * eps_acc + 2 * operand_rounding) * abs_ref + 1e-300
    err = (got.double() - ref).abs()
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{name}: error {err.max().item():.3g} exceeds the derived bound {worst:.2f}x"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and a CUDA build (skips otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def copy_val_subset(root: Path, count: int) -> list[str]:
    """Makes `root` a Miniplaces folder holding the first `count` real val images (categories.txt,
    val.txt, an empty train.txt); returns their val.txt lines."""
    src = miniplaces_root()
    (root / "images" / "val").mkdir(parents=True)
    shutil.copy(src / "categories.txt", root)
    lines = (src / "val.txt").read_text().splitlines()[:count]
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("")
    for line in lines:
        shutil.copy(src / "images" / line.split()[0], root / "images" / "val")
    return lines


@pytest.fixture
def small_root(tmp_path):
    """A Miniplaces folder of 6 real val images, one of them corrupt."""
    root = tmp_path / "mp"
    lines = copy_val_subset(root, 6)
    (root / "images" / lines[2].split()[0]).write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def small_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(models.build("resnet18").state_dict(), path)
    return path
