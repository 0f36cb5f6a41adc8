"""conv2d_fused: the inference epilogue (+ residual, ReLU) applied by the CPU kernels to their float32
sums before they write them (csrc/cpu/ops/forward.cpp, kernels/epilogue.h).

float32: the kernels add the bias as they store and the residual after, as the unfused path does,
so the fused op must give the bits of our conv2d followed by + residual and ReLU, on every kernel
path (direct row buffer, direct stores, the large-weight order, Winograd, GEMM), every ISA level
and residual layout. bfloat16: one rounding of the exact float32 result, not the conv's rounding
followed by the add's.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import LAYOUTS, isa_params, use_cpu_kernel

OPS = torch.ops.miniplaces_ext


def unfused(x, w, b, residual, relu, stride, padding, groups=1):
    """Our convolution, then the epilogue as separate float32 passes."""
    out = me.conv2d(x, w, b, stride, padding, 1, groups)
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("algo", ["direct", "winograd", "gemm"])
@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, groups", [
    (16, 48, 3, 1, 1),     # small weight: whole rows, all blocks back to back
    (288, 64, 3, 1, 1),    # packed weight 2.6 MiB: (panel, image) order, each panel's columns finished
    (24, 40, 3, 2, 1),     # stride 2 (Winograd does not apply: what auto takes), a block tail
    (16, 32, 3, 1, 2),     # two groups: each group's channels from its own offset
    (8, 16, 1, 1, 1),      # 1x1: the GEMM of the pixels where GEMM is asked
])
@pytest.mark.parametrize("x_layout, residual_layout", [("nchw", "nchw"), ("channels_last", "channels_last"),
                                                       ("channels_last", "strided"), ("nchw", "channels_last")])
@pytest.mark.parametrize("relu, with_residual", [(True, True), (True, False), (False, True)])
def test_float32_epilogue_is_the_unfused_bits(isa, algo, in_channels, out_channels, kernel, stride, groups,
                                             x_layout, residual_layout, relu, with_residual):
    use_cpu_kernel((isa, algo))
    gen = torch.Generator().manual_seed(in_channels + out_channels)
    x = LAYOUTS[x_layout](torch.randn(2, in_channels, 11, 13, generator=gen))
    w = torch.randn(out_channels, in_channels // groups, kernel, kernel, generator=gen) / (in_channels * kernel) ** 0.5
    b = torch.randn(out_channels, generator=gen)
    padding = kernel // 2
    shape = F.conv2d(x, w, b, stride, padding, 1, groups).shape
    residual = LAYOUTS[residual_layout](torch.randn(shape, generator=gen)) if with_residual else None
    with torch.inference_mode():
        fused = OPS.conv2d_fused(x, w, b, residual, relu, [stride] * 2, [padding] * 2, [1, 1], groups)
        expected = unfused(x, w, b, residual, relu, stride, padding, groups)
    assert fused.shape == expected.shape
    assert torch.equal(fused, expected), f"max |difference| {(fused - expected).abs().max():.3g}"
    if relu:
        assert (fused == 0).any() and (fused > 0).any()  # ReLU did something


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("mode", ["pairs", "tiles"])
@pytest.mark.parametrize("in_channels, kernel, height, width", [
    (64, 3, 20, 37),   # a 3x3 layer: blocks of whole rows (on tiles finished block by block, a block late)
    (3, 7, 20, 37),    # the stem's shape: lowered on tiles
    (64, 3, 20, 8),    # 8-pixel rows: on tiles, kernel columns lowered, blocks spanning output rows
    (64, 3, 21, 16),   # 16-pixel rows, an odd count: on tiles two rows per block, the last row alone
])
@pytest.mark.parametrize("residual_layout", ["nchw", "channels_last", "strided"])
def test_bfloat16_epilogue_rounds_once(isa, mode, in_channels, kernel, height, width, residual_layout):
    """Small integer operands make every float32 sum exact, so the fused output must be the exact
    conv + bias + residual, ReLU'd, rounded once to bfloat16 — which differs from the unfused path's
    two roundings (conv, then add) on some elements."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16=mode)
    gen = torch.Generator().manual_seed(kernel + width)
    x = torch.randint(-8, 9, (2, in_channels, height, width), generator=gen).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randint(-8, 9, (48, in_channels, kernel, kernel), generator=gen).bfloat16()
    b = torch.randint(-64, 65, (48,), generator=gen).bfloat16()
    exact_conv = F.conv2d(x.double(), w.double(), b.double(), 1, kernel // 2)
    residual = LAYOUTS[residual_layout](torch.randint(-300, 301, exact_conv.shape, generator=gen).bfloat16())
    exact = (exact_conv + residual.double()).relu()
    with torch.inference_mode():
        fused = OPS.conv2d_fused(x, w, b, residual, True, [1, 1], [kernel // 2] * 2, [1, 1], 1)
    assert exact.abs().max() < 2 ** 24
    once = exact.float().bfloat16()
    twice = (exact_conv.float().bfloat16().float() + residual.float()).relu().bfloat16()
    assert not torch.equal(once, twice)  # the case tells one rounding from two
    assert torch.equal(fused, once), "not the exact result rounded once to nearest even"


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("dtype, mode", [(torch.bfloat16, "pairs"), (torch.bfloat16, "tiles"),
                                         (torch.float32, "pairs")])
@pytest.mark.parametrize("in_channels, kernel, height, width", [
    (64, 3, 20, 37),   # whole rows, finished a block late (bfloat16 NHWC) or through the row buffer
    (3, 7, 20, 37),    # few channels: lowered on tiles
    (64, 3, 20, 8),    # short rows: kernel columns lowered on tiles
])
@pytest.mark.parametrize("residual_layout", ["nchw", "channels_last", "strided"])
def test_written_over_the_residual_is_the_fused_result(isa, dtype, mode, in_channels, kernel, height, width,
                                                       residual_layout):
    """conv2d_fused_ writes relu(conv + bias + residual) over the residual: the bits
    of conv2d_fused, on the bfloat16 kernels that write over it in place (each element finished from
    its own sum and residual element) and on the float32 ones that compute aside and copy; an input
    that overlaps the residual is computed aside too."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16=mode)
    gen = torch.Generator().manual_seed(kernel + width)
    x = torch.randn(2, in_channels, height, width, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(48, in_channels, kernel, kernel, generator=gen) / (in_channels * kernel * kernel) ** 0.5).to(dtype)
    b = torch.randn(48, generator=gen).to(dtype)
    conf = ([1, 1], [kernel // 2] * 2, [1, 1], 1)
    residual = LAYOUTS[residual_layout](torch.randn(2, 48, height, width, generator=gen).to(dtype))
    with torch.inference_mode():
        expected = OPS.conv2d_fused(x, w, b, residual, True, *conf)
        target = residual.clone() if residual_layout != "strided" else LAYOUTS["strided"](residual.clone())
        pointer = target.data_ptr()
        assert OPS.conv2d_fused_(target, x, w, b, True, *conf) is None
    assert target.data_ptr() == pointer and torch.equal(target, expected)
    square = torch.randn(2, 48, 9, 37, generator=gen).to(dtype)  # the input is the residual, read in place
    square = square.contiguous(memory_format=torch.channels_last)
    w48 = (torch.randn(48, 48, 3, 3, generator=gen) / 20).to(dtype)
    with torch.inference_mode():
        expected = OPS.conv2d_fused(square, w48, None, square, True, *conf[:1], [1, 1], *conf[2:])
        OPS.conv2d_fused_(square, square, w48, None, True, *conf[:1], [1, 1], *conf[2:])
    assert torch.equal(square, expected)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("mode", ["pairs", "tiles"])
def test_bfloat16_rounding_keeps_denormals_and_writes_torchs_nan(isa, mode):
    """Where the vector unit rounds a block's sums (VCVTNE2PS2BF16 on AVX512-BF16 and AMX CPUs), it
    flushes denormal results to zero and keeps a NaN's payload: those lanes must still get c10's
    rounding, the denormal itself and 0x7FC0, as every other kernel writes them."""
    use_cpu_kernel((isa, "direct"))
    me.set_cpu_options(bf16=mode)
    x = torch.zeros(1, 64, 6, 37, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.ones(64, 64, 3, 3, dtype=torch.bfloat16)
    bias = torch.full((64,), 3e-39).bfloat16()  # a bfloat16 denormal (the smallest normal is 1.2e-38)
    bias[1::2] = -bias[1::2]
    residual = torch.zeros(1, 64, 6, 37, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    residual[0, 5, 2, 7] = float("nan")
    residual[0, 40, 3, 30] = -float("nan")
    with torch.inference_mode():
        out = OPS.conv2d_fused(x, w, bias, residual, False, [1, 1], [1, 1], [1, 1], 1)
    bits = out.contiguous().view(torch.int16)
    expected = bias.view(torch.int16)[None, :, None, None].expand_as(bits).clone()
    expected[0, 5, 2, 7] = expected[0, 40, 3, 30] = 0x7FC0
    assert bias.float()[0] != 0 and bias.float()[0].abs() < torch.finfo(torch.float32).tiny
    assert torch.equal(bits, expected), f"{(bits != expected).sum()} elements differ"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_widened_types_round_once(dtype):
    """float16 (and bfloat16 without a bfloat16 unit) are computed by the float32 kernels: the
    residual is added to the float32 sums, the result rounded once. (The direct kernel: its sums of
    small integers are exact; Winograd's transforms are not.)"""
    me.set_cpu_options(bf16="widen", algo="direct")
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-8, 9, (2, 32, 12, 12), generator=gen).to(dtype)
    w = torch.randint(-8, 9, (32, 32, 3, 3), generator=gen).to(dtype)
    residual = torch.randint(-300, 301, (2, 32, 12, 12), generator=gen).to(dtype)
    exact = (F.conv2d(x.double(), w.double(), None, 1, 1) + residual.double()).relu()
    with torch.inference_mode():
        fused = OPS.conv2d_fused(x, w, None, residual, True, [1, 1], [1, 1], [1, 1], 1)
    assert torch.equal(fused, exact.float().to(dtype))


def test_nan_survives_relu():
    """ReLU keeps NaN, as torch's does (max(0, NaN) must not become 0)."""
    x = torch.randn(1, 16, 8, 8)
    w = torch.randn(32, 16, 3, 3)
    residual = torch.zeros(1, 32, 8, 8)
    residual[0, 5, 3, 4] = float("nan")
    with torch.inference_mode():
        fused = OPS.conv2d_fused(x, w, None, residual, True, [1, 1], [1, 1], [1, 1], 1)
    assert torch.isnan(fused[0, 5, 3, 4]) and torch.isnan(fused).sum() == 1


def test_bad_residual_is_one_clear_error():
    x, w = torch.randn(1, 4, 8, 8), torch.randn(8, 4, 3, 3)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        OPS.conv2d_fused(x, w, None, torch.randn(1, 8, 7, 8), True, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="residual must be Float"):
        OPS.conv2d_fused(x, w, None, torch.randn(1, 8, 8, 8).double(), True, [1, 1], [1, 1], [1, 1], 1)


def test_plan_names_the_epilogue():
    """cpu_conv_plan's epilogue slot: what the fused op asks the kernel to apply."""
    plan = me.cpu_conv_plan(torch.empty(2, 16, 8, 8), torch.empty(32, 16, 3, 3), 1, 1)
    assert plan["epilogue"] == "none"
