"""torch.library.opcheck on every op, and torch.compile(fullgraph=True) through conv2d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import DEVICES

OPS = torch.ops.miniplaces_ext


def _samples(device):
    opts = dict(device=device, dtype=torch.float64)
    x2 = torch.randn(2, 4, 9, 8, **opts, requires_grad=True)
    w2 = torch.randn(6, 2, 3, 2, **opts, requires_grad=True)
    b = torch.randn(6, **opts, requires_grad=True)
    conf2 = ([2, 1], [1, 1], [1, 2], 2)
    yield OPS.conv2d_forward, (x2, w2, b, *conf2)
    yield OPS.conv2d_forward, (x2.detach().contiguous(memory_format=torch.channels_last).requires_grad_(), w2, None,
                               *conf2)
    out2 = OPS.conv2d_forward(x2, w2, b, *conf2).detach()
    yield OPS.conv2d_backward, (torch.randn_like(out2), x2.detach(), w2.detach(), *conf2, [True, True, True])
    yield OPS.conv2d_backward, (torch.randn_like(out2), x2.detach(), w2.detach(), *conf2, [False, True, False])
    # differentiable backward (double backward's autograd registration)
    yield OPS.conv2d_backward, (torch.randn_like(out2).requires_grad_(), x2, w2, *conf2, [True, True, True])
    # the fused inference op: no autograd, a residual of the output's shape
    residual = torch.randn_like(out2)
    yield OPS.conv2d_fused, (x2.detach(), w2.detach(), b.detach(), residual, True, *conf2)
    yield OPS.conv2d_fused, (x2.detach().contiguous(memory_format=torch.channels_last), w2.detach(), None, None, False,
                             *conf2)
    # ... and its form that writes over the residual
    yield OPS.conv2d_fused_, (torch.randn_like(out2), x2.detach(), w2.detach(), b.detach(), True, *conf2)
    # max-pooling: our kernel (channels_last float32 / bfloat16) and torch's (anything else)
    pool = ([3, 2], [2, 1], [1, 0], [1, 2], True)
    for dtype in (torch.float32, torch.bfloat16):
        yield OPS.max_pool2d, (torch.randn(2, 5, 9, 8, device=device, dtype=dtype)
                               .contiguous(memory_format=torch.channels_last), *pool)
    yield OPS.max_pool2d, (torch.randn(2, 5, 9, 8, **opts), *pool)
    x1 = torch.randn(2, 4, 11, **opts, requires_grad=True)
    w1 = torch.randn(6, 4, 3, **opts, requires_grad=True)
    conf1 = ([2], [1], [2], 1)
    yield OPS.conv1d_forward, (x1, w1, b, *conf1)
    out1 = OPS.conv1d_forward(x1, w1, b, *conf1).detach()
    yield OPS.conv1d_backward, (torch.randn_like(out1), x1.detach(), w1.detach(), *conf1, [True, True, True])
    yield OPS.conv1d_backward, (torch.randn_like(out1).requires_grad_(), x1, w1, *conf1, [True, True, False])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    checked = set()
    for op, args in _samples(device):
        torch.library.opcheck(op, args)
        checked.add(op._qualified_op_name)
    assert checked == {f"miniplaces_ext::{n}" for n in
                       ("conv2d_forward", "conv2d_backward", "conv1d_forward", "conv1d_backward", "conv2d_fused",
                        "conv2d_fused_", "max_pool2d")}


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, device=device, requires_grad=True)

    def f(x, w):
        return torch.relu(me.conv2d(x, w, None, 1, "same", 1, 1, "reflect")).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x, w)
    gx, gw = torch.autograd.grad(loss, (x, w))
    ref = torch.relu(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w)).sum()
    rgx, rgw = torch.autograd.grad(ref, (x, w))
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, rgx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, rgw, rtol=1e-4, atol=1e-4)
