"""optimize_for_inference: BatchNorm folded in float64, ReLU and residual adds fused into
conv2d_fused, the same answers as the original network (fp32 to rounding, bf16 by top-1 on real
images), what cannot be fused left as it was, refusals, and torch.compile(fullgraph=True)."""
from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import miniplaces_ext as me
from conftest import PROVIDED_WEIGHTS, miniplaces_root, requires_data, requires_weights
from miniplaces_ext import cli, data, models
from miniplaces_ext.inference import FusedConv2d, fold_batch_norm


def _randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so that folding matters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


class TinyNet(nn.Module):
    """Conv-BN-ReLU, a residual block, a conv with bias and no BN, a BN after a pool (not fusable)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a_bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(8)
        self.plain = nn.Conv2d(8, 4, 1, stride=2)
        self.pool = nn.AvgPool2d(2)
        self.pool_bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.a_bn(self.a(x)))
        x = F.relu(self.b_bn(self.b(y)) + x)
        return self.pool_bn(self.pool(self.plain(x))).flatten(1)


def test_fold_batch_norm_is_the_eval_batch_norm_of_the_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1).double()
    bn = _randomise_batch_norms(nn.Sequential(nn.BatchNorm2d(7))).double()[0]
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    weight, bias = fold_batch_norm(conv, bn)
    torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_a_small_net_is_fused_where_it_can_be_and_answers_the_same(caplog):
    torch.manual_seed(0)
    net = _randomise_batch_norms(TinyNet())
    before = copy.deepcopy(net.state_dict())
    with caplog.at_level(logging.DEBUG, logger="miniplaces_ext.inference"):
        fast = me.optimize_for_inference(net)
    assert fast.body.fused == {"convs": 4, "batch_norms": 3, "relus": 3, "residuals": 1, "over_residual": 1,
                               "low_rank_linears": 0, "max_pools": 0}
    assert "pool_bn" in caplog.text  # the BatchNorm after the pool stays, and is named
    fused = [m for m in fast.modules() if isinstance(m, FusedConv2d)]
    assert len(fused) == 4 and sum(m.relu for m in fused) == 3
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the original untouched
    assert net.training is False and isinstance(net.stem[1], nn.BatchNorm2d)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        ref, got = net(x), fast(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


class SkipReadTwice(nn.Module):
    """Residual adds whose skip tensor must survive: the network's input, and a tensor read again
    after the add."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.a(x) + x)      # x is the caller's input
        z = F.relu(self.b(y))
        u = F.relu(self.c(z) + y)      # y (a conv's output) is read again below
        return u + y


def test_only_dead_residuals_are_written_over():
    """optimize_for_inference writes a conv's result over its residual (conv2d_fused_) only where
    the residual is another fused conv's output that nothing reads afterwards: never the caller's
    input, never a tensor read again."""
    torch.manual_seed(0)
    net = SkipReadTwice().eval()
    fast = me.optimize_for_inference(net)
    assert fast.body.fused["residuals"] == 2 and fast.body.fused["over_residual"] == 0
    x = torch.randn(2, 8, 10, 10)
    kept = x.clone()
    with torch.no_grad():
        got = fast(x)
        ref = net(x)
    assert torch.equal(x, kept)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    tiny = me.optimize_for_inference(_randomise_batch_norms(TinyNet()), dtype=torch.bfloat16)
    marked = [m for m in tiny.modules() if isinstance(m, FusedConv2d) and m.over_residual]
    assert len(marked) == 1 and "over_residual=True" in repr(marked[0])


def test_refusals():
    net = TinyNet()
    with pytest.raises(ValueError, match="training mode; call model.eval"):
        me.optimize_for_inference(net.train())
    with pytest.raises(ValueError, match="dtype must be"):
        me.optimize_for_inference(net.eval(), dtype=torch.float16)
    fast = me.optimize_for_inference(net.eval())
    with pytest.raises(RuntimeError, match="must not require grad"):
        fast(torch.randn(1, 3, 8, 8, requires_grad=True))


def test_torch_compile_fullgraph_of_the_fused_net():
    torch._dynamo.reset()
    net = _randomise_batch_norms(TinyNet())
    fast = me.optimize_for_inference(net)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(compiled, fast(x), rtol=0, atol=0)


@requires_weights
@requires_data
@pytest.mark.parametrize("arch", ["resnet18", "alexnet"])
def test_course_networks_give_the_original_answers(arch):
    """On 64 real val images: float32 agrees with the original network on every top-1 and within
    1e-4 of the largest logit; bfloat16 (weights and activations; AlexNet's fc6 and fc7 factored
    to rank 256) on at least 90 % of the top-1 (measured: 100 % for ResNet-18)."""
    weights = PROVIDED_WEIGHTS if arch == "resnet18" else _find_or_skip(arch)
    model = models.load_checkpoint(arch, weights).eval()
    dataset = data.MiniplacesDataset(miniplaces_root(), "val", limit=64)
    x = torch.stack([dataset[i].image for i in range(len(dataset))])
    fp32 = me.optimize_for_inference(model)
    expected_convs = {"resnet18": 20, "alexnet": 5}[arch]
    assert fp32.body.fused["convs"] == fp32.body.fused["batch_norms"] == expected_convs
    assert fp32.body.fused["residuals"] == {"resnet18": 8, "alexnet": 0}[arch]
    with torch.no_grad():
        ref = model(x)
        got = fp32(x)
        bf16 = me.optimize_for_inference(model, dtype=torch.bfloat16)
        low = bf16(x)
    assert bf16.body.fused["low_rank_linears"] == {"resnet18": 0, "alexnet": 2}[arch]  # AlexNet's fc6, fc7
    assert bf16.body.fused["max_pools"] == {"resnet18": 0, "alexnet": 2}[arch]
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def _find_or_skip(arch: str):
    try:
        return models.find_weights(arch)
    except FileNotFoundError as exc:
        pytest.skip(f"no {arch} weights: {exc}")


def test_a_swapped_net_is_fused_too():
    """After swap_convs the convolutions are miniplaces_ext.nn.Conv2d: traced as leaves, fused alike."""
    net = _randomise_batch_norms(TinyNet())
    fast = me.optimize_for_inference(me.swap_convs(copy.deepcopy(net)).eval())
    assert fast.body.fused["convs"] == 4 and fast.body.fused["residuals"] == 1
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="reuse_freed_memory sets glibc's malloc thresholds; this C library is not glibc")
def test_reuse_freed_memory_sets_glibc_thresholds_and_the_commands_call_it(monkeypatch):
    """The commands keep freed memory for the next batch (allocator.py): mallopt accepts both thresholds."""
    assert me.reuse_freed_memory() is True
    calls = []
    monkeypatch.setattr(cli, "reuse_freed_memory", lambda: calls.append(1) or True)
    cli.setup(argparse.Namespace(verbose=False, threads=None, device="cpu"))
    assert calls == [1]


def test_a_network_running_in_another_thread_is_not_caught_in_the_trace():
    """torch.fx patches nn.Module.__call__ process-wide while optimize_for_inference traces: a
    network evaluated meanwhile in another thread (the web page's neighbour index) must run as usual."""
    import threading

    errors: list[str] = []
    stop = threading.Event()
    other = TinyNet().eval()

    def run() -> None:
        x = torch.randn(1, 3, 12, 12)
        while not stop.is_set():
            try:
                with torch.no_grad():
                    other(x)
            except Exception as exc:  # noqa: BLE001 - what the thread saw is the assertion
                errors.append(repr(exc))
                return

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(30):
            me.optimize_for_inference(_randomise_batch_norms(TinyNet()))
    finally:
        stop.set()
        worker.join()
    assert errors == []
