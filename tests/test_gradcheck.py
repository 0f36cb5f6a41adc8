"""torch.autograd.gradcheck (float64) of conv1d and conv2d over a covering grid.

Every (stride, padding, dilation, groups) combination is checked; bias, padding
mode, odd/even kernel and batch size (0, 1, 2) rotate through those cases so
each value of each is covered many times.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import miniplaces_ext as me
from conftest import DEVICES

STRIDES = [1, 2, 3]
PADDINGS = [0, 1, "same", "valid"]
DILATIONS = [1, 2]
GROUPS = [1, 2, "depthwise"]
MODES = ["zeros", "reflect", "replicate", "circular"]
CHANNELS = 4


def _grid():
    cases = []
    for i, (stride, padding, dilation, groups) in enumerate(
            itertools.product(STRIDES, PADDINGS, DILATIONS, GROUPS)):
        if padding == "same" and stride != 1:
            continue  # torch rejects it too; covered by the bad-input tests
        cases.append(dict(
            stride=stride, padding=padding, dilation=dilation,
            groups=CHANNELS if groups == "depthwise" else groups,
            bias=i % 2 == 0, mode=MODES[i % 4], kernel=3 if (i // 2) % 2 == 0 else 2, batch=[1, 2, 0][i % 3],
        ))
    return cases


GRID = _grid()


def _ids(case):
    return "-".join(f"{k}{v}" for k, v in case.items())


def _inputs(dims, case, device):
    spatial = (7, 6)[:dims] if dims == 2 else (11,)
    kernel = (case["kernel"], 3)[:dims] if dims == 2 else (case["kernel"],)
    groups = case["groups"]
    out_channels = 8 if groups != CHANNELS else CHANNELS
    opts = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(case["batch"], CHANNELS, *spatial, **opts)
    w = torch.randn(out_channels, CHANNELS // groups, *kernel, **opts)
    b = torch.randn(out_channels, **opts) if case["bias"] else None
    return x, w, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_gradcheck(dims, case, device):
    x, w, b = _inputs(dims, case, device)
    conv = me.conv2d if dims == 2 else me.conv1d

    def fn(x, w, *b):
        return conv(x, w, b[0] if b else None, case["stride"], case["padding"], case["dilation"], case["groups"],
                    case["mode"])

    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, check_batched_grad=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("function, dims", [(me.Conv2dFunction, 2), (me.Conv1dFunction, 1)])
def test_gradcheck_function_classes(function, dims, device):
    x, w, b = _inputs(dims, dict(batch=2, groups=2, bias=True, kernel=3), device)
    args = ((2, 1), (1, 0), (1, 2), 2) if dims == 2 else ((2,), (1,), (2,), 2)
    assert torch.autograd.gradcheck(lambda x, w, b: function.apply(x, w, b, *args), (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("case", [GRID[0], GRID[7], GRID[-1]], ids=_ids)
def test_gradgradcheck(dims, case, device):
    """Double backward: conv*d_backward is differentiable through our own ops."""
    x, w, b = _inputs(dims, {**case, "batch": 2}, device)
    conv = me.conv2d if dims == 2 else me.conv1d

    def fn(x, w, b):
        return conv(x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"], case["mode"])

    assert torch.autograd.gradgradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5, rtol=1e-4, check_batched_grad=False)


def test_double_backward_matches_torch():
    """A gradient penalty (d/dw of |dL/dx|^2) equals the one torch computes."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for conv in (me.conv2d, torch.nn.functional.conv2d):
        (gx,) = torch.autograd.grad(conv(x, w, None, 2, 1).tanh().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), w))
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)
