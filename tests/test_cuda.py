"""CUDA-only checks (skip without a GPU): CPU<->CUDA equality, half types,
streams, determinism, device index. The device-generic tests elsewhere also
run every CPU parametrisation on CUDA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import assert_within_accumulation_bound, conv_reference_with_bounds, requires_gpu

pytestmark = [requires_gpu, pytest.mark.cuda]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _forward_backward(x, w, b, **conf):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    out = me.conv2d(*leaves, **conf)
    out.backward(torch.ones_like(out))
    return (out.detach(), *[t.grad for t in leaves])


@pytest.mark.parametrize("conf", [dict(stride=1, padding=1), dict(stride=2, padding=3), dict(stride=1, padding="same",
                                                                                            dilation=2, groups=2)])
def test_cpu_and_cuda_agree(conf):
    k = 7 if conf.get("padding") == 3 else 3
    x = torch.randn(3, 8, 33, 31, dtype=torch.float64)
    w = torch.randn(16, 8 // conf.get("groups", 1), k, k, dtype=torch.float64)
    b = torch.randn(16, dtype=torch.float64)
    cpu = _forward_backward(x, w, b, **conf)
    gpu = _forward_backward(x.cuda(), w.cuda(), b.cuda(), **conf)
    for a, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_accumulate_in_float32(dtype):
    """Within the bound of a float32 accumulator over K products (a half one would exceed it)."""
    x = torch.randn(4, 16, 20, 20, device="cuda").to(dtype)
    w = (torch.randn(32, 16, 3, 3, device="cuda") * 0.1).to(dtype)
    b = torch.randn(32, device="cuda").to(dtype)
    dy = torch.randn(4, 32, 20, 20, device="cuda").to(dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = me.conv2d(*leaves, padding=1)
    out.backward(dy)
    ref, abs_ref, lengths = conv_reference_with_bounds(x.cpu(), w.cpu(), b.cpu(), dy.cpu(), 1, 1, 1, 1)
    got = (out.detach(), *[t.grad for t in leaves])
    for name, g, r, a, k in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, ref, abs_ref, lengths):
        assert g.dtype == dtype
        assert_within_accumulation_bound(g.cpu(), r, a, k, name)


def test_weight_gradient_is_deterministic():
    x = torch.randn(16, 32, 40, 40, device="cuda")
    w = torch.randn(64, 32, 3, 3, device="cuda", requires_grad=True)
    grads = []
    for _ in range(2):
        w.grad = None
        me.conv2d(x, w, padding=1).square().sum().backward()
        grads.append(w.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_matches_cudnn_without_tf32():
    x = torch.randn(8, 64, 32, 32, device="cuda")
    w = torch.randn(128, 64, 3, 3, device="cuda") * 0.05
    torch.testing.assert_close(me.conv2d(x, w, stride=2, padding=1), F.conv2d(x, w, stride=2, padding=1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_double_backward_matches_cpu(dtype):
    """Gradients of gradients (gradgradcheck's path: our backward op differentiated again) agree
    with the CPU kernels', on strided, grouped, dilated convolutions."""
    x = torch.randn(2, 6, 11, 9, dtype=dtype)
    w = torch.randn(8, 3, 3, 3, dtype=dtype)
    outs = []
    for device in ("cpu", "cuda"):
        xd, wd = x.to(device).requires_grad_(), w.to(device).requires_grad_()
        y = me.conv2d(xd, wd, stride=2, padding=1, dilation=(1, 2), groups=2)
        gx, gw = torch.autograd.grad(y.square().sum(), (xd, wd), create_graph=True)
        ggx, ggw = torch.autograd.grad(gx.square().sum() + gw.square().sum(), (xd, wd))
        outs.append([t.detach().cpu() for t in (gx, gw, ggx, ggw)])
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64])
def test_gradgradcheck(dtype):
    x = torch.randn(1, 4, 7, 6, dtype=dtype, device="cuda", requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=dtype, device="cuda", requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: me.conv2d(a, b, stride=2, padding=1, groups=2), (x, w))


def test_side_streams():
    """Our kernels run on the current stream: the input is written on a side stream after a
    long sleep, and only that stream is synchronised. A kernel on any other stream would read
    the input before it is written."""
    x = torch.randn(4, 8, 16, 16, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    ref = F.conv2d(x, w, padding=1)
    for _ in range(3):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            torch.cuda._sleep(50_000_000)
            x_late = x * 1.0
            out = me.conv2d(x_late, w, padding=1)
        s.synchronize()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_non_default_device_index():
    x = torch.randn(2, 4, 9, 9, device="cuda:1")
    w = torch.randn(6, 4, 3, 3, device="cuda:1")
    out = me.conv2d(x, w)
    assert out.device == x.device
    torch.testing.assert_close(out.cpu(), F.conv2d(x.cpu(), w.cpu()), rtol=1e-4, atol=1e-4)
