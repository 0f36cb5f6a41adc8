"""The Winograd F(4x4, 3x3) kernel: exact tails at every ISA level, its float32 error on real
ResNet-18 activations held to the bound documented in docs/winograd.md, and the dispatcher
choosing it (and only it) where it should."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import PROVIDED_WEIGHTS, isa_params, miniplaces_root, requires_data, requires_weights, use_cpu_kernel
from miniplaces_ext import data, models


# docs/winograd.md: max|err| / max|reference| measured on the 13 layers of the trained network
# is 6.8e-6 forward and 2.0e-5 for grad_input (direct kernel: 1.5e-6, 3.1e-6); the tests allow
# about 3x that. Per element, |err| / sum |x||w| over its taps was at most 2.3e-5.
MAX_RELATIVE_ERROR = 2e-5
MAX_RELATIVE_ERROR_GRAD_INPUT = 5e-5
ELEMENT_ERROR = 1e-4


def relative_errors(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, padding: int) -> tuple[float, float]:
    """(max|err| / max|ref|, max |err| / (|x| * |w|)) against a float64 reference."""
    ref = F.conv2d(x.double(), w.double(), None, 1, padding)
    scale = F.conv2d(x.double().abs(), w.double().abs(), None, 1, padding).clamp_min(1e-30)
    err = (out.double() - ref).abs()
    return (err.max() / ref.abs().max()).item(), (err / scale).max().item()


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("out_channels, in_channels", [(1, 1), (5, 3), (17, 9), (40, 33)])
@pytest.mark.parametrize("size", [(1, 1), (4, 4), (5, 7), (9, 13), (16, 3)])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_tails_at_every_level(isa, out_channels, in_channels, size, padding, monkeypatch):
    """Output sizes that cut 4x4 tiles, channels that fill part of a vector or register block,
    zero padding 0-2 (border tiles read outside the input), bias: against float64 torch."""
    h, w = size
    if min(h, w) + 2 * padding < 3:
        pytest.skip("the kernel does not fit in the padded input")
    use_cpu_kernel((isa, "winograd"))
    gen = torch.Generator().manual_seed(out_channels * 1000 + h * 10 + w)
    x = torch.randn(2, in_channels, h, w, generator=gen)
    wt = torch.randn(out_channels, in_channels, 3, 3, generator=gen)
    b = torch.randn(out_channels, generator=gen)
    out = me.conv2d(x, wt, b, padding=padding)
    assert out.shape == F.conv2d(x, wt, b, padding=padding).shape
    max_rel, element = relative_errors(out - b.view(-1, 1, 1), x, wt, padding)
    assert max_rel < MAX_RELATIVE_ERROR and element < ELEMENT_ERROR, (max_rel, element)


@pytest.fixture(scope="module")
def resnet_activations() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input and weight of every 3x3 stride-1 conv of the provided ResNet-18 on 8 real val images."""
    root = miniplaces_root()
    model = models.load_checkpoint("resnet18", PROVIDED_WEIGHTS).eval()
    items = data.read_split(root, "val")[:8]
    x = torch.stack([data.load_image(root / "images" / path) for path, _ in items])
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def capture(name: str):
        def hook(module, inputs, output) -> None:
            captured[name] = (inputs[0], module.weight.detach())
        return hook

    hooks = [m.register_forward_hook(capture(name)) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert len(captured) == 13  # 16 3x3 convs, 3 of them stride 2
    return captured


@requires_data
@requires_weights
@pytest.mark.parametrize("isa", isa_params())
def test_error_on_real_resnet_activations(isa, resnet_activations, monkeypatch):
    """The documented error bound holds on every 3x3 stride-1 layer of the trained network,
    forward and grad_input (a Winograd convolution of grad_output with the flipped weight)."""
    use_cpu_kernel((isa, "winograd"))
    for name, (x, w) in resnet_activations.items():
        out = me.conv2d(x, w, None, 1, 1)
        max_rel, element = relative_errors(out, x, w, 1)
        assert max_rel < MAX_RELATIVE_ERROR and element < ELEMENT_ERROR, (name, max_rel, element)
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
        dx = torch.ops.miniplaces_ext.conv2d_backward(dy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, False, False])[0]
        flipped = w.transpose(0, 1).flip(2, 3)
        max_rel, element = relative_errors(dx, dy, flipped, 1)
        assert max_rel < MAX_RELATIVE_ERROR_GRAD_INPUT and element < ELEMENT_ERROR, (name, "grad_input", max_rel, element)


def _run(algo: str, monkeypatch, *args, **kwargs) -> torch.Tensor:
    me.set_cpu_options(algo=algo)
    return me.conv2d(*args, **kwargs)


def test_auto_takes_winograd_where_it_pays(monkeypatch):
    """auto = Winograd bit for bit on a ResNet layer with many tiles (and not the direct kernel's
    bits); with few tiles, or for stride 2, auto is the direct kernel bit for bit; in between,
    Winograd only where the transformed weight is kept (an evaluation forward, not a training one)."""
    if me.cpu_capabilities()["chosen"] == "portable":
        pytest.skip("at the portable level auto takes im2col + GEMM")
    x, w = torch.randn(8, 64, 32, 32), torch.randn(64, 64, 3, 3)
    auto = _run("auto", monkeypatch, x, w, padding=1)
    assert torch.equal(auto, _run("winograd", monkeypatch, x, w, padding=1))
    assert not torch.equal(auto, _run("direct", monkeypatch, x, w, padding=1))
    small = torch.randn(1, 64, 8, 8)  # 4 tiles: the weight transform would not pay
    assert torch.equal(_run("auto", monkeypatch, small, w, padding=1), _run("direct", monkeypatch, small, w, padding=1))
    assert torch.equal(_run("auto", monkeypatch, x, w, padding=1, stride=2),
                       _run("direct", monkeypatch, x, w, padding=1, stride=2))
    # 32 tiles: not enough to repay a weight transform per call (a training forward), enough when
    # the transformed weight is kept (inference_mode, no_grad).
    mid = torch.randn(2, 64, 16, 16)
    me.set_cpu_options(algo="auto")
    assert me.cpu_conv_algorithm(mid, w, padding=1, phase="training_forward") == "direct"
    assert me.cpu_conv_algorithm(mid, w, padding=1) == "winograd"
    training = mid.clone().requires_grad_()
    assert torch.equal(_run("auto", monkeypatch, training, w, padding=1).detach(),
                       _run("direct", monkeypatch, training, w, padding=1).detach())
    for evaluation in (torch.inference_mode, torch.no_grad):
        with evaluation():
            assert torch.equal(_run("auto", monkeypatch, training, w, padding=1),
                               _run("winograd", monkeypatch, training, w, padding=1))


def test_forced_winograd_elsewhere_takes_the_default(monkeypatch):
    """MINIPLACES_CPU_ALGO=winograd on a layer Winograd cannot compute (stride 2, 5x5, groups)
    runs what auto runs, bit for bit."""
    x = torch.randn(2, 8, 12, 12)
    for w, kwargs in [(torch.randn(16, 8, 3, 3), dict(stride=2, padding=1)), (torch.randn(16, 8, 5, 5), {}),
                      (torch.randn(16, 4, 3, 3), dict(groups=2, padding=1))]:
        assert torch.equal(_run("winograd", monkeypatch, x, w, **kwargs), _run("auto", monkeypatch, x, w, **kwargs))


@pytest.mark.parametrize("algo", ["winograd", "direct"])
def test_inference_weight_cache_follows_the_weight(algo, monkeypatch):
    """Outside training (inference_mode, no_grad) the packed weight is kept and reused, and an
    in-place change of the weight (a new version) or a new weight tensor is never answered from
    a stale entry; a training forward, through the op or through Conv2dFunction, caches nothing."""
    me.set_cpu_options(algo=algo)
    me.clear_weight_cache()
    conv = me.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(4, 16, 16, 16)
    conv(x).sum().backward()  # grad mode on, the weight requires grad: a training step packs afresh
    me.Conv2dFunction.apply(x, conv.weight, conv.bias, (1, 1), (1, 1), (1, 1), 1)
    assert me.weight_cache_size() == 0
    with torch.no_grad():  # evaluation: the weight stays packed
        first = conv(x)
        assert me.weight_cache_size() == 1
        assert torch.equal(conv(x), first) and me.weight_cache_size() == 1
        conv.weight.mul_(-1)  # in place: bumps the version counter
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-4)
    conv.weight.grad = None
    out = conv(x)  # a training forward after evaluation reads the current weight
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-4)
    infer = torch.inference_mode()(conv)
    torch.testing.assert_close(infer(x), out.detach(), rtol=0, atol=0)
    conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))  # a new tensor
    torch.testing.assert_close(infer(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-4)
    conv.weight.data.zero_()  # through .data: the version counter cannot see it; clearing is documented
    me.clear_weight_cache()
    torch.testing.assert_close(infer(x), conv.bias.detach().view(1, -1, 1, 1).expand(4, -1, 16, 16))
    del conv, infer
    fresh = me.Conv2d(16, 16, 3, padding=1)
    with torch.inference_mode():  # the next insert forgets entries of tensors that are gone
        fresh(x)
    assert me.weight_cache_size() == 1
    me.clear_weight_cache()


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_channels_last_weight_is_read_in_place(grad, monkeypatch):
    """The weight transform reads a channels_last weight (a model after .to(channels_last))
    through its strides: same bits as the contiguous weight, forward and grad_input."""
    me.set_cpu_options(algo="winograd")
    x = torch.randn(2, 24, 10, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 24, 3, 3)
    results = []
    for weight in (w, w.contiguous(memory_format=torch.channels_last)):
        assert weight.is_contiguous() != (weight is not w)
        xi = x.clone().requires_grad_(grad)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        with ctx:
            out = me.conv2d(xi, weight, padding=1)
            if grad:
                out.backward(torch.ones_like(out))
        results.append((out.detach().clone(), xi.grad.clone() if grad else None))
    assert torch.equal(results[0][0], results[1][0])
    if grad:
        assert torch.equal(results[0][1], results[1][1])
