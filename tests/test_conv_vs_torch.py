"""Outputs and all three gradients equal torch.nn.functional's (float32 tight, float64)."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import DEVICE_KERNELS, DEVICES, onednn_defect_applies, torch_reference, use_cpu_kernel

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
# Winograd's float32 error is ~2e-5 x max|output| (docs/winograd.md; held to that bound in
# test_winograd.py): outputs here reach ~10, so near-zero elements need a wider atol.
WINOGRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: TOL[torch.float64]}


def torch_conv_mode(dims, x, w, b, stride, padding, dilation, groups, mode):
    """The reference: torch's own nn.ConvNd semantics for padding modes."""
    conv = F.conv2d if dims == 2 else F.conv1d
    if mode == "zeros":
        return conv(x, w, b, stride, padding, dilation, groups)
    pad = padding if isinstance(padding, tuple) else (padding,) * dims
    flat = [p for p in reversed(pad) for _ in range(2)]
    return conv(F.pad(x, flat, mode=mode), w, b, stride, 0, dilation, groups)


def run_both(dims, x, w, b, conf):
    """Forward + backward through ours and torch's; returns both (out, dx, dw, db) tuples."""
    results = []
    for fn, context in ((lambda *a: (me.conv2d if dims == 2 else me.conv1d)(*a), contextlib.nullcontext()),
                        (lambda *a: torch_conv_mode(dims, *a), torch_reference(x, w, conf[0], conf[1]))):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        with context:
            out = fn(*leaves, *conf)
            grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
            out.backward(grad)
        results.append((out.detach(), *[t.grad if t is not None else None for t in leaves]))
    return results


def assert_same(ours, theirs, dtype, tolerances=TOL):
    for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, **tolerances[dtype], msg=lambda m: f"{name}: {m}")


CASES_2D = [
    # (N, C, H, W, Cout, k, stride, padding, dilation, groups, bias, mode)
    (2, 3, 17, 15, 8, (3, 3), 1, 1, 1, 1, True, "zeros"),
    (2, 6, 16, 16, 12, (3, 3), 2, 1, 1, 3, False, "zeros"),
    (1, 8, 12, 13, 8, (5, 5), 1, 2, 1, 8, True, "reflect"),
    (3, 4, 20, 20, 16, (1, 1), 2, 0, 1, 1, False, "zeros"),
    (2, 3, 33, 33, 8, (7, 7), 2, 3, 1, 1, False, "zeros"),
    (2, 3, 35, 35, 8, (11, 11), 4, 2, 1, 1, True, "zeros"),
    (2, 4, 10, 9, 6, (2, 4), (1, 2), (1, 2), (2, 1), 2, True, "circular"),
    (2, 4, 10, 9, 4, (3, 3), 1, 2, 2, 1, True, "replicate"),
    (0, 4, 10, 9, 4, (3, 3), 1, 1, 1, 1, True, "zeros"),
    (2, 16, 9, 9, 32, (1, 1), 1, 0, 1, 4, True, "zeros"),
    # enough output channels per group for the default choice to take the direct kernel
    (2, 5, 13, 14, 40, (3, 3), 1, 1, 1, 1, True, "zeros"),
    (2, 8, 9, 30, 64, (3, 3), 2, 2, 2, 2, False, "zeros"),
    (1, 3, 31, 29, 16, (7, 5), 2, 3, 1, 1, True, "reflect"),
    (2, 32, 6, 5, 32, (3, 3), 1, 1, 1, 1, True, "zeros"),
    (2, 32, 7, 26, 48, (3, 1), 1, (2, 0), (2, 1), 2, True, "zeros"),
    # 1x1 with a stride and bias: a GEMM over the sampled pixels (NCHW kept NCHW)
    (2, 8, 11, 14, 24, (1, 1), (2, 3), 0, 1, 1, True, "zeros"),
    # a packed direct weight above 2 MiB: channel blocks outer, strided output stores
    (1, 64, 7, 6, 1024, (3, 3), 2, 1, 1, 1, True, "zeros"),
]


@pytest.mark.parametrize("device, cpu_kernel", DEVICE_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("case", CASES_2D)
def test_conv2d_matches_torch(case, layout, dtype, device, cpu_kernel, monkeypatch):
    use_cpu_kernel(cpu_kernel)
    n, c, h, w_, cout, k, stride, padding, dilation, groups, bias, mode = case
    x = torch.randn(n, c, h, w_, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        x = torch.randn(n, c, h, 2 * w_, dtype=dtype, device=device)[..., ::2]
        assert n == 0 or not x.is_contiguous()
    w = torch.randn(cout, c // groups, *k, dtype=dtype, device=device) * 0.2
    b = torch.randn(cout, dtype=dtype, device=device) if bias else None
    ours, theirs = run_both(2, x, w, b, (stride, padding, dilation, groups, mode))
    assert_same(ours, theirs, dtype, WINOGRAD_TOL if cpu_kernel[1] == "winograd" else TOL)


CASES_1D = [
    # (N, C, L, Cout, k, stride, padding, dilation, groups, bias, mode)
    (2, 3, 50, 8, 5, 1, 2, 1, 1, True, "zeros"),
    (2, 4, 31, 8, 4, 2, 3, 2, 2, False, "reflect"),
    (3, 6, 17, 6, 3, 3, 1, 1, 6, True, "circular"),
    (1, 2, 9, 4, 1, 1, 0, 1, 1, True, "replicate"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES_1D)
def test_conv1d_matches_torch(case, dtype, device):
    n, c, length, cout, k, stride, padding, dilation, groups, bias, mode = case
    x = torch.randn(n, c, length, dtype=dtype, device=device)
    w = torch.randn(cout, c // groups, k, dtype=dtype, device=device) * 0.3
    b = torch.randn(cout, dtype=dtype, device=device) if bias else None
    ours, theirs = run_both(1, x, w, b, (stride, padding, dilation, groups, mode))
    assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims, kernel, dilation", [(2, (4, 3), (1, 2)), (2, (2, 2), 1), (1, (4,), 3), (1, (5,), 1)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_matches_torch(dims, kernel, dilation, padding, device):
    x = torch.randn(2, 4, *(13, 10)[:dims], dtype=torch.float64, device=device)
    w = torch.randn(6, 4, *kernel, dtype=torch.float64, device=device)
    conv = F.conv2d if dims == 2 else F.conv1d
    ours = (me.conv2d if dims == 2 else me.conv1d)(x, w, None, 1, padding, dilation)
    torch.testing.assert_close(ours, conv(x, w, None, 1, padding, dilation))
    if padding == "same":
        assert ours.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input(device):
    x = torch.randn(3, 12, 12, device=device)
    w = torch.randn(5, 3, 3, 3, device=device)
    torch.testing.assert_close(me.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1), **TOL[torch.float32])
    x1 = torch.randn(3, 12, device=device)
    torch.testing.assert_close(me.conv1d(x1, w[..., 0]), F.conv1d(x1, w[..., 0]), **TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_output_memory_format_follows_input(device):
    w = torch.randn(8, 4, 3, 3, device=device)
    x = torch.randn(2, 4, 10, 10, device=device)
    assert me.conv2d(x, w).is_contiguous()
    out = me.conv2d(x.contiguous(memory_format=torch.channels_last), w)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_output_mask_skips_unneeded_gradients(device):
    x = torch.randn(2, 4, 8, 8, device=device)
    w = torch.randn(6, 4, 3, 3, device=device)
    grad = torch.randn(2, 6, 6, 6, device=device)
    gi, gw, gb = torch.ops.miniplaces_ext.conv2d_backward(grad, x, w, (1, 1), (0, 0), (1, 1), 1, [False, True, False])
    assert gi is None and gb is None
    torch.testing.assert_close(gw, torch.nn.grad.conv2d_weight(x, w.shape, grad), **TOL[torch.float32])


def test_frozen_weight_gets_no_gradient():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(6, 4, 3, 3)
    me.conv2d(x, w).sum().backward()
    torch.testing.assert_close(x.grad, torch.nn.grad.conv2d_input(x.shape, w, torch.ones(2, 6, 6, 6)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_cpu(dtype):
    x = torch.randn(2, 8, 12, 12)
    w = torch.randn(16, 8, 3, 3) * 0.1
    ref = F.conv2d(x, w, padding=1)
    out = me.conv2d(x.to(dtype), w.to(dtype), padding=1)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_follows_torch_policy(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    x = torch.randn(2, 8, 12, 12, device=device)
    w = torch.randn(16, 8, 3, 3, device=device) * 0.1
    b = torch.randn(16, device=device)
    with torch.autocast(device, dtype=dtype):
        ours = me.conv2d(x, w, b, padding=1)
        theirs = F.conv2d(x, w, b, padding=1)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2])
def test_autocast_applies_to_the_raw_ops_and_their_gradients(device, dims):
    """The Autocast kernels cast inside the dispatcher: the raw op and the Function class
    run in the autocast dtype, and gradients reach the float32 leaves in float32."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    spatial, kernel = ((10, 9), (3, 3)) if dims == 2 else ((13,), (3,))
    x = torch.randn(2, 4, *spatial, device=device, requires_grad=True)
    w = (torch.randn(8, 4, *kernel, device=device) * 0.2).requires_grad_()
    b = torch.randn(8, device=device, requires_grad=True)
    conf = ([1] * dims, [1] * dims, [1] * dims, 1)
    op = torch.ops.miniplaces_ext.conv2d_forward if dims == 2 else torch.ops.miniplaces_ext.conv1d_forward
    function = me.Conv2dFunction if dims == 2 else me.Conv1dFunction
    conv = F.conv2d if dims == 2 else F.conv1d
    ref = conv(x, w, b, 1, 1)
    rgx, rgw, rgb = torch.autograd.grad(ref.sum(), (x, w, b))
    ref = ref.detach()
    for run in (lambda: op(x, w, b, *conf), lambda: function.apply(x, w, b, *conf)):
        with torch.autocast(device, dtype=dtype):
            out = run()
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)
        gx, gw, gb = torch.autograd.grad(out.float().sum(), (x, w, b))
        assert gx.dtype == gw.dtype == gb.dtype == torch.float32
        torch.testing.assert_close(gx, rgx, rtol=2e-2, atol=5e-2)
        torch.testing.assert_close(gb, rgb, rtol=2e-2, atol=5e-2)
    # float64 is not lowered, as in torch's policy
    with torch.autocast(device, dtype=dtype):
        assert op(x.double(), w.double(), b.double(), *conf).dtype == torch.float64


@pytest.mark.parametrize("column_bytes", [1, 5000])
def test_gemm_path_in_chunks_matches_torch(column_bytes):
    """The im2col buffer limit lowered so each chunk holds one image (or a few): forward and all
    gradients of the chunked GEMM path, grouped, stride 2, with bias, equal torch's."""
    me.set_cpu_options(algo="gemm", column_bytes=column_bytes)
    x = torch.randn(5, 4, 9, 11)
    w = torch.randn(6, 2, 3, 3) * 0.2
    b = torch.randn(6)
    ours, theirs = run_both(2, x, w, b, (2, 1, 1, 2, "zeros"))
    assert_same(ours, theirs, torch.float32)


def test_invalid_column_limit_is_refused():
    before = me.get_cpu_options()
    with pytest.raises(RuntimeError, match="column_bytes=0 is not a positive number"):
        me.set_cpu_options(algo="gemm", column_bytes=0)
    assert me.get_cpu_options() == before  # a refused call changes nothing


def test_reference_leaves_onednn_only_where_it_is_wrong():
    """The references run on torch's default CPU path (oneDNN) everywhere except the
    configuration of uxlfoundation/oneDNN#6035 (conftest.onednn_defect_applies)."""
    assert torch.backends.mkldnn.enabled
    cl = torch.randn(3, 4, 20, 20).contiguous(memory_format=torch.channels_last)
    assert onednn_defect_applies(cl, torch.randn(16, 4, 1, 1), 2, 0)
    assert not onednn_defect_applies(cl.contiguous(), torch.randn(16, 4, 1, 1), 2, 0)  # NCHW input
    assert not onednn_defect_applies(cl, torch.randn(16, 4, 1, 1), 1, 0)  # unit stride, no padding
    assert not onednn_defect_applies(cl, torch.randn(16, 4, 3, 3), 2, 1)  # not 1x1
    wide = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    assert not onednn_defect_applies(wide, torch.randn(128, 64, 1, 1), 2, 0)  # ResNet's downsample
