"""miniplaces_ext::max_pool2d: exactly F.max_pool2d's values (NaN where torch has NaN, zeros
of its sign) and layout, at every ISA level,
over window shapes, strides, padding, dilation, ceil_mode, channel counts around the kernel's
64-channel passes, NaN and signed zeros; other layouts and dtypes go to torch; bad arguments
raise torch's kind of message."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import isa_params

OP = torch.ops.miniplaces_ext.max_pool2d

CASES = [  # (kernel, stride, padding, dilation, ceil_mode)
    ((3, 3), (2, 2), (0, 0), (1, 1), False),  # AlexNet's
    ((3, 3), (2, 2), (1, 1), (1, 1), False),  # torchvision ResNet's stem pool
    ((2, 3), (1, 2), (1, 1), (1, 1), True),
    ((3, 2), (2, 1), (1, 0), (2, 1), True),
    ((1, 1), (3, 3), (0, 0), (1, 1), False),
]


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [1, 63, 64, 130])
def test_values_and_layout_are_torchs(isa, dtype, channels):
    me.set_cpu_options(isa=isa)
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 11, 10, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, :, 2, 3] = float("nan")  # NaN wins its windows, as in torch
    x[1, :, 2:8, 2:8] = -1.0
    x[1, :, 4:6, 4:6] = -0.0      # signed zeros keep torch's first-wins order
    x[1, :, 5, 5] = 0.0
    x[1, :, 7:, :] = -5.0 - torch.rand(x[1, :, 7:, :].shape, generator=g).to(dtype)  # an all-negative corner: padding is never read
    for kernel, stride, padding, dilation, ceil_mode in CASES:
        want = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        got = OP(x, kernel, stride, padding, dilation, ceil_mode)
        assert got.shape == want.shape and got.stride() == want.stride() and got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)  # NaN payloads may differ
        zeros = want == 0
        assert torch.equal(got.signbit()[zeros], want.signbit()[zeros]), (kernel, stride)  # -0 where torch has -0


@pytest.mark.parametrize("layout", ["nchw", "strided", "float64"])
def test_other_inputs_go_to_torch(layout):
    x = torch.randn(2, 6, 9, 9)
    x = {"nchw": x, "strided": x[:, ::2], "float64": x.double().contiguous(memory_format=torch.channels_last)}[layout]
    got = OP(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    want = F.max_pool2d(x, 3, 2, 1)
    assert torch.equal(got, want) and got.stride() == want.stride()


@pytest.mark.parametrize("args, message", [
    (([3, 3], [0, 2], [0, 0], [1, 1], False), "must be positive"),
    (([3, 3], [2, 2], [2, 0], [1, 1], False), "half the kernel"),
    (([9, 9], [1, 1], [0, 0], [2, 2], False), "smaller than"),
])
def test_bad_arguments_are_refused(args, message):
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=message):
        OP(x, *args)


def test_optimized_networks_pool_with_it_and_compile_fullgraph():
    """optimize_for_inference swaps nn.MaxPool2d for the op; torch.compile(fullgraph=True) traces it
    through its fake kernel and gives the same answers."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 7 * 7, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    for dtype in (torch.float32, torch.bfloat16):
        fast = me.optimize_for_inference(net, dtype)
        assert fast.body.fused["max_pools"] == 1
        with torch.no_grad():
            eager = fast(x)
            compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
