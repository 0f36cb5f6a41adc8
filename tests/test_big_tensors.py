"""64-bit indexing: an input of more than 2^31 elements, of which the kernels touch only a few.

The input is allocated but never filled (torch.empty leaves the pages
untouched, so memory stays modest); a 1x1 kernel with a huge stride samples
a 4x4 grid of it (rows 0-3, columns 0, 2e8, 4e8, 6e8) whose last elements
lie beyond 2^31, and exactly those elements are set. A 32-bit index anywhere would read the wrong element or
crash.
"""
from __future__ import annotations

import pytest
import torch

import miniplaces_ext as me

HEIGHT, WIDTH = 4, 600_000_001     # 2.4e9 elements > 2**31
STRIDE = (1, 200_000_000)          # samples columns 0, 2e8, 4e8, 6e8 of every row


@pytest.mark.parametrize("out_channels", [1, 16])   # 16: the direct kernel by default (AVX2/AVX-512); 1: im2col+GEMM
def test_input_beyond_2_to_the_31(out_channels):
    x = torch.empty(1, 1, HEIGHT, WIDTH)
    assert x.numel() > 2**31
    cols = [j * STRIDE[1] for j in range(4)]
    values = torch.arange(16, dtype=torch.float32).view(4, 4) + 1
    for i in range(4):
        for j, col in enumerate(cols):
            x[0, 0, i, col] = values[i, j]
    assert 3 * WIDTH + cols[-1] > 2**31
    w = torch.arange(1, out_channels + 1, dtype=torch.float32).view(out_channels, 1, 1, 1)
    b = torch.full((out_channels,), 0.5)
    out = me.conv2d(x, w, b, stride=STRIDE)
    assert out.shape == (1, out_channels, 4, 4)
    expected = values[None] * w.view(-1, 1, 1) + 0.5
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)

    grad = torch.ones(1, out_channels, 4, 4)
    _, grad_weight, grad_bias = torch.ops.miniplaces_ext.conv2d_backward(
        grad, x, w, list(STRIDE), [0, 0], [1, 1], 1, [False, True, True])
    torch.testing.assert_close(grad_weight.view(-1), torch.full((out_channels,), values.sum().item()))
    torch.testing.assert_close(grad_bias, torch.full((out_channels,), 16.0))
