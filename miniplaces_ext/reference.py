"""The 1-D convolution derivation of docs/conv1d.md, as NumPy code (no torch).

Every function is a direct transcription of one numbered equation, written with
explicit sums over kernel taps so that it can serve as an independent reference
for the C++/CUDA kernels. Shapes: x (N, C_in, L), w (C_out, C_in, k), y (N, C_out, L_out).

Padding is described by (left, right) amounts and a mode; ``pad1d`` builds the
padded signal x̃ (eq. 1) and ``pad1d_adjoint`` sends gradients of x̃ back to x
(eq. 5), which is how every boundary mode is differentiated.
"""
from __future__ import annotations

import numpy as np

MODES = ("zeros", "reflect", "replicate", "circular")


def same_padding(k: int, dilation: int = 1) -> tuple[int, int]:
    """(left, right) padding for which L_out = L at stride 1 (eq. 3): total d(k-1), extra on the right."""
    total = dilation * (k - 1)
    return total // 2, total - total // 2


def output_length(length: int, k: int, stride: int, left: int, right: int, dilation: int) -> int:
    """Eq. 2: L_out = floor((L + left + right - d(k-1) - 1) / s) + 1."""
    return (length + left + right - dilation * (k - 1) - 1) // stride + 1


def pad_index(length: int, left: int, right: int, mode: str) -> np.ndarray:
    """Eq. 1: for each position p of the padded signal, the index of x it reads, or -1 for a zero."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    idx = np.arange(-left, length + right)
    if mode == "zeros":
        return np.where((idx >= 0) & (idx < length), idx, -1)
    if mode == "reflect":  # mirror about the first/last sample, which is not repeated
        period = 2 * (length - 1)
        m = np.mod(idx, period) if period > 0 else np.zeros_like(idx)
        return np.where(m < length, m, period - m)
    if mode == "replicate":
        return np.clip(idx, 0, length - 1)
    return np.mod(idx, length)  # circular


def pad1d(x: np.ndarray, left: int, right: int, mode: str = "zeros") -> np.ndarray:
    """x̃ = pad(x) along the last axis (eq. 1)."""
    idx = pad_index(x.shape[-1], left, right, mode)
    padded = x[..., np.maximum(idx, 0)]
    padded[..., idx < 0] = 0.0
    return padded


def pad1d_adjoint(grad_padded: np.ndarray, length: int, left: int, right: int, mode: str = "zeros") -> np.ndarray:
    """dC/dx from dC/dx̃ (eq. 5): each x[t] collects the gradient of every padded position that copies it."""
    idx = pad_index(length, left, right, mode)
    grad = np.zeros(grad_padded.shape[:-1] + (length,), dtype=grad_padded.dtype)
    for p, t in enumerate(idx):
        if t >= 0:
            grad[..., t] += grad_padded[..., p]
    return grad


def conv1d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int = 1,
                   padding: tuple[int, int] = (0, 0), dilation: int = 1, mode: str = "zeros") -> np.ndarray:
    """Eq. 2: y[n,o,i] = b[o] + Σ_c Σ_j w[o,c,j] · x̃[n,c, i·s + j·d]."""
    left, right = padding
    xp = pad1d(x, left, right, mode)
    k = w.shape[-1]
    l_out = output_length(x.shape[-1], k, stride, left, right, dilation)
    y = np.zeros((x.shape[0], w.shape[0], l_out), dtype=np.result_type(x, w))
    for j in range(k):
        taps = xp[:, :, j * dilation: j * dilation + stride * (l_out - 1) + 1: stride]  # x̃[n,c,i·s+j·d]
        y += np.einsum("oc,nci->noi", w[:, :, j], taps)
    if b is not None:
        y += b[None, :, None]
    return y


def conv1d_grad_input(grad_y: np.ndarray, x_length: int, w: np.ndarray, stride: int = 1,
                      padding: tuple[int, int] = (0, 0), dilation: int = 1, mode: str = "zeros") -> np.ndarray:
    """Eq. 4-5: dC/dx̃[n,c,p] = Σ_o Σ_j w[o,c,j] · dC/dy[n,o,i] over i·s + j·d = p; then the padding adjoint."""
    left, right = padding
    k = w.shape[-1]
    l_out = grad_y.shape[-1]
    grad_padded = np.zeros((grad_y.shape[0], w.shape[1], x_length + left + right), dtype=grad_y.dtype)
    for j in range(k):
        grad_padded[:, :, j * dilation: j * dilation + stride * (l_out - 1) + 1: stride] += np.einsum(
            "oc,noi->nci", w[:, :, j], grad_y)
    return pad1d_adjoint(grad_padded, x_length, left, right, mode)


def conv1d_grad_weight(grad_y: np.ndarray, x: np.ndarray, k: int, stride: int = 1,
                       padding: tuple[int, int] = (0, 0), dilation: int = 1, mode: str = "zeros") -> np.ndarray:
    """Eq. 6: dC/dw[o,c,j] = Σ_n Σ_i dC/dy[n,o,i] · x̃[n,c, i·s + j·d]."""
    left, right = padding
    xp = pad1d(x, left, right, mode)
    l_out = grad_y.shape[-1]
    grad_w = np.zeros((grad_y.shape[1], x.shape[1], k), dtype=np.result_type(grad_y, x))
    for j in range(k):
        taps = xp[:, :, j * dilation: j * dilation + stride * (l_out - 1) + 1: stride]
        grad_w[:, :, j] = np.einsum("noi,nci->oc", grad_y, taps)
    return grad_w


def conv1d_grad_bias(grad_y: np.ndarray) -> np.ndarray:
    """Eq. 7: dC/db[o] = Σ_n Σ_i dC/dy[n,o,i]."""
    return grad_y.sum(axis=(0, 2))


def sgd_step(w: np.ndarray, grad_w: np.ndarray, lr: float) -> np.ndarray:
    """Eq. 8: W^{i+1} = W^i − η · dC/dW."""
    return w - lr * grad_w
