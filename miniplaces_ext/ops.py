"""Functional convolutions on our kernels: argument handling, fake kernels, autograd.

The public functions take the arguments of ``torch.nn.functional.conv1d/conv2d``
plus ``padding_mode`` (as in ``nn.Conv1d/nn.Conv2d``). They normalise those
arguments and reduce every case to the kernels' one contract: symmetric zero
padding. Non-zero padding modes and the extra pixel of 'same' padding with even
kernels are applied with ``F.pad`` first, as ``nn.Conv2d`` itself does.
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _ntuple

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

IntOrInts = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[int]]

_ops = torch.ops.miniplaces_ext


def _as_tuple(value: IntOrInts, dims: int, name: str) -> tuple[int, ...]:
    """torch's ``_ntuple`` expansion, with torch's checks: ints only, and 1 or `dims` of them."""
    try:
        values = tuple(operator.index(v) for v in _ntuple(dims)(value))
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from None
    if len(values) == 1:
        values = values * dims
    if len(values) != dims:
        raise RuntimeError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}")
    return values


def _same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding that keeps the spatial size at stride 1."""
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def _check_pad_fits(input: Tensor, pads: list[tuple[int, int]], mode: str) -> None:
    """Raises a readable error where a non-zero padding mode can't pad this input."""
    spatial = input.shape[-len(pads):]
    for size, (before, after) in zip(spatial, pads):
        largest = max(before, after)
        if mode == "reflect" and largest >= size:
            raise RuntimeError(
                f"reflect padding of {largest} needs each padded input dimension to be larger than the padding, "
                f"but the input's spatial size is {tuple(spatial)}"
            )
        if mode == "circular" and largest > size:
            raise RuntimeError(
                f"circular padding of {largest} can't exceed the input's spatial size {tuple(spatial)}"
            )
        if mode == "replicate" and size == 0 and largest > 0:
            raise RuntimeError(f"replicate padding needs a non-empty input, got spatial size {tuple(spatial)}")


def _pad_input(input: Tensor, pads: list[tuple[int, int]], mode: str) -> Tensor:
    """Applies (before, after) padding per spatial dim with F.pad (last dim first)."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return F.pad(input, flat, mode="constant" if mode == "zeros" else mode)


def _convnd(
    dims: int,
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: IntOrInts,
    padding: Padding,
    dilation: IntOrInts,
    groups: int,
    padding_mode: str,
) -> Tensor:
    """The shared front door of conv1d/conv2d: normalise, pad, call the op."""
    name = f"conv{dims}d"
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"{name} expects tensors for input and weight, got {type(input).__name__} and "
                        f"{type(weight).__name__}")
    if input.dim() not in (dims + 1, dims + 2):
        raise RuntimeError(
            f"{name} expects a {dims + 1}-D (unbatched) or {dims + 2}-D (batched) input, "
            f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
        )
    if weight.dim() != dims + 2:
        raise RuntimeError(
            f"{name} expects a {dims + 2}-D weight (out_channels, in_channels/groups, kernel...), "
            f"got a {weight.dim()}-D tensor of shape {tuple(weight.shape)}"
        )
    if input.device != weight.device or (bias is not None and bias.device != input.device):
        devices = [str(t.device) for t in (input, weight, bias) if t is not None]
        raise RuntimeError(f"{name}: input, weight and bias must be on the same device, got {devices}")
    stride_t = _as_tuple(stride, dims, "stride")
    dilation_t = _as_tuple(dilation, dims, "dilation")

    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * dims
        elif padding == "same":
            if any(s != 1 for s in stride_t):
                raise RuntimeError("padding='same' is not supported for strided convolutions")
            pads = _same_padding(weight.shape[2:], dilation_t)
        else:
            raise RuntimeError(f"invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    else:
        pads = [(p, p) for p in _as_tuple(padding, dims, "padding")]
    if any(p < 0 for pair in pads for p in pair):
        raise RuntimeError(f"negative padding is not supported, got {padding!r}")

    unbatched = input.dim() == dims + 1
    x = input.unsqueeze(0) if unbatched else input
    if padding_mode != "zeros":
        _check_pad_fits(x, pads, padding_mode)
        x = _pad_input(x, pads, padding_mode)
        kernel_pad = (0,) * dims
    else:
        kernel_pad = tuple(before for before, _ in pads)
        extra = [(0, after - before) for before, after in pads]
        if any(e for _, e in extra):
            x = _pad_input(x, extra, "zeros")
    op = _ops.conv2d_forward if dims == 2 else _ops.conv1d_forward
    out = op(x, weight, bias, stride_t, kernel_pad, dilation_t, groups)
    return out.squeeze(0) if unbatched else out


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    dilation: IntOrInts = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    """1-D convolution on our kernels; the arguments of ``torch.nn.functional.conv1d``.

    ``padding`` may be an int, a 1-tuple, ``'valid'`` or ``'same'``; ``padding_mode``
    is one of ``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'`` as in
    ``nn.Conv1d``. Input ``(N, C_in, L)`` or unbatched ``(C_in, L)``.
    """
    return _convnd(1, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    dilation: IntOrInts = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    """2-D convolution on our kernels; the arguments of ``torch.nn.functional.conv2d``.

    ``padding`` may be an int, a pair, ``'valid'`` or ``'same'``; ``padding_mode`` is
    one of ``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'`` as in
    ``nn.Conv2d``. Input ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
    """
    return _convnd(2, input, weight, bias, stride, padding, dilation, groups, padding_mode)


# ---------------------------------------------------------------------------
# Fake (meta) kernels: shapes and memory formats, no data.


def _output_memory_format(input: Tensor) -> torch.memory_format:
    """The kernels' rule (csrc/conv.cpp conv_output_memory_format)."""
    channels_last = (
        input.dim() == 4 and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)
    )
    return torch.channels_last if channels_last else torch.contiguous_format


def _conv2d_output_shape(input: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> list[int]:
    """Output shape of the kernel-level conv2d, with the kernels' shape checks."""
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "conv2d_forward expects 4-D input and weight")
    torch._check(groups > 0 and input.shape[1] == weight.shape[1] * groups,
                 lambda: f"input channels {input.shape[1]} don't match weight {tuple(weight.shape)} x groups {groups}")
    torch._check(weight.shape[0] > 0 and weight.shape[0] % groups == 0,
                 lambda: f"output channels {weight.shape[0]} must be positive and divisible by groups {groups}")
    shape = [input.shape[0], weight.shape[0]]
    for size, k, s, p, d in zip(input.shape[2:], weight.shape[2:], stride, padding, dilation):
        torch._check(s > 0 and d > 0 and p >= 0, lambda: "stride/dilation must be positive, padding non-negative")
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        torch._check(out > 0, lambda: "the kernel can't be larger than the padded input")
        shape.append(out)
    return shape


@torch.library.register_fake("miniplaces_ext::conv2d_forward")
def _conv2d_forward_fake(input, weight, bias, stride, padding, dilation, groups):
    shape = _conv2d_output_shape(input, weight, stride, padding, dilation, groups)
    return input.new_empty(shape).contiguous(memory_format=_output_memory_format(input))


@torch.library.register_fake("miniplaces_ext::conv2d_fused")
def _conv2d_fused_fake(input, weight, bias, residual, relu, stride, padding, dilation, groups):
    out = _conv2d_forward_fake(input, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        torch._check(list(residual.shape) == list(out.shape),
                     lambda: f"conv2d_fused: the residual must have the output's shape {list(out.shape)}")
    return out


@torch.library.register_fake("miniplaces_ext::conv2d_fused_")
def _conv2d_fused_inplace_fake(residual, input, weight, bias, relu, stride, padding, dilation, groups):
    _conv2d_fused_fake(input, weight, bias, residual, relu, stride, padding, dilation, groups)


def _pooled_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size (ATen's pooling_output_shape)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1  # floor, as ATen's div_rtn
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@torch.library.register_fake("miniplaces_ext::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(input.dim() == 4, lambda: f"max_pool2d: expected a 4-d [N, C, H, W] input, got {input.dim()} dims")
    shape = list(input.shape[:2])
    for size, k, s, p, d in zip(input.shape[2:], kernel_size, stride, padding, dilation):
        torch._check(k > 0 and s > 0 and d > 0 and 0 <= p <= k // 2,
                     lambda: "max_pool2d: kernel, stride, dilation positive; padding at most half the kernel")
        shape.append(_pooled_size(size, k, s, p, d, ceil_mode))
    torch._check(shape[2] > 0 and shape[3] > 0, lambda: "max_pool2d: the input is smaller than the window")
    return input.new_empty(shape).contiguous(memory_format=_output_memory_format(input))  # ours and torch's rule


@torch.library.register_fake("miniplaces_ext::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    _conv2d_output_shape(input, weight, stride, padding, dilation, groups)
    grad_input = torch.empty_like(input, memory_format=_output_memory_format(input)) if output_mask[0] else None
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None
    grad_bias = weight.new_empty(weight.shape[0]) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("miniplaces_ext::conv1d_forward")
def _conv1d_forward_fake(input, weight, bias, stride, padding, dilation, groups):
    out = _conv2d_forward_fake(input.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride[0]), (0, padding[0]),
                               (1, dilation[0]), groups)
    return out.squeeze(2)


@torch.library.register_fake("miniplaces_ext::conv1d_backward")
def _conv1d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grads = _conv2d_backward_fake(grad_output.unsqueeze(2), input.unsqueeze(2), weight.unsqueeze(2),
                                  (1, stride[0]), (0, padding[0]), (1, dilation[0]), groups, output_mask)
    return tuple(g.squeeze(2) if g is not None and g.dim() == 4 else g for g in grads)


# ---------------------------------------------------------------------------
# Autograd: one setup/backward pair serves the ops and the Function classes, and
# the backward ops are differentiable themselves (double backward), their
# derivatives being again our forward/backward ops.


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, stride, padding, dilation, groups = inputs
    if output.dtype != input.dtype:  # autocast ran the op below a Function's inputs in a lower precision
        input, weight = input.to(output.dtype), weight.to(output.dtype)
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _make_backward(backward_op):
    def backward(ctx, grad_output: Tensor):
        input, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], ctx.has_bias and needs[2]]
        grad_input, grad_weight, grad_bias = backward_op(grad_output, input, weight, *ctx.conv_args, mask)
        return grad_input, grad_weight, grad_bias, None, None, None, None

    return backward


def _setup_double_backward(ctx, inputs, output) -> None:
    grad_output, input, weight, stride, padding, dilation, groups, _mask = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)


def _make_double_backward(forward_op, backward_op):
    """The derivative of backward_op. With gi = J_x(w)^T gy, gw = J_w(x)^T gy, gb = sum(gy) and
    incoming gradients (ggi, ggw, ggb):  d gy = conv(ggi, w) + conv(x, ggw) + ggb,
    d x = grad_input of conv(., ggw) at gy,  d w = grad_weight of conv(ggi, .) at gy."""

    def backward(ctx, gg_input, gg_weight, gg_bias):
        grad_output, input, weight = ctx.saved_tensors
        args = ctx.conv_args
        need_grad_output, need_input, need_weight = ctx.needs_input_grad[:3]
        d_grad_output = d_input = d_weight = None
        if need_grad_output:
            terms = []
            if gg_input is not None:
                terms.append(forward_op(gg_input, weight, None, *args))
            if gg_weight is not None:
                terms.append(forward_op(input, gg_weight, None, *args))
            if gg_bias is not None:
                terms.append(gg_bias.view(1, -1, *[1] * (grad_output.dim() - 2)).expand_as(grad_output))
            d_grad_output = sum(terms[1:], terms[0]) if terms else None
        if need_input and gg_weight is not None:
            d_input = backward_op(grad_output, input, gg_weight, *args, [True, False, False])[0]
        if need_weight and gg_input is not None:
            d_weight = backward_op(grad_output, gg_input, weight, *args, [False, True, False])[1]
        return d_grad_output, d_input, d_weight, None, None, None, None, None

    return backward


class Conv2dFunction(torch.autograd.Function):
    """Autograd Function over ``conv2d_forward``/``conv2d_backward``.

    ``Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)``
    takes kernel-level arguments: 4-D tensors, 2-tuples, symmetric zero padding.
    ``miniplaces_ext.conv2d`` is the user-level entry point.
    """

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        return _ops.conv2d_forward(input, weight, bias, stride, padding, dilation, groups)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_make_backward(_ops.conv2d_backward))


class Conv1dFunction(torch.autograd.Function):
    """Autograd Function over ``conv1d_forward``/``conv1d_backward`` (3-D tensors, 1-tuples)."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        return _ops.conv1d_forward(input, weight, bias, stride, padding, dilation, groups)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_make_backward(_ops.conv1d_backward))


for _fn, _dims in ((Conv2dFunction, 2), (Conv1dFunction, 1)):
    _forward, _backward = f"conv{_dims}d_forward", f"conv{_dims}d_backward"
    torch.library.register_autograd(f"miniplaces_ext::{_forward}", _fn.backward, setup_context=_fn.setup_context)
    torch.library.register_autograd(
        f"miniplaces_ext::{_backward}",
        _make_double_backward(getattr(_ops, _forward), getattr(_ops, _backward)),
        setup_context=_setup_double_backward)
