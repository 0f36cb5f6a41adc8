"""Differential fuzzing against torch: random conv1d/conv2d configurations, outputs and all
three gradients. Invalid configurations must raise the same kind of error as torch.

CI runs a bounded profile (300 examples per test); a deep run:
    MINIPLACES_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miniplaces_ext as me
from conftest import torch_reference

EXAMPLES = int(os.environ.get("MINIPLACES_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("MINIPLACES_FUZZ_RANDOM") is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reference(dims, x, w, b, stride, padding, dilation, groups, mode):
    """torch's semantics: F.convNd for zeros; nn.ConvNd's pad-then-convolve for the other modes."""
    conv = F.conv2d if dims == 2 else F.conv1d
    if mode == "zeros":
        return conv(x, w, b, stride, padding, dilation, groups)
    k = w.shape[2:]
    dil = (dilation,) * dims if isinstance(dilation, int) else dilation
    if padding == "same":
        if stride != 1:
            raise ValueError("nn.ConvNd rejects padding='same' with stride > 1")
        pairs = [(d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2) for kk, d in zip(k, dil)]
    elif padding == "valid":
        pairs = [(0, 0)] * dims
    else:
        p = (padding,) * dims if isinstance(padding, int) else padding
        pairs = [(pp, pp) for pp in p]
    if any(pp < 0 for pair in pairs for pp in pair):
        raise RuntimeError("negative padding")
    flat = [v for pair in reversed(pairs) for v in pair]
    return conv(F.pad(x, flat, mode=mode), w, b, stride, 0, dilation, groups)


@st.composite
def configs(draw, dims):
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    c_in = groups * draw(st.integers(1, max(1, 16 // groups)))
    c_out = groups * draw(st.integers(1, max(1, 16 // groups)))
    if draw(st.integers(0, 19)) == 0:  # sometimes an invalid channel count
        c_in += 1
    spatial = tuple(draw(st.integers(1, 40 if dims == 1 else 20)) for _ in range(dims))
    kernel = tuple(draw(st.integers(1, 7)) for _ in range(dims))
    return dict(
        batch=draw(st.integers(0, 4)), c_in=c_in, c_out=c_out, groups=groups, spatial=spatial, kernel=kernel,
        stride=draw(st.integers(1, 4)),
        padding=draw(st.one_of(st.integers(0, 4), st.sampled_from(["same", "valid"]))),
        dilation=draw(st.integers(1, 3)),
        mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        layout=draw(st.sampled_from(["contiguous", "non_contiguous", "channels_last"])),
    )


def _make(cfg, dims):
    gen = torch.Generator().manual_seed(0)
    shape = (cfg["batch"], cfg["c_in"], *cfg["spatial"])
    if cfg["layout"] == "non_contiguous":
        x = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=cfg["dtype"])[..., ::2]
    else:
        x = torch.randn(*shape, generator=gen, dtype=cfg["dtype"])
        if cfg["layout"] == "channels_last" and dims == 2:
            x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cfg["c_out"], cfg["c_in"] // cfg["groups"] or 1, *cfg["kernel"], generator=gen,
                    dtype=cfg["dtype"]) * 0.3
    b = torch.randn(cfg["c_out"], generator=gen, dtype=cfg["dtype"]) if cfg["bias"] else None
    return x, w, b


def _run(fn, x, w, b, cfg):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = fn(*leaves, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(grad)
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


def check(cfg, dims):
    x, w, b = _make(cfg, dims)
    ours_fn = me.conv2d if dims == 2 else me.conv1d
    try:
        with torch_reference(x, w, cfg["stride"], cfg["padding"]):
            theirs = _run(lambda *a: reference(dims, *a), x, w, b, cfg)
    except (RuntimeError, ValueError) as exc:
        with pytest.raises((RuntimeError, ValueError)) as info:
            _run(ours_fn, x, w, b, cfg)
        if cfg["mode"] == "zeros":  # the functional reference's error kind is torch's
            assert isinstance(info.value, type(exc)) or isinstance(exc, type(info.value)), (info.value, exc)
        return
    ours = _run(ours_fn, x, w, b, cfg)
    tol = dict(rtol=1e-4, atol=1e-4) if cfg["dtype"] == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    for name, a, r in zip(("out", "grad_input", "grad_weight", "grad_bias"), ours, theirs):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, **tol, msg=lambda m: f"{name} {cfg}: {m}")


@FUZZ
@given(configs(2))
def test_fuzz_conv2d(cfg):
    check(cfg, 2)


@FUZZ
@given(configs(1))
def test_fuzz_conv1d(cfg):
    check(cfg, 1)
