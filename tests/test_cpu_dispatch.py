"""The CPU dispatcher: ISA detection, the CPU options (set_cpu_options, the MINIPLACES_CPU_*
defaults), and the direct kernel at every ISA level on shapes that exercise its tails."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import LAYOUTS, assert_within_accumulation_bound, conv_reference_with_bounds, isa_params, native_bf16_skip_reason, use_cpu_kernel

SUPPORTED = me.cpu_capabilities()["supported"]


def _cpuinfo_level() -> str:
    """The level /proc/cpuinfo's flags allow (an independent reading of CPUID)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "portable"
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "portable"


def test_detection_matches_cpuinfo():
    caps = me.cpu_capabilities()
    assert caps["detected"] == _cpuinfo_level()
    assert caps["supported"] == ["portable", "avx2", "avx512"][: caps["supported"].index(caps["detected"]) + 1]


@pytest.mark.parametrize("isa", isa_params())
def test_switch_lowers_the_level(isa, monkeypatch):
    me.set_cpu_options(isa=isa, algo="gemm")
    caps = me.cpu_capabilities()
    assert (caps["chosen"], caps["algo"]) == (isa, "gemm")


def _import_with(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import miniplaces_ext"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("env, message", [
    ({"MINIPLACES_CPU_ISA": "sse9"}, "is not a level"),
    ({"MINIPLACES_CPU_ALGO": "fft"}, "is not an algorithm"),
    ({"MINIPLACES_CPU_BF16": "fast"}, "is not a mode"),
    ({"MINIPLACES_CPU_COLUMN_BYTES": "lots"}, "is not a positive number of bytes"),
])
def test_invalid_switch_is_one_line_at_import(env, message):
    result = _import_with(env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: miniplaces_ext:") and message in last


def test_level_above_the_cpu_is_refused(monkeypatch):
    above = {"portable": "avx2", "avx2": "avx512"}.get(SUPPORTED[-1])
    if above is None:
        pytest.skip("this CPU has the highest level (avx512): nothing above it to refuse")
    result = _import_with({"MINIPLACES_CPU_ISA": above})
    assert "asks for more than this CPU supports" in result.stderr.strip().splitlines()[-1]
    with pytest.raises(RuntimeError, match="asks for more than this CPU supports"):
        me.set_cpu_options(isa=above)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("out_channels", [1, 5, 8, 17, 40])
@pytest.mark.parametrize("width", [1, 4, 7, 13, 26])
def test_direct_kernel_tails(isa, out_channels, width, monkeypatch):
    """Output channels that fill no/part of a register block, widths around the pixel blocking,
    with borders on both sides: the direct kernel of every level against float64 torch."""
    use_cpu_kernel((isa, "direct"))
    gen = torch.Generator().manual_seed(out_channels * 100 + width)
    x = torch.randn(2, 6, 5, width, generator=gen)
    w = torch.randn(out_channels, 6, 3, 3, generator=gen)
    b = torch.randn(out_channels, generator=gen)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    torch.testing.assert_close(me.conv2d(x, w, b, padding=1).double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels", [6, 288])  # packed weight 6 KiB (row buffer) / 2.6 MiB (strided stores)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_direct_kernel_writes_the_output_in_its_layout(isa, in_channels, layout, monkeypatch):
    """The direct kernel writes NCHW outputs in place (through a row buffer for small weights,
    strided stores for large ones) and channels_last ones directly: both equal float64 torch,
    come back in the input's layout, and hold the same bits."""
    use_cpu_kernel((isa, "direct"))
    gen = torch.Generator().manual_seed(in_channels)
    x = torch.randn(2, in_channels, 9, 11, generator=gen)
    w = torch.randn(256, in_channels, 3, 3, generator=gen) / in_channels ** 0.5
    b = torch.randn(256, generator=gen)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=1)
    out = me.conv2d(LAYOUTS[layout](x), w, b, stride=2, padding=1)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    expected = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected)
    assert torch.equal(out, me.conv2d(LAYOUTS["channels_last"](x), w, b, stride=2, padding=1))


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("batch, in_channels, size, out_channels, kernel, stride, padding, dilation, groups", [
    (3, 16, (11, 9), 32, (3, 3), 2, 1, 1, 1),         # ResNet's 3x3/2: a cache of 4 rows, reused across images
    (2, 5, (13, 12), 24, (7, 5), (2, 1), (3, 2), (1, 2), 1),  # rows far apart, odd channels
    (2, 8, (12, 10), 16, (3, 3), 1, 3, 3, 1),          # dilation 3: 8 rows cached
    (2, 32, (9, 9), 16, (1, 1), 2, 0, 1, 1),           # a 1x1 layer on the direct kernel
    (3, 288, (9, 7), 272, (3, 3), 2, 1, 1, 1),         # large weight: a whole image cached, (block, image) tasks
    (2, 16, (9, 9), 32, (3, 3), 2, 1, 1, 2),           # groups: converted up front
])
def test_direct_kernel_reads_the_input_in_any_layout(isa, batch, in_channels, size, out_channels, kernel, stride,
                                                     padding, dilation, groups, monkeypatch):
    """The direct kernel reads NCHW and strided inputs by laying out rows as it reaches them
    (or up front), channels_last ones in place: the same bits from every layout and thread
    count, within float32's accumulation bound of float64."""
    use_cpu_kernel((isa, "direct"))
    gen = torch.Generator().manual_seed(in_channels + out_channels)
    x = torch.randn(batch, in_channels, *size, generator=gen)
    w = torch.randn(out_channels, in_channels // groups, *kernel, generator=gen)
    b = torch.randn(out_channels, generator=gen)
    conf = (stride, padding, dilation, groups)
    ref = F.conv2d(x.double(), w.double(), b.double(), *conf)
    abs_ref = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), *conf)
    expected = me.conv2d(LAYOUTS["channels_last"](x), w, b, *conf)
    assert_within_accumulation_bound(expected, ref, abs_ref, w[0].numel() + 1, "channels_last")
    assert_same_bits_from_every_layout(x, w, b, conf, expected)


def assert_same_bits_from_every_layout(x, w, b, conf, expected):
    """me.conv2d of x in NCHW and in a strided layout, on 1, 2 and 3 threads, equals `expected`."""
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for layout in ("nchw", "strided"):
                assert torch.equal(me.conv2d(LAYOUTS[layout](x), w, b, *conf), expected), (layout, count)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("batch, in_channels, size, out_channels, padding", [
    (3, 16, (11, 9), 32, 1),   # tiles of one image's rows, then the next image's: a cache of 10 rows
    (2, 5, (14, 3), 24, 0),    # narrower than a tile, odd channels, no padding
    (2, 8, (6, 22), 16, 2),    # one tile row per image (the cache holds all 6 rows)
])
def test_winograd_reads_the_input_in_any_layout(isa, batch, in_channels, size, out_channels, padding, monkeypatch):
    """Winograd lays out NCHW and strided inputs row by row as its tiles reach them and reads
    channels_last ones in place: the same bits from every layout and thread count."""
    use_cpu_kernel((isa, "winograd"))
    gen = torch.Generator().manual_seed(in_channels + out_channels)
    x = torch.randn(batch, in_channels, *size, generator=gen)
    w = torch.randn(out_channels, in_channels, 3, 3, generator=gen) / (3 * in_channels ** 0.5)
    b = torch.randn(out_channels, generator=gen)
    conf = (1, padding, 1, 1)
    assert me.cpu_conv_algorithm(x, w, 1, padding) == "winograd"
    expected = me.conv2d(LAYOUTS["channels_last"](x), w, b, *conf)
    torch.testing.assert_close(expected.double(), F.conv2d(x.double(), w.double(), b.double(), *conf),
                               rtol=1e-4, atol=1e-4)
    assert_same_bits_from_every_layout(x, w, b, conf, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride, groups", [((2, 3), 1), (1, 1), (2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_by_one_layers_are_a_gemm_of_the_sampled_pixels(layout, stride, groups, dtype):
    """auto runs 1x1 layers without padding as one GEMM over the sampled pixels (NCHW inputs
    without leaving NCHW): output and all gradients against float64 torch within the bound a sum
    of K products in the dtype can be off by (MKL's GEMM sums in an order of its own, which
    differs between CPUs), in the input's layout."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, 11, 14, generator=gen, dtype=dtype)
    w = torch.randn(24, 8 // groups, 1, 1, generator=gen, dtype=dtype)
    b = torch.randn(24, generator=gen, dtype=dtype)
    assert me.cpu_conv_algorithm(x, w, stride=stride, groups=groups) == "gemm"
    leaves = [LAYOUTS[layout](x.clone()).requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()]
    out = me.conv2d(*leaves, stride=stride, groups=groups)
    dy = torch.randn(out.shape, generator=gen, dtype=dtype)
    out.backward(dy)
    expected = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected)
    refs, abs_refs, lengths = conv_reference_with_bounds(x, w, b, dy, stride, 0, 1, groups)
    for name, got, ref, abs_ref, k in zip(("output", "grad_input", "grad_weight", "grad_bias"),
                                          (out, *[t.grad for t in leaves]), refs, abs_refs, lengths):
        assert got.dtype == dtype, name
        assert_within_accumulation_bound(got, ref, abs_ref, k, name)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", [
    ((3, 3), (2, 2), (1, 1), (1, 1), 1),  # ResNet's 3x3/2: phases of 1, 2, 2 and 4 taps
    ((1, 1), (2, 2), (0, 0), (1, 1), 1),  # its 1x1/2 downsample: one 1x1 phase, three zero phases
    ((7, 7), (2, 2), (3, 3), (1, 1), 1),  # the stem's shape
    ((5, 5), (3, 3), (2, 2), (1, 1), 2),  # stride 3, two groups
    ((4, 4), (2, 2), (1, 1), (1, 1), 1),  # an even kernel
    ((3, 3), (2, 2), (2, 2), (3, 3), 1),  # dilation 3 with stride 2: each phase's taps 2 apart
    ((3, 1), (2, 1), (1, 0), (1, 1), 1),  # strided in one dimension only
    ((2, 2), (3, 3), (0, 0), (1, 1), 1),  # kernel below the stride: phases no tap reaches
], ids=["3x3/2", "1x1/2", "7x7/2", "5x5/3-groups2", "4x4/2", "3x3/2-dilation3", "3x1/(2,1)", "2x2/3"])
def test_strided_grad_input_by_phases(isa, layout, kernel, stride, padding, dilation, groups, monkeypatch):
    """grad_input of a strided convolution, computed as one stride-1 convolution of grad_output
    per phase of the input grid written into strided views of dx (zeros where no tap reaches; at
    the portable level im2col + GEMM): against float64 torch within the float32 accumulation
    bound, with odd input sizes so that phases differ in size, in the input's layout."""
    use_cpu_kernel((isa, "auto"))
    x = LAYOUTS[layout](torch.randn(2, 16, 13, 11))
    w = torch.randn(32, 16 // groups, *kernel)
    args = (stride, padding, dilation, False, [0, 0], groups, [True, False, False])
    dy = torch.randn_like(F.conv2d(x, w, None, stride, padding, dilation, groups))
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), None, *args)[0]
    abs_ref = torch.ops.aten.convolution_backward(dy.double().abs(), x.double(), w.double().abs(), None, *args)[0]
    got = torch.ops.miniplaces_ext.conv2d_backward(dy, x, w, stride, padding, dilation, groups, [True, False, False])[0]
    assert_within_accumulation_bound(got, ref, abs_ref, 32 // groups * kernel[0] * kernel[1], "grad_input")
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, dilation, width", [
    (16, 32, (3, 3), (1, 1), (1, 1), (1, 1), 11),  # a ResNet 3x3; vectors over the input's channels
    (3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 37),  # the stem: vectors over grad_output's channels
    (32, 16, (3, 3), (2, 2), (1, 1), (1, 1), 9),  # stride 2
    (32, 100, (1, 1), (2, 2), (0, 0), (1, 1), 8),  # 1x1/2; 100 rows: many row tasks and a tail
    (128, 7, (5, 3), (3, 1), (2, 0), (2, 1), 20),  # 8 column blocks (AVX2): two column tasks
    (48, 32, (3, 3), (1, 2), (0, 3), (1, 3), 3),  # dilated taps that miss the input entirely
])
def test_weight_grad_kernel(isa, layout, in_channels, out_channels, kernel, stride, padding, dilation, width,
                            monkeypatch):
    """The weight-gradient kernel (no im2col matrix; forced with MINIPLACES_CPU_ALGO=direct, so
    every level runs it) against float64 torch within the float32 accumulation bound: both
    orientations, row and column tails, strides, padding beyond the taps, dilation, more output
    rows than one chunk of 512 pixels (8 images of 13 rows)."""
    use_cpu_kernel((isa, "direct"))
    x = LAYOUTS[layout](torch.randn(8, in_channels, 13, width))
    w = torch.randn(out_channels, in_channels, *kernel)
    args = (stride, padding, dilation, False, [0, 0], 1, [False, True, False])
    dy = torch.randn_like(F.conv2d(x, w, None, stride, padding, dilation))
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), None, *args)[1]
    abs_ref = torch.ops.aten.convolution_backward(dy.double().abs(), x.double().abs(), w.double(), None, *args)[1]
    got = torch.ops.miniplaces_ext.conv2d_backward(dy, x, w, stride, padding, dilation, 1, [False, True, False])[1]
    assert got.shape == w.shape and got.is_contiguous()
    assert_within_accumulation_bound(got, ref, abs_ref, dy[0, 0].numel() * dy.shape[0], "grad_weight")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, size", [
    (64, 64, 3, 1, 1, (40, 40)),  # blocks of 48 output rows: boundaries inside images and across them
    (16, 32, 3, 2, 1, (41, 23)),  # stride 2, odd sizes: rows 4-aligned transposes leave tails
    (3, 64, 7, 2, 3, (64, 30)),   # the stem's shape: vectors over grad_output, 3 channels (no 4x4 block)
    (32, 48, 5, 1, 0, (6, 9)),    # no padding: every block's first input row is its first output row's
])
@pytest.mark.parametrize("algo", ["direct", "auto"])  # auto: Winograd's grad_input, GEMMs on narrow layers
def test_backward_reads_grad_output_and_input_in_any_layout(isa, in_channels, out_channels, kernel, stride, padding,
                                                           size, algo, monkeypatch):
    """The backward pass reads grad_output and the input in the layout they come in: the
    weight-gradient kernel lays out blocks of their rows (about 1 MiB at a time), grad_input's
    kernels lay out grad_output's rows, the bias gradient sums NCHW planes. NCHW and strided
    tensors give the same grad_input and grad_weight bits as channels_last ones (read in place) on
    1, 2 and 3 threads, within the float32 accumulation bound of float64 torch. A weight gradient
    left to im2col + MKL's sgemm (cpu_conv_algorithm(..., phase="grad_weight") == "gemm") has the
    same bits in every layout at each thread count, but not across them: on an Intel Xeon MKL's
    AVX-512 sgemm sums in another order at 1 thread than inside torch's parallel region."""
    use_cpu_kernel((isa, algo))
    gen = torch.Generator().manual_seed(in_channels * kernel)
    x = torch.randn(6, in_channels, *size, generator=gen)
    w = torch.randn(out_channels, in_channels, kernel, kernel, generator=gen) / (kernel * in_channels ** 0.5)
    conf = ((stride, stride), (padding, padding), (1, 1), 1)
    dy = torch.randn(F.conv2d(x, w, None, *conf).shape, generator=gen)
    mask = [True, True, True]

    def backward(layout: str) -> tuple[torch.Tensor, ...]:
        return torch.ops.miniplaces_ext.conv2d_backward(LAYOUTS[layout](dy), LAYOUTS[layout](x), w, *conf, mask)

    expected = backward("channels_last")
    args = (*conf[:3], False, [0, 0], 1, mask)
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), [out_channels], *args)
    abs_ref = torch.ops.aten.convolution_backward(dy.double().abs(), x.double().abs(), w.double().abs(),
                                                  [out_channels], *args)
    terms = (out_channels * kernel * kernel, dy[:, 0].numel(), dy[:, 0].numel())
    for name, got, r, a, n in zip(("grad_input", "grad_weight", "grad_bias"), expected, ref, abs_ref, terms):
        assert_within_accumulation_bound(got, r, a, n, name)
    # The bias gradient sums channels_last pixels and NCHW planes in different orders: each
    # layout's bits are fixed across thread counts and within the bound.
    first_bias = {}
    weight_grad_by_kernel = me.cpu_conv_algorithm(x, w, stride, padding, phase="grad_weight") == "direct"
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            first_weight_grad = None
            for layout in ("channels_last", "nchw", "strided"):
                grad_input, grad_weight, grad_bias = backward(layout)
                assert torch.equal(grad_input, expected[0]), ("grad_input", layout, count)
                if weight_grad_by_kernel:
                    assert torch.equal(grad_weight, expected[1]), ("grad_weight", layout, count)
                else:
                    first_weight_grad = grad_weight if first_weight_grad is None else first_weight_grad
                    assert torch.equal(grad_weight, first_weight_grad), ("grad_weight", layout, count)
                    assert_within_accumulation_bound(grad_weight, ref[1], abs_ref[1], terms[1], "grad_weight")
                assert torch.equal(grad_bias, first_bias.setdefault(layout, grad_bias)), ("grad_bias", layout, count)
                assert_within_accumulation_bound(grad_bias, ref[2], abs_ref[2], terms[2], f"grad_bias {layout}")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("algo, stride", [("direct", 2), ("winograd", 1), ("gemm", 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_half_types_run_the_float32_kernels(isa, algo, stride, dtype, layout, monkeypatch):
    """bfloat16/float16 operands are widened to float32 for the kernel the dispatcher picks
    (not im2col in the half type): output and every gradient hold exactly the bits of the
    float32 computation on the widened operands, rounded once, in the input's layout."""
    use_cpu_kernel((isa, algo))
    me.set_cpu_options(bf16="widen")  # not the bfloat16 pair kernel, where the CPU has one
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 12, 10, 9, generator=gen).to(dtype)
    w = (torch.randn(20, 12, 3, 3, generator=gen) / 6).to(dtype)
    b = torch.randn(20, generator=gen).to(dtype)
    x = LAYOUTS[layout](x)
    assert me.cpu_conv_algorithm(x, w, stride=stride, padding=1) == algo
    results = []
    for operands in ((x, w, b), (x.float(), w.float(), b.float())):
        leaves = [t.detach().clone().requires_grad_() for t in operands]
        out = me.conv2d(*leaves, stride=stride, padding=1)
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype).to(out.dtype)
        out.backward(dy)
        results.append((out, *[t.grad for t in leaves]))
    expected = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for name, half, single in zip(("output", "grad_input", "grad_weight", "grad_bias"), *results):
        assert half.dtype == dtype, name
        assert torch.equal(half, single.to(dtype)), f"{name}: not the float32 result rounded once"
    assert results[0][0].is_contiguous(memory_format=expected) and results[0][1].is_contiguous(memory_format=expected)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=1)
    torch.testing.assert_close(results[0][0].double(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("mode", ["pairs", "tiles"])
@pytest.mark.parametrize("in_channels, kernel, stride, out_channels, width", [
    (3, 7, 2, 40, 11),    # the stem: odd channel count (a zero channel is added), one run per kernel row
    (5, 3, 1, 17, 11),    # odd, output-channel tail
    (16, 3, 2, 64, 11),
    (576, 3, 2, 256, 11),  # packed weight above 2 MiB in bfloat16 (2.65 MB): (panel, image) tasks, strided stores
    (64, 3, 1, 48, 37),   # tiles: 2 x 2 blocks of 19 and 18 pixels, whole 16-pair products, staged borders
    (40, 1, 1, 33, 37),   # tiles: 20 pairs per pixel, one whole product and a zero-padded one
    (24, 3, 1, 32, 17),   # tiles: a 2 x 2 block of 16 + 1 pixels, 36 pairs per kernel row (2 products + 4)
    (32, 3, 1, 64, 32),   # tiles: whole 2 x 2 blocks of 32 pixels, two column blocks
    (64, 3, 1, 48, 8),    # tiles: 8-pixel rows, kernel columns lowered: blocks span output rows (ResNet's layer4)
    (40, 3, 1, 70, 5),    # tiles: 5-pixel rows lowered, a staged depth tail, three column blocks with a tail
    (64, 3, 1, 48, 16),   # tiles: 16-pixel rows two at a time as one 2 x 2 block; 13 rows, the last alone
    (52, 1, 2, 40, 16),   # tiles: a strided 1x1 with 8-pixel rows: the lowered layout gathers the samples
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bf16_kernels(isa, mode, in_channels, kernel, stride, out_channels, width, layout, monkeypatch):
    """The direct kernel multiplying bfloat16 pairs into float32 sums, as vector pair products
    (vdpbf16ps where the CPU has AVX512-BF16) or tile products (AMX's tdpbf16ps where the CPU has
    AMX-BF16), each emulated elsewhere: within what a float32 accumulator of the bfloat16 operands'
    exact products, rounded once to bfloat16, can be off from float64, borders and tails included."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16=mode)
    gen = torch.Generator().manual_seed(in_channels + kernel)
    x = LAYOUTS[layout](torch.randn(2, in_channels, 13, width, generator=gen).bfloat16())
    w = (torch.randn(out_channels, in_channels, kernel, kernel, generator=gen) / (in_channels ** 0.5 * kernel)).bfloat16()
    b = torch.randn(out_channels, generator=gen).bfloat16()
    padding = kernel // 2
    assert me.cpu_conv_algorithm(x, w, stride, padding) == {"pairs": "direct-bf16", "tiles": "direct-bf16-tiles"}[mode]
    out = me.conv2d(x, w, b, stride, padding)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, padding)
    abs_ref = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), stride, padding)
    assert_within_accumulation_bound(out, ref, abs_ref, in_channels * kernel * kernel + 1, f"bf16 {mode}")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("mode", ["pairs", "tiles"])
@pytest.mark.parametrize("in_channels, kernel", [(64, 3), (3, 7)])  # a 3x3 layer; the stem (lowered on tiles)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bf16_output_rounded_once_to_nearest_even(isa, mode, in_channels, kernel, layout):
    """The bfloat16 kernels write a bfloat16 output rounded once, to nearest even, from their
    float32 sums. With small integer operands every sum is exact in float32, so the output must
    hold exactly the bits of the exact result rounded to bfloat16 (most sums need rounding:
    they run to thousands, beyond bfloat16's 8 significant bits)."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16=mode)
    gen = torch.Generator().manual_seed(kernel)
    x = LAYOUTS[layout](torch.randint(-8, 9, (2, in_channels, 20, 37), generator=gen).bfloat16())
    w = torch.randint(-8, 9, (48, in_channels, kernel, kernel), generator=gen).bfloat16()
    b = torch.randint(-64, 65, (48,), generator=gen).bfloat16()
    out = me.conv2d(x, w, b, 1, kernel // 2)
    exact = F.conv2d(x.double(), w.double(), b.double(), 1, kernel // 2)
    assert exact.abs().max() < 2 ** 24 and (exact.float().bfloat16().double() != exact).any()
    assert torch.equal(out, exact.float().bfloat16()), "not the exact sums rounded once to nearest even"


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels, kernel, stride, padding, dilation, width", [
    (3, 7, 2, 3, 1, 75),    # the stem: 21-value runs, 7 rows + a zero tail per pixel; runs of 38 -> 19 + 19
    (3, 11, 4, 2, 1, 131),  # AlexNet's 11x11/4: 33-value runs span two cache lines
    (1, 5, 1, 2, 2, 70),    # one channel, rows 2 apart (dilated rows), 3 runs of 24 / 23 pixels
    (5, 3, 1, 0, 1, 9),     # no padding: every row read from the input's own rows
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_lowered_few_channel_layers_on_tiles_are_exact(isa, in_channels, kernel, stride, padding, dilation, width,
                                                       layout):
    """Few-channel layers on tiles lay out each pixel's receptive field in cache (DirectConv::
    lower_pixels: whole 64-byte lines per kernel row, the excess overwritten or zeroed). With small
    integer operands every float32 sum is exact, so the output (bias, + residual, ReLU, rounded
    once to bfloat16) must hold the bits of the exact result: a line copied to the wrong place, or
    a stale value left in a pixel's zero tail, changes them."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16="tiles")
    gen = torch.Generator().manual_seed(kernel * 10 + in_channels)
    x = LAYOUTS[layout](torch.randint(-8, 9, (2, in_channels, 13, width), generator=gen).bfloat16())
    w = torch.randint(-8, 9, (40, in_channels, kernel, kernel), generator=gen).bfloat16()
    b = torch.randint(-64, 65, (40,), generator=gen).bfloat16()
    args = ([stride, stride], [padding, padding], [dilation, 1], 1)
    assert me.cpu_conv_plan(x, w, args[0], args[1], args[2])["input"] == "lowered"
    exact = F.conv2d(x.double(), w.double(), b.double(), *args)
    residual = LAYOUTS[layout](torch.randint(-512, 513, exact.shape, generator=gen).bfloat16())
    out = torch.ops.miniplaces_ext.conv2d_fused(x, w, b, residual, True, *args)
    expected = torch.relu(exact + residual.double())
    assert expected.abs().max() < 2 ** 24 and (expected.float().bfloat16().double() != expected).any()
    assert torch.equal(out, expected.float().bfloat16()), "not the exact result rounded once"
    # An infinite input reaches exactly the outputs whose receptive field holds it: the values a
    # line copies past a run (the pixels next to it) must never meet a weight, not even a zero one.
    x_inf = x.clone()
    x_inf[1, 0, 6, width // 2] = float("inf")
    out = me.conv2d(x_inf, w, None, *args)
    ref = F.conv2d(x_inf.double(), w.double(), None, *args)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())


def assert_exact_tile_conv(x, w, b, args, layout, gen, inf_at) -> int:
    """Checks the bf16 tile conv of small-integer x, w, b (conv2d args `args`): fused with a
    residual and ReLU it must hold the bits of the exact result rounded once; with x[inf_at]
    infinite, exactly the outputs whose receptive field holds it are infinite or NaN. Returns the
    output's width."""
    exact = F.conv2d(x.double(), w.double(), b.double(), *args)
    residual = LAYOUTS[layout](torch.randint(-512, 513, exact.shape, generator=gen).bfloat16())
    with torch.inference_mode():
        out = torch.ops.miniplaces_ext.conv2d_fused(x, w, b, residual, True, *args)
    expected = torch.relu(exact + residual.double())
    assert expected.abs().max() < 2 ** 24 and (expected.float().bfloat16().double() != expected).any()
    assert torch.equal(out, expected.float().bfloat16()), "not the exact result rounded once"
    x_inf = x.clone()
    x_inf[inf_at] = float("inf")
    out = me.conv2d(x_inf, w, None, *args)
    ref = F.conv2d(x_inf.double(), w.double(), None, *args)
    assert ref.isinf().any()
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    return exact.shape[-1]


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, dilation, height, width", [
    (64, 48, 3, 1, 1, 1, 9, 8),     # ResNet's layer4 shape: 72 pixels of 8-pixel rows in blocks of 24
    (32, 40, 3, 2, 1, 1, 16, 16),   # 3x3/2 (layer4.0): two row phases, an output-channel tail
    (40, 33, 1, 2, 0, 1, 16, 15),   # 1x1/2: one phase read, the other never laid out; a staged depth tail
    (24, 64, 3, 1, 2, 2, 11, 9),    # dilated rows and columns
    (16, 32, 5, 1, 0, 1, 13, 12),   # no padding: 8-pixel rows read from the input's own columns
    (768, 120, 3, 1, 1, 1, 5, 6),   # 442 KB panels: two groups of two (one with a 24-channel tail)
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_short_rows_on_tiles_are_exact(isa, in_channels, out_channels, kernel, stride, padding, dilation, height,
                                       width, layout):
    """Output rows shorter than a tile on tiles: each image laid out as rows of its pixels' kernel
    column taps (DirectConv::lower_columns, per row phase of a strided layer), so that a block of
    32 pixels spans output rows. Small integer operands make every float32 sum exact: the output
    (bias, + residual, ReLU, rounded once) must hold the bits of the exact result, in both output
    layouts (NHWC finished block by block, NCHW per image); and an infinite input must reach
    exactly the outputs whose receptive field holds it (no tap reads a neighbour's pixel)."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16="tiles")
    gen = torch.Generator().manual_seed(in_channels + out_channels + kernel)
    x = LAYOUTS[layout](torch.randint(-4, 5, (2, in_channels, height, width), generator=gen).bfloat16())
    w = torch.randint(-4, 5, (out_channels, in_channels, kernel, kernel), generator=gen).bfloat16()
    b = torch.randint(-64, 65, (out_channels,), generator=gen).bfloat16()
    args = ([stride, stride], [padding, padding], [dilation, dilation], 1)
    assert me.cpu_conv_algorithm(x, w, stride, padding, dilation) == "direct-bf16-tiles"
    out_width = assert_exact_tile_conv(x, w, b, args, layout, gen, (1, 0, height // 2, width // 2 + 1))
    assert out_width < 16


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, dilation, batch, height, width", [
    (64, 48, 3, 1, 1, 3, 15, 15),    # AlexNet's 15x15: rows paired across images; 3 images: the last row alone
    (40, 70, 3, 1, 1, 2, 13, 12),    # 12-pixel rows (the shortest paired): 60 pairs a kernel row (3 products + a
                                     # staged 12), three column blocks with a tail
    (32, 40, 3, 2, 1, 3, 9, 29),     # stride 2: 15-pixel rows 64 channels apart, 5 rows an image
    (24, 32, 5, 1, 2, 2, 11, 14),    # dilated rows, 14-pixel rows, 7 rows an image
    (1152, 120, 3, 1, 1, 3, 5, 16),  # 663 KB panels: two groups of two, each over the rows; 16-pixel rows
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_paired_rows_on_tiles_are_exact(isa, in_channels, out_channels, kernel, stride, dilation, batch, height,
                                        width, layout):
    """Output rows of 12 to 16 pixels on tiles, two at a time as one block (DirectConv::paired_rows_loop:
    one A tile per row, a row of an image with an odd row count paired with the next image's first,
    the last row of a batch alone; each panel over a task's rows before the next). Small integer
    operands make every float32 sum exact: the output (bias, + residual, ReLU, rounded once) must
    hold the bits of the exact result; and an infinite input must reach exactly the outputs whose
    receptive field holds it. The NCHW layout takes the other loops (its output is not finished
    block by block) and must agree too."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16="tiles")
    gen = torch.Generator().manual_seed(in_channels + out_channels + kernel + width)
    x = LAYOUTS[layout](torch.randint(-4, 5, (batch, in_channels, height, width), generator=gen).bfloat16())
    w = torch.randint(-4, 5, (out_channels, in_channels, kernel, kernel), generator=gen).bfloat16()
    b = torch.randint(-64, 65, (out_channels,), generator=gen).bfloat16()
    args = ([stride, stride], [kernel // 2 * dilation, kernel // 2], [dilation, 1], 1)
    assert me.cpu_conv_algorithm(x, w, stride, args[1], args[2]) == "direct-bf16-tiles"
    # The infinity in the last image's last row: its rows are paired across the images.
    out_width = assert_exact_tile_conv(x, w, b, args, layout, gen, (batch - 1, 0, height - 1, width // 2))
    assert 12 <= out_width <= 16


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("width", [104, 100])
def test_large_nchw_float32_outputs_written_with_streaming_stores_are_exact(isa, width):
    """A float32 NCHW output of 8 MiB or more is written row by row with non-temporal stores
    where the CPU has AVX-512 (stream_pixels_from_nhwc: whole aligned lines streamed; a row's
    leading pixels up to a line boundary, the channels past the last 16 and the pixels past the
    last 16 written as usual). The sums do not depend on the output's layout, so it must hold the
    bits of each image computed alone (1.7 MB, written as usual), at every level: 104-pixel rows
    start on a line every other row, 100-pixel ones rarely; 40 channels leave a tail of 8."""
    use_cpu_kernel((isa, "direct"))
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(6, 8, 104, width, generator=gen)
    w = torch.randn(40, 8, 3, 3, generator=gen)
    out = me.conv2d(x, w, None, 1, 1)
    assert out.is_contiguous() and out.numel() * 4 >= 8 << 20
    expected = torch.cat([me.conv2d(image[None], w, None, 1, 1) for image in x])
    assert torch.equal(out, expected)


def test_lowered_weight_is_packed_once_and_follows_in_place_changes():
    """A few-channel bf16 layer's lowered weight is kept packed outside training like every
    other layout, and an in-place change of the weight is never answered from the stale entry."""
    me.set_cpu_options(algo="direct", bf16="tiles")  # auto may pick im2col + GEMM at the portable level
    me.clear_weight_cache()
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-8, 9, (2, 3, 20, 33), generator=gen).bfloat16()
    w = torch.randint(-8, 9, (40, 3, 7, 7), generator=gen).bfloat16()
    assert me.cpu_conv_plan(x, w, 2, 3)["input"] == "lowered"
    with torch.no_grad():
        first = me.conv2d(x, w, None, 2, 3)
        assert me.weight_cache_size() == 1
        assert torch.equal(me.conv2d(x, w, None, 2, 3), first) and me.weight_cache_size() == 1
        w.mul_(-1)
        assert torch.equal(me.conv2d(x, w, None, 2, 3), -first)
    me.clear_weight_cache()


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, width", [
    (48, 64, 3, 1, 37),   # one phase: the transposed 3x3 convolution, 2 x 2 blocks and staged borders
    (32, 16, 3, 2, 23),   # four stride phases (2x2, 2x1, 1x2, 1x1 taps) written into strided views of dx
    (40, 32, 1, 2, 9),    # 1x1/2: one phase of one tap, three phases zero; 5-pixel flat rows
    (3, 64, 7, 2, 37),    # the stem: receptive fields (147 values, 5 column blocks) added into dx
    (3, 16, 11, 4, 45),   # AlexNet's first layer: 363 values, rows of 11 pixels
    (5, 40, 3, 1, 40),    # few channels, stride 1: rows of 40 pixels in blocks of 32 and 8
    (3, 15, 3, 1, 9),     # an odd number of output channels: stride phases, not the receptive fields
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bf16_grad_input_on_tiles(isa, in_channels, out_channels, kernel, stride, width, layout):
    """bfloat16 grad_input runs on the tile kernel (emulated where the CPU has no AMX), one
    bfloat16 forward convolution of grad_output per stride phase, or for a few-channel layer as
    receptive fields added into dx (grad_input_tiles.h): dx is bfloat16, in the input's layout,
    within what float32 sums of its bfloat16 products rounded once to bfloat16 can be off from
    float64."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16="tiles")
    gen = torch.Generator().manual_seed(in_channels + stride)
    x = LAYOUTS[layout](torch.randn(2, in_channels, 11, width, generator=gen).bfloat16())
    w = (torch.randn(out_channels, in_channels, kernel, kernel, generator=gen) / (out_channels ** 0.5 * kernel)).bfloat16()
    padding = kernel // 2
    dy = LAYOUTS[layout](torch.randn(F.conv2d(x.float(), w.float(), None, stride, padding).shape,
                                     generator=gen).bfloat16())
    dx = torch.ops.miniplaces_ext.conv2d_backward(dy, x, w, (stride, stride), (padding, padding), (1, 1), 1,
                                                  [True, False, False])[0]
    assert dx.dtype == torch.bfloat16 and dx.shape == x.shape
    assert dx.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    args = ((stride, stride), (padding, padding), (1, 1), False, [0, 0], 1, [True, False, False])
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), None, *args)[0]
    abs_ref = torch.ops.aten.convolution_backward(dy.double().abs(), x.double(), w.double().abs(), None, *args)[0]
    assert_within_accumulation_bound(dx, ref, abs_ref, out_channels * kernel * kernel, "bf16 grad_input")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, dilation, width", [
    (48, 64, 3, 1, 1, 13),   # 2 x 2 blocks over 32 input x 32 output channels, tails of 16 and 32
    (40, 24, 5, 1, 1, 7),    # 25 taps, short rows (a flat run of virtual pixels), an output-channel tail
    (20, 33, 3, 1, 2, 9),    # dilation 2, blocks of 20 input channels (one A tile and a part of the second)
    (40, 33, 1, 1, 1, 10),   # 1x1: one tap, the pixels of every image the only reduction
    (32, 48, 3, 2, 1, 13),   # stride 2: taps read the input's four stride phases, odd sizes
    (16, 64, 7, 2, 1, 21),   # 7x7/2: 49 taps over four phases
    (24, 40, 1, 2, 1, 11),   # 1x1/2: one phase of the input
    (16, 16, 11, 4, 1, 29),  # 11x11/4: sixteen phases
    (3, 64, 7, 2, 1, 21),    # the stem: 3 channels, column taps folded into 21 lowered channels
    (3, 16, 11, 4, 1, 29),   # AlexNet's first layer: 33 lowered channels, a block of 32 and one of 1
    (5, 40, 3, 1, 1, 6),     # lowered, stride 1, rows shorter than a tile's 16 pairs
    (3, 24, 5, 1, 2, 11),    # 3 channels, dilated columns: not lowered
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bf16_grad_weight_on_tiles(isa, in_channels, out_channels, kernel, stride, dilation, width, layout):
    """bfloat16 grad_weight runs on the tile kernel (emulated where the CPU
    has no AMX) with the pixels as the reduction: within what float32 sums of the bfloat16
    products over every pixel, rounded once to bfloat16, can be off from float64; and the same
    bits on 1, 2 and 3 threads (each (tap, channel block) sums its pixels in one fixed order)."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16="tiles")
    gen = torch.Generator().manual_seed(in_channels + kernel)
    x = LAYOUTS[layout](torch.randn(3, in_channels, 9, width, generator=gen).bfloat16())
    w = (torch.randn(out_channels, in_channels, kernel, kernel, generator=gen) / kernel).bfloat16()
    padding = dilation * (kernel // 2)
    conf = ((stride, stride), (padding, padding), (dilation, dilation), 1)
    dy = LAYOUTS[layout](torch.randn(F.conv2d(x.float(), w.float(), None, *conf).shape, generator=gen).bfloat16())
    assert me.cpu_conv_algorithm(x, w, stride, padding, dilation, phase="grad_weight") == "direct-bf16-tiles"
    lowered = in_channels < 16 and kernel > 1 and dilation == 1  # column taps folded into the channels
    plan = me.cpu_conv_plan(x, w, stride, padding, dilation, phase="grad_weight")
    assert plan["input"] == ("lowered" if lowered else "as_is")
    mask = [False, True, False]
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(torch.ops.miniplaces_ext.conv2d_backward(dy, x, w, *conf, mask)[1])
    finally:
        torch.set_num_threads(threads)
    dw = results[0]
    assert dw.dtype == torch.bfloat16 and dw.shape == w.shape
    assert all(torch.equal(dw, r) for r in results[1:]), "grad_weight bits depend on the thread count"
    args = (*conf[:3], False, [0, 0], 1, mask)
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), None, *args)[1]
    abs_ref = torch.ops.aten.convolution_backward(dy.double().abs(), x.double().abs(), w.double(), None, *args)[1]
    assert_within_accumulation_bound(dw, ref, abs_ref, dy[:, 0].numel(), "bf16 grad_weight")


def _bf16_operands(kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and weight of a 48 -> 40 3x3 layer in bfloat16: "normal" values; "denormal inputs"
    (half the inputs bfloat16 denormals, the rest just above the normal range, their products
    1/40 of the others': reading them as anything but zero shows in bfloat16); "denormal sums"
    (products and sums below float32's normal range)."""
    x = torch.randn(2, 48, 9, 21, generator=gen)
    w = torch.randn(40, 48, 3, 3, generator=gen) / 20
    if kind == "denormal inputs":
        x = torch.where(torch.rand(x.shape, generator=gen) < 0.5, x * 1e-39, x * 4e-38)
        w = w * 1e30
    elif kind == "denormal sums":
        x, w = x * 1e-20, w * 1e-20
    return x.bfloat16(), w.bfloat16()


@pytest.mark.parametrize("kernel", ["pairs", "tiles"])
@pytest.mark.parametrize("kind", ["normal", "denormal inputs", "denormal sums"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bf16_emulations_match_native_instructions(kernel, kind, layout):
    """The emulated bfloat16 units (vec_bf16_pairs.h, tiles_emulated.h) give the bits of the
    instructions they stand for (vdpbf16ps, tdpbf16ps: product order, rounding, denormals read as
    zero, denormal results flushed), so that on a CPU without them the emulation is a trustworthy
    oracle for the native kernel. Runs where the CPU has the instruction."""
    reason = native_bf16_skip_reason(kernel)
    if reason:
        pytest.skip(reason)
    x, w = _bf16_operands(kind, torch.Generator().manual_seed(3))
    x = LAYOUTS[layout](x)
    name = {"pairs": "direct-bf16", "tiles": "direct-bf16-tiles"}[kernel]
    outputs = []
    for isa in ("avx512", "avx2"):  # native, then the emulation at a level without the instruction
        me.set_cpu_options(isa=isa, algo="direct", bf16=kernel)
        assert me.cpu_conv_algorithm(x, w, 1, 1) == name
        outputs.append(me.conv2d(x, w, None, 1, 1))
    native, emulated = outputs
    if kind == "denormal sums":
        assert native.abs().max() == 0  # every sum flushed: a check that the case tests what it says
    mismatched = (native.view(torch.int16) != emulated.view(torch.int16)).sum().item()
    assert mismatched == 0, f"{mismatched} of {native.numel()} outputs differ from native {kernel}"


def test_bf16_kernels_only_where_asked(monkeypatch):
    """auto multiplies bfloat16 tiles with AMX-BF16, else pairs with AVX512-BF16, both only at the
    avx512 level; widen never; the bfloat16 kernels take only bfloat16 one-group layers on the
    direct kernel."""
    me.set_cpu_options(algo="direct")  # at every level, including portable (auto: gemm)
    x, w = torch.empty(32, 64, 16, 16, device="meta"), torch.empty(128, 64, 3, 3, device="meta")
    caps = me.cpu_capabilities()
    native = "direct"
    if caps["chosen"] == "avx512":
        native = "direct-bf16-tiles" if caps["amx_bf16"] == "yes" else "direct-bf16" if caps["avx512_bf16"] == "yes" else native
    assert me.cpu_conv_algorithm(x.bfloat16(), w.bfloat16(), 2, 1) == native
    assert me.cpu_conv_algorithm(x, w, 2, 1) == "direct"
    me.set_cpu_options(bf16="widen")
    assert me.cpu_conv_algorithm(x.bfloat16(), w.bfloat16(), 2, 1) == "direct"
    for mode, algo in (("pairs", "direct-bf16"), ("tiles", "direct-bf16-tiles")):
        me.set_cpu_options(bf16=mode)
        assert me.cpu_conv_algorithm(x.bfloat16(), w.bfloat16(), 2, 1) == algo
        assert me.cpu_conv_algorithm(x.half(), w.half(), 2, 1) == "direct"
        assert me.cpu_conv_algorithm(x.bfloat16(), w[:, :32].bfloat16(), 2, 1, groups=2) == "direct"


def test_plan_says_each_decision_once(monkeypatch):
    """cpu_conv_plan prints the ConvPlan a call makes: its algorithm is cpu_conv_algorithm's, the
    bfloat16 unit says whether it is native or emulated (native only where the CPU has the
    instruction), the input strategy follows the dtype and the unit, the packing block the level
    and the unit, and options set through set_cpu_options reach it."""
    caps = me.cpu_capabilities()
    block = {"portable": "8", "avx2": "16", "avx512": "32"}[caps["chosen"]]
    x, w = torch.empty(32, 64, 16, 16, device="meta"), torch.empty(128, 64, 3, 3, device="meta")
    for phase in ("forward", "training_forward", "grad_weight"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            plan = me.cpu_conv_plan(x.to(dtype), w.to(dtype), 2, 1, phase=phase)
            assert plan["algorithm"] == me.cpu_conv_algorithm(x.to(dtype), w.to(dtype), 2, 1, phase=phase)
            assert plan["pass"] == ("grad_weight" if phase == "grad_weight" else "forward")
            assert plan["weight_cached"] == ("yes" if phase == "forward" else "no")
            if plan["algorithm"] == "gemm":
                assert plan["input"] == "columns"
            elif dtype == torch.float32:
                assert plan["input"] == "as_is" and plan["unit"] == "none"
    me.set_cpu_options(algo="direct", bf16="tiles")  # the tile unit at every level, emulated where not native
    plan = me.cpu_conv_plan(x.bfloat16(), w.bfloat16(), 2, 1)
    native = caps["chosen"] == "avx512" and caps["amx_bf16"] == "yes"
    assert plan["unit"] == ("tiles(native)" if native else "tiles(emulated)")
    assert plan["input"] == "as_is" and plan["block"] == "32"
    stem = me.cpu_conv_plan(torch.empty(8, 3, 64, 64).bfloat16(), torch.empty(64, 3, 7, 7).bfloat16(), 2, 3)
    assert stem["input"] == "lowered"  # 3 channels: receptive fields as rows
    me.set_cpu_options(bf16="widen")
    plan = me.cpu_conv_plan(x.bfloat16(), w.bfloat16(), 2, 1)
    assert plan["unit"] == "none" and plan["input"] == "widened" and plan["block"] == block
    me.set_cpu_options(algo="gemm")
    assert me.cpu_conv_plan(x, w, 2, 1)["algorithm"] == "gemm"
    assert me.cpu_conv_plan(x, w, 2, 1, phase="grad_weight")["algorithm"] == "gemm"


def test_one_openmp_runtime_and_torch_threads():
    """Our parallel loops are at::parallel_for, i.e. torch's pool: the process holds one OpenMP
    runtime (torch's), and our direct and Winograd kernels and the bias gradient give the same
    bits with 1 thread as with several (each output element is computed by one thread; the bias
    gradient's row chunks are fixed)."""
    x, w = torch.randn(8, 32, 20, 20), torch.randn(48, 32, 3, 3)
    me.conv2d(x, w)
    runtimes = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if "libgomp" in line or "libiomp" in line or "libomp" in line}
    assert len(runtimes) <= 1, runtimes
    threads = torch.get_num_threads()
    for algo in ("winograd", "direct"):
        me.set_cpu_options(algo=algo)
        try:
            torch.set_num_threads(max(2, threads))
            many = me.conv2d(x, w, padding=1)
            torch.set_num_threads(1)
            one = me.conv2d(x, w, padding=1)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(one, many), algo
    dy = torch.randn(4, 48, 40, 40)  # the bias gradient: 6,400 rows in fixed chunks, 3 column blocks
    grad_bias = []
    for n in (max(2, threads), 1):
        torch.set_num_threads(n)
        grad_bias.append(torch.ops.miniplaces_ext.conv2d_backward(
            dy, torch.randn(4, 32, 42, 42), w, [1, 1], [0, 0], [1, 1], 1, [False, False, True])[2])
    torch.set_num_threads(threads)
    assert torch.equal(*grad_bias)
    torch.testing.assert_close(grad_bias[0].double(), dy.double().sum((0, 2, 3)), rtol=1e-5, atol=1e-3)
