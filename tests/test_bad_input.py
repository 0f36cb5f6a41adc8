"""Bad arguments raise a Python exception that names the problem (never a crash).

The error kinds follow torch.nn.functional: RuntimeError for what F.conv2d
rejects, TypeError for non-integer sizes, ValueError for an unknown
padding_mode (as nn.Conv2d).
"""
from __future__ import annotations

import pytest
import torch

import miniplaces_ext as me

OPS = torch.ops.miniplaces_ext
x4 = torch.randn(2, 4, 8, 8)
w4 = torch.randn(6, 4, 3, 3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: me.conv2d(torch.randn(8, 8), w4), RuntimeError, "3-D \\(unbatched\\) or 4-D"),
    (lambda: me.conv2d(torch.randn(1, 2, 4, 8, 8), w4), RuntimeError, "got a 5-D tensor"),
    (lambda: me.conv2d(x4, torch.randn(6, 4, 3)), RuntimeError, "4-D weight"),
    (lambda: me.conv1d(x4, w4), RuntimeError, "conv1d expects a 2-D \\(unbatched\\) or 3-D"),
    (lambda: me.conv2d(x4, w4.double()), RuntimeError, "same dtype"),
    (lambda: me.conv2d(x4, w4, torch.randn(6, dtype=torch.float64)), RuntimeError, "bias must have the input's dtype"),
    (lambda: me.conv2d(x4.int(), w4.int()), RuntimeError, "floating-point"),
    (lambda: me.conv2d(x4, w4.to("meta")), RuntimeError, "same device"),
    (lambda: me.conv2d(x4, torch.randn(6, 2, 3, 3)), RuntimeError, "expects 2 input channels"),
    (lambda: me.conv2d(torch.randn(2, 5, 8, 8), torch.randn(6, 2, 3, 3), groups=2), RuntimeError,
     "input channels \\(5\\) must be divisible by groups \\(2\\)"),
    (lambda: me.conv2d(x4, torch.randn(5, 2, 3, 3), groups=2), RuntimeError,
     "output channels \\(5\\) must be divisible by groups"),
    (lambda: me.conv2d(x4, w4, groups=0), RuntimeError, "non-positive groups"),
    (lambda: me.conv2d(x4, torch.randn(6, 4, 9, 9)), RuntimeError, "kernel can't be larger than the padded input"),
    (lambda: me.conv2d(x4, w4, dilation=5), RuntimeError, "kernel can't be larger than the padded input"),
    (lambda: me.conv2d(x4, w4, stride=0), RuntimeError, "non-positive stride"),
    (lambda: me.conv2d(x4, w4, stride=(1, -1)), RuntimeError, "non-positive stride"),
    (lambda: me.conv2d(x4, w4, dilation=0), RuntimeError, "non-positive dilation"),
    (lambda: me.conv2d(x4, w4, padding=-1), RuntimeError, "negative padding"),
    (lambda: me.conv2d(x4, w4, padding=-1, padding_mode="reflect"), RuntimeError, "negative padding"),
    (lambda: me.conv2d(x4, w4, padding=(1, 2, 3)), RuntimeError, "sequence of 2 ints"),
    (lambda: me.conv2d(x4, w4, padding="full"), RuntimeError, "invalid padding string"),
    (lambda: me.conv2d(x4, w4, stride=2, padding="same"), RuntimeError, "not supported for strided"),
    (lambda: me.conv2d(x4, w4, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (lambda: me.conv2d(x4, w4, padding=8, padding_mode="reflect"), RuntimeError, "reflect padding of 8"),
    (lambda: me.conv2d(x4, w4, padding=9, padding_mode="circular"), RuntimeError, "circular padding of 9"),
    (lambda: me.conv2d(x4, torch.randn(0, 4, 3, 3)), RuntimeError, "zero output channels"),
    (lambda: me.conv2d(torch.randn(2, 0, 8, 8), torch.randn(6, 0, 3, 3)), RuntimeError, "zero input channels"),
    (lambda: me.conv2d(x4, w4, torch.randn(5)), RuntimeError, "bias must have shape \\[6\\]"),
    (lambda: me.conv2d(x4, w4, stride="2"), TypeError, "stride must be an int"),
    (lambda: me.Conv2d(4, 6, 3)(torch.randn(2, 3, 8, 8)), RuntimeError, "expects 12 input channels|4 input channels"),
])
def test_functional_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# The C++ checks themselves, reached through the raw ops.
@pytest.mark.parametrize("call, message", [
    (lambda: OPS.conv2d_forward(x4, w4, None, [0, 1], [0, 0], [1, 1], 1), "non-positive stride"),
    (lambda: OPS.conv2d_forward(x4, w4, None, [1, 1], [-1, 0], [1, 1], 1), "negative padding"),
    (lambda: OPS.conv2d_forward(x4, w4, None, [1, 1], [0, 0], [1, 0], 1), "non-positive dilation"),
    (lambda: OPS.conv2d_forward(x4[0], w4, None, [1, 1], [0, 0], [1, 1], 1), "4-D input"),
    (lambda: OPS.conv2d_forward(x4, w4, None, [1, 1], [0, 0], [1, 1], 3), "divisible by groups"),
    (lambda: OPS.conv2d_forward(x4, w4.double(), None, [1, 1], [0, 0], [1, 1], 1), "same dtype"),
    (lambda: OPS.conv2d_forward(x4, torch.randn(6, 4, 11, 3), None, [1, 1], [1, 1], [1, 1], 1),
     "smaller than the dilated kernel"),
    (lambda: OPS.conv2d_backward(torch.randn(2, 6, 5, 5), x4, w4, [1, 1], [0, 0], [1, 1], 1, [True] * 3),
     "grad_output must have the forward output's shape"),
    (lambda: OPS.conv1d_forward(x4, w4, None, [1], [0], [1], 1), "conv1d expects a 3-D input"),
])
def test_kernel_checks(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()
