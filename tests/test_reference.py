"""Our conv1d against the NumPy transcription of docs/conv1d.md, and one SGD step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import miniplaces_ext as me
from miniplaces_ext import reference as R


@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("k, stride, dilation, padding", [
    (3, 1, 1, "same"), (4, 1, 1, "same"), (5, 1, 2, "same"), (3, 2, 1, 1), (4, 3, 2, 2), (1, 1, 1, 0)])
def test_conv1d_equals_derivation(mode, k, stride, dilation, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16))
    w = rng.standard_normal((5, 3, k))
    b = rng.standard_normal(5)
    pads = R.same_padding(k, dilation) if padding == "same" else (padding, padding)

    y = R.conv1d_forward(x, w, b, stride, pads, dilation, mode)
    if padding == "same":
        assert y.shape[-1] == x.shape[-1], "eq. 3: 'same' keeps the length"
    grad_y = rng.standard_normal(y.shape)

    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = me.conv1d(xt, wt, bt, stride, padding, dilation, 1, mode)
    yt.backward(torch.from_numpy(grad_y))

    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), R.conv1d_grad_input(grad_y, 16, w, stride, pads, dilation, mode),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wt.grad.numpy(), R.conv1d_grad_weight(grad_y, x, k, stride, pads, dilation, mode),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bt.grad.numpy(), R.conv1d_grad_bias(grad_y), rtol=1e-10, atol=1e-12)


def test_single_channel_same_padding_by_hand():
    """The worked example of docs/conv1d.md: N = 5, k = 3, zero 'same' padding."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    w = np.array([[[1.0, 0.0, -1.0]]])
    y = R.conv1d_forward(x, w, None, 1, R.same_padding(3))
    np.testing.assert_array_equal(y, [[[-2.0, -2.0, -2.0, -2.0, 4.0]]])
    ours = me.conv1d(torch.from_numpy(x), torch.from_numpy(w), padding="same")
    np.testing.assert_array_equal(ours.numpy(), y)


def test_sgd_step_equals_formula():
    """W <- W - lr * dC/dW: torch.optim.SGD on our gradient equals eq. 8 on the NumPy gradient."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 20))
    target = rng.standard_normal((4, 3, 20))
    w0 = rng.standard_normal((3, 2, 5))
    lr = 0.05

    w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = torch.optim.SGD([w], lr=lr)
    y = me.conv1d(torch.from_numpy(x), w, padding="same")
    loss = 0.5 * ((y - torch.from_numpy(target)) ** 2).sum()   # C = ½ Σ (y − t)², dC/dy = y − t
    loss.backward()
    opt.step()

    y_ref = R.conv1d_forward(x, w0, None, 1, R.same_padding(5))
    grad_w = R.conv1d_grad_weight(y_ref - target, x, 5, 1, R.same_padding(5))
    np.testing.assert_allclose(w.detach().numpy(), R.sgd_step(w0, grad_w, lr), rtol=1e-10, atol=1e-12)
    assert not np.allclose(w.detach().numpy(), w0), "the step must move the weights"
