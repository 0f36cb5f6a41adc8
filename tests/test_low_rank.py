"""Low-rank Linear layers (low_rank.py): the rank is found within the tolerance and no further,
full-rank and small weights are left alone, float32 is never factored, and a factored network
in bfloat16 stays within a bound derived from the dtype and the tolerance."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import miniplaces_ext as me
from miniplaces_ext.low_rank import MIN_ELEMENTS, LowRankLinear, cast_error, factor_linear, low_rank_factors


def _low_rank(m: int, n: int, rank: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """An m x n matrix of the given rank (singular values 1 .. 0.1), plus Gaussian noise of relative size `noise`."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
    w = u @ torch.diag(torch.logspace(0, -1, rank, dtype=torch.float64)) @ v.T
    w += noise * w.norm() / (m * n) ** 0.5 * torch.randn(m, n, generator=g, dtype=torch.float64)
    return w.float()


def _relative_error(w: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> float:
    return ((w.double() - second.double() @ first.double()).norm() / w.double().norm()).item()


@pytest.mark.parametrize("rank", [5, 40, 100])
def test_the_rank_of_a_low_rank_matrix_is_found(rank):
    w = _low_rank(600, 1800, rank, noise=1e-5)
    first, second = low_rank_factors(w, 1e-3)
    assert first.shape == (rank, 1800) and second.shape == (600, rank)
    assert _relative_error(w, first, second) <= 1e-3


def test_the_tolerance_is_met_with_the_fewest_singular_values():
    """A spectrum decaying 1 .. 1e-4 over 200 values: for each tolerance, the error is within it,
    with at most a few singular values more than the SVD's best rank (Eckart-Young); the range
    finder's basis is an approximation of the leading subspace, not the subspace itself."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(500, 200, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(900, 200, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -4, 200, dtype=torch.float64)
    w = (u * s) @ v.T
    for tol in (1e-1, 3e-2, 1e-2):
        first, second = low_rank_factors(w.float(), tol)
        r = first.shape[0]
        assert _relative_error(w, first, second) <= tol
        tails = torch.flip(torch.cumsum(torch.flip(s.square(), [0]), 0), [0]).sqrt() / s.norm()
        best = int((tails > tol).sum())
        assert best <= r <= best + 2 + best // 10, (tol, r, best)


def test_full_rank_weights_are_not_factored():
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(2))
    assert low_rank_factors(w, cast_error(w, torch.bfloat16)) is None


def test_only_large_bfloat16_linears_are_factored():
    big = nn.Linear(2048, 1024)
    big.weight.data = _low_rank(1024, 2048, 24)
    assert big.weight.numel() >= MIN_ELEMENTS
    assert factor_linear(big, torch.float32) is None  # float32's rounding is far below any truncation
    factored = factor_linear(big, torch.bfloat16)
    assert isinstance(factored, LowRankLinear) and factored.first.shape[0] == 24
    small = nn.Linear(512, 512)
    small.weight.data = _low_rank(512, 512, 8)
    assert factor_linear(small, torch.bfloat16) is None


class _Classifier(nn.Module):
    """Conv -> flatten -> a large rank-24 Linear -> ReLU -> a small Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 16 * 16, 1024)
        self.fc1.weight.data = _low_rank(1024, 8 * 16 * 16, 24, seed=3) * 0.05
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(self.conv(x), 1))))


def test_a_factored_network_stays_within_the_bfloat16_bound():
    """|got - ref| <= eps|ref| + 4 eps (|x| |A|^T |B|^T + |h| |W2|^T ...) + ||x|| tol ||W||_F: each
    of the operands x, A, B and the rank-24 intermediate rounded once to bfloat16, plus what the
    truncation may miss (Cauchy-Schwarz on each row of W - BA). Checked on fc1's output directly."""
    torch.manual_seed(0)
    net = _Classifier().eval()
    fast = me.optimize_for_inference(net, dtype=torch.bfloat16)
    assert fast.body.fused["low_rank_linears"] == 1
    assert me.optimize_for_inference(net).body.fused["low_rank_linears"] == 0
    assert me.optimize_for_inference(net, torch.bfloat16, factor_linears=False).body.fused["low_rank_linears"] == 0
    factored = fast.body.fc1
    assert isinstance(factored, LowRankLinear) and factored.first.shape[0] == 24
    x = torch.randn(4, 8 * 16 * 16).relu()
    w = net.fc1.weight.detach()
    with torch.no_grad():
        ref = F.linear(x.double(), w.double(), net.fc1.bias.double())
        got = factored(x.bfloat16()).double()
    a, b = factored.first.double(), factored.second.double()
    eps = torch.finfo(torch.bfloat16).eps
    tol = cast_error(w, torch.bfloat16)
    bound = (eps * ref.abs() + 4 * eps * (x.double().abs() @ a.abs().T @ b.abs().T + net.fc1.bias.double().abs())
             + x.double().norm(dim=1, keepdim=True) * tol * w.double().norm())
    assert ((got - ref).abs() <= bound).all(), ((got - ref).abs() / bound).max().item()
    with torch.no_grad():
        whole = fast(torch.randn(4, 3, 16, 16))
    assert whole.dtype == torch.float32 and whole.shape == (4, 10) and torch.isfinite(whole).all()
