"""Low-rank factors of a Linear layer's weight, for inference in bfloat16.

A weight W (m x n) of numerical rank r, r (m + n) well under m n, is run as two products,
x -> (x A^T) B^T with A = r x n and B = m x r: r (m + n) multiply-adds per row instead of m n, and
r (m + n) weights read instead of m n. The course AlexNet's fc6 and fc7 were trained that way
(rank-256 factors, multiplied out into the course's state_dict): fc6 is 4096 x 12544, 103 MB in
bfloat16, and a batch of 32 reads it from memory for 6 ms; its factors are 8.5 MB.

The rank is found, not assumed: a randomized range finder (Halko, Martinsson and Tropp 2011)
grows an orthonormal basis Q of W's range (64, 128, 256, ... columns, and 16 more as a margin)
until 16 random probes W p lie within the tolerance of Q's span, then the SVD of the small Q^T W trims the rank
to the fewest singular values that keep the error within it. The error is measured, not
estimated: ||W - B A||_F^2 = ||W||_F^2 - ||A||_F^2 for A's rows in Q's span, in float64. The
tolerance is the error the cast to bfloat16 already makes, ||W - bf16(W)||_F: factoring may not
cost more accuracy than the dtype already does, so float32 weights are never factored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Weights under this many elements are left alone: their product is cheap and their rank rarely low.
MIN_ELEMENTS = 1 << 20
_PROBES = 16
_FIRST_BASIS = 64
_OVERSAMPLING = 16  # sketch columns beyond the rank tried: the range finder's margin


def cast_error(weight: Tensor, dtype: torch.dtype) -> float:
    """||W - W.to(dtype)||_F / ||W||_F, the relative error of rounding `weight` to `dtype`."""
    w = weight.detach().float()
    rounding = w - w.to(dtype).float()  # exact in float32 for dtypes narrower than it
    return _norm(rounding) / max(_norm(w), 1e-300)


def _norm(x: Tensor) -> float:
    """||x||_F accumulated in float64."""
    return torch.linalg.vector_norm(x, dtype=torch.float64).item()


def low_rank_factors(weight: Tensor, rel_tol: float, max_rank: int | None = None,
                     seed: int = 0) -> tuple[Tensor, Tensor] | None:
    """(A, B) with B @ A within rel_tol * ||W||_F of `weight` (Frobenius norm), A = r x n and
    B = m x r float32, for the smallest r the range finder reaches; None when no rank up to
    `max_rank` (default: the rank at which the factors hold half of W's elements) is that close.
    Deterministic for a given seed."""
    if weight.dim() != 2:
        raise ValueError(f"low_rank_factors: expected a matrix, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    m, n = w.shape
    if max_rank is None:
        max_rank = m * n // (2 * (m + n))
    if max_rank < 1:
        return None
    g = torch.Generator().manual_seed(seed)
    w_norm2 = _norm(w) ** 2
    allowed2 = rel_tol * rel_tol * w_norm2
    probes = w @ torch.randn(n, _PROBES, generator=g)
    probe_norm = probes.norm().item()
    sketch, rank = w.new_empty(m, 0), 0
    while rank < max_rank:
        rank = min(max(2 * rank, _FIRST_BASIS), max_rank)
        columns = min(rank + _OVERSAMPLING, m, n)
        sketch = torch.cat([sketch, w @ torch.randn(n, columns - sketch.shape[1], generator=g)], 1)
        q, _ = torch.linalg.qr(sketch)
        if (probes - q @ (q.T @ probes)).norm().item() > rel_tol * probe_norm:
            continue
        a = q.T @ w  # rows in W's row space; W - q a is what Q's span misses
        missed2 = w_norm2 - _norm(a) ** 2
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        tail2 = torch.flip(torch.cumsum(torch.flip(s.double().square(), [0]), 0), [0])  # tail2[r] = sum s[r:]^2
        keep = max(1, int((missed2 + tail2 > allowed2).sum().item()))  # the fewest values whose tail fits
        if keep > max_rank or missed2 + (tail2[keep].item() if keep < len(s) else 0.0) > allowed2:
            continue
        return (s[:keep, None] * vh[:keep]).contiguous(), (q @ u[:, :keep]).contiguous()
    return None


class LowRankLinear(nn.Module):
    """A Linear layer run as two: ``F.linear(F.linear(x, first), second, bias)``, the weight being
    second @ first (see low_rank_factors). Weights are buffers: an inference module."""

    def __init__(self, first: Tensor, second: Tensor, bias: Tensor | None):
        super().__init__()
        self.register_buffer("first", first)
        self.register_buffer("second", second)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.first), self.second, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.first.shape[1]}, out_features={self.second.shape[0]}, rank={self.first.shape[0]}"


def factor_linear(linear: nn.Linear, dtype: torch.dtype) -> LowRankLinear | None:
    """`linear` as a LowRankLinear when its weight is large (MIN_ELEMENTS) and within the error of
    casting it to `dtype` of a rank that halves its size, else None. Never for float32."""
    if dtype == torch.float32 or linear.weight.numel() < MIN_ELEMENTS:
        return None
    factors = low_rank_factors(linear.weight, cast_error(linear.weight, dtype))
    if factors is None:
        return None
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    return LowRankLinear(factors[0], factors[1], bias)
