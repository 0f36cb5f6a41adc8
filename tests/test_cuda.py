"""CUDA-only checks (skip without a GPU): CPU<->CUDA equality, half types,
streams, determinism, device index. The device-generic tests elsewhere also
run every CPU parametrisation on CUDA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import requires_gpu

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


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_types_against_fp32(dtype, tol):
    x = torch.randn(4, 16, 20, 20, device="cuda")
    w = torch.randn(32, 16, 3, 3, device="cuda") * 0.1
    b = torch.randn(32, device="cuda")
    ref = _forward_backward(x, w, b, padding=1)
    low = _forward_backward(x.to(dtype), w.to(dtype), b.to(dtype), padding=1)
    for r, l in zip(ref, low):
        assert l.dtype == dtype
        torch.testing.assert_close(l.float(), r, rtol=tol * 10, atol=tol * r.abs().max().item())


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


def test_side_streams():
    x = torch.randn(4, 8, 16, 16, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    ref = F.conv2d(x, w, padding=1)
    streams = [torch.cuda.Stream() for _ in range(3)]
    outs = []
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            outs.append(me.conv2d(x, w, padding=1))
    torch.cuda.synchronize()
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_non_default_device_index():
    x = torch.randn(2, 4, 9, 9, device="cuda:1")
    w = torch.randn(6, 4, 3, 3, device="cuda:1")
    out = me.conv2d(x, w)
    assert out.device == x.device
    torch.testing.assert_close(out.cpu(), F.conv2d(x.cpu(), w.cpu()), rtol=1e-4, atol=1e-4)
