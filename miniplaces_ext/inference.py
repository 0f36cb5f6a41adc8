"""optimize_for_inference: a copy of a network prepared for evaluation on our kernels, the way
inductor's freezing or ipex.optimize prepare one.

    fast = miniplaces_ext.optimize_for_inference(model.eval(), dtype=torch.bfloat16)
    with torch.no_grad():
        logits = fast(images)          # float32 NCHW in, float32 logits out

The network is traced with torch.fx and every convolution becomes one ``conv2d_fused`` call
(FusedConv2d): a BatchNorm that follows it is folded into its weight and bias (in float64,
then cast), and a ReLU that follows it, or a residual add followed by a ReLU (a ResNet
BasicBlock's tail), becomes the op's epilogue, which our CPU kernels apply to their float32 sums
before they write them (one rounding for bfloat16, no pass over memory afterwards). Weights are stored channels_last (and in
bfloat16 with dtype=torch.bfloat16) once, when the copy is built; the input is cast once on the
way in and the logits once on the way out, so no autocast is needed around it. What cannot be
fused (a BatchNorm after something other than a convolution, a non-zero padding mode) runs as
it was, and a debug log line names it. It serves the course ResNet-18 and AlexNet and any
network made of Conv2d / BatchNorm2d / ReLU / add that torch.fx can trace.
"""
from __future__ import annotations

import copy
import logging
import operator
import threading

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from miniplaces_ext.low_rank import factor_linear

log = logging.getLogger("miniplaces_ext.inference")

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


class FusedConv2d(nn.Module):
    """relu?(conv2d(x, weight, bias) + residual?) in one ``miniplaces_ext::conv2d_fused`` call;
    weight and bias are buffers (an inference module has no parameters to train). With
    ``over_residual`` the result is written over the residual (``conv2d_fused_``), which the caller
    guarantees nothing reads afterwards."""

    def __init__(self, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], groups: int, relu: bool):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation, self.groups, self.relu = stride, padding, dilation, groups, relu
        self.over_residual = False

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if residual is not None and self.over_residual:
            torch.ops.miniplaces_ext.conv2d_fused_(residual, x, self.weight, self.bias, self.relu, self.stride,
                                                   self.padding, self.dilation, self.groups)
            return residual
        return torch.ops.miniplaces_ext.conv2d_fused(x, self.weight, self.bias, residual, self.relu, self.stride,
                                                     self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, relu={self.relu}"
                + (", over_residual=True" if self.over_residual else ""))


class MaxPool2d(nn.Module):
    """nn.MaxPool2d (no indices) as one ``miniplaces_ext::max_pool2d`` call: channels_last float32 and
    bfloat16 images pooled by our vector kernel, channels_last out; anything else by torch."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        pair = torch.nn.modules.utils._pair
        self.kernel_size, self.dilation, self.padding = pair(pool.kernel_size), pair(pool.dilation), pair(pool.padding)
        self.stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.ceil_mode = pool.ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.miniplaces_ext.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                                   self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class InferenceModel(nn.Module):
    """The fused network between one cast in (dtype, channels_last) and one cast out (float32)."""

    def __init__(self, body: nn.Module, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.body, self.dtype, self.channels_last = body, dtype, channels_last

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("optimize_for_inference's model is for evaluation: its input must not require grad "
                               "(use the original model to train or to take input gradients)")
        memory_format = torch.channels_last if self.channels_last and x.dim() == 4 else torch.preserve_format
        # The dtype first, then the layout: two vectorised passes (0.50 ms for 32 images of 3 x 128 x 128
        # on 2 threads) beat aten's one converting permutation (0.88 ms).
        return self.body(x.to(dtype=self.dtype).contiguous(memory_format=memory_format)).float()


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The weight and bias of conv followed by bn in eval mode, computed in float64: weight x s and
    (bias - mean) x s + beta with s = gamma / sqrt(var + eps), both cast to conv's weight dtype."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = (w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
    return weight, ((b - bn.running_mean.double()) * scale + beta).to(conv.weight.dtype)


class _ConvLeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, with every Conv2d a leaf: miniplaces_ext.nn.Conv2d (swap_convs) too.

    While it traces, torch.fx patches nn.Module.__call__ and __getattr__ for the whole process, so
    a network running in another thread (a web page's background indexing, say) would be routed
    into this trace and fail ("module is not installed as a submodule"). Calls from other threads
    run as they would untraced."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(node: torch.fx.Node | None, modules: dict[str, nn.Module]) -> bool:
    return node is not None and (
        (node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU))
        or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
        or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _is_add(node: torch.fx.Node | None) -> bool:
    return node is not None and len(node.args) == 2 and not node.kwargs and (
        (node.op == "call_function" and node.target in _ADD_FUNCTIONS)
        or (node.op == "call_method" and node.target in ("add", "add_")))


def _fuse(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Replaces every zero-padded Conv2d (with the BatchNorm, ReLU or add + ReLU after it) by a
    FusedConv2d; returns what was fused."""
    modules = dict(gm.named_modules())
    graph = gm.graph
    counts = {"convs": 0, "batch_norms": 0, "relus": 0, "residuals": 0}
    for node in list(graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            log.debug("not fused: %s (padding %r, mode %s)", node.target, conv.padding, conv.padding_mode)
            continue
        chain = [node]
        weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
        after_conv = _only_user(node)
        bn = modules.get(after_conv.target) if after_conv is not None and after_conv.op == "call_module" else None
        if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None:
            weight, bias = fold_batch_norm(conv, bn)
            chain.append(after_conv)
            counts["batch_norms"] += 1
        relu, residual, after = False, None, _only_user(chain[-1])
        if _is_relu(after, modules):
            relu = True
            chain.append(after)
        elif _is_add(after) and _is_relu(_only_user(after), modules):
            other = after.args[1] if after.args[0] is chain[-1] else after.args[0]
            if isinstance(other, torch.fx.Node) and other is not chain[-1]:
                relu, residual = True, other
                chain += [after, _only_user(after)]
                counts["residuals"] += 1
        counts["relus"] += relu
        name = f"fused_{counts['convs']}_{node.target.replace('.', '_')}"
        gm.add_submodule(name, FusedConv2d(weight.contiguous(), bias, tuple(conv.stride), tuple(conv.padding),
                                           tuple(conv.dilation), conv.groups, relu))
        with graph.inserting_after(chain[-1]):
            fused = graph.call_module(name, (node.args[0],) if residual is None else (node.args[0], residual))
        chain[-1].replace_all_uses_with(fused)
        for done in reversed(chain):
            graph.erase_node(done)
        counts["convs"] += 1
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.BatchNorm2d):
            log.debug("not fused: %s (a BatchNorm after something other than a convolution)", node.target)
    counts["over_residual"] = _write_over_dead_residuals(gm)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return counts


def _write_over_dead_residuals(gm: torch.fx.GraphModule) -> int:
    """Marks each FusedConv2d whose residual nothing reads afterwards to write its result over it
    (a ResNet block's skip connection: one buffer fewer, and the add reads and writes the same
    lines). Only residuals made by another FusedConv2d qualify: a fresh tensor, never the caller's
    input, a weight or a view of something still alive. Returns how many were marked."""
    modules = dict(gm.named_modules())
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    marked = 0
    for node in gm.graph.nodes:
        fused = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(fused, FusedConv2d) or len(node.args) < 2:
            continue
        residual = node.args[1]
        made_by_conv = residual.op == "call_module" and isinstance(modules.get(residual.target), FusedConv2d)
        read_later = any(order[user] > order[node] for user in residual.users if user is not node)
        if made_by_conv and not read_later and node.args[0] is not residual:
            fused.over_residual = True
            marked += 1
    return marked


class _Method(nn.Module):
    """A module whose forward is another method of `model` (get_features, say), to trace that."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.model, self.method)(x)


def _replace_submodules(gm: torch.fx.GraphModule, replacement) -> list[tuple[str, nn.Module, nn.Module]]:
    """Puts replacement(module) in place of each submodule for which it returns one; returns
    (name, old, new) of each replaced."""
    replaced = []
    for name, module in list(gm.named_modules()):
        new = replacement(module)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(gm.get_submodule(parent), child, new)
            replaced.append((name, module, new))
    return replaced


def _swap_max_pools(gm: torch.fx.GraphModule) -> int:
    """Replaces each nn.MaxPool2d that returns no indices by our MaxPool2d; returns how many."""
    return len(_replace_submodules(
        gm, lambda m: MaxPool2d(m) if isinstance(m, nn.MaxPool2d) and not m.return_indices else None))


def _factor_linears(gm: torch.fx.GraphModule, dtype: torch.dtype) -> int:
    """Replaces each Linear whose weight has a low numerical rank (within the error of the cast to
    `dtype`; low_rank.factor_linear) by a LowRankLinear; returns how many."""
    replaced = _replace_submodules(gm, lambda m: factor_linear(m, dtype) if isinstance(m, nn.Linear) else None)
    for name, linear, low_rank in replaced:
        log.debug("factored %s: rank %d of %s", name, low_rank.first.shape[0], tuple(linear.weight.shape))
    return len(replaced)


def optimize_for_inference(model: nn.Module, dtype: torch.dtype = torch.float32,
                           channels_last: bool = True, method: str = "forward",
                           factor_linears: bool = True) -> nn.Module:
    """A copy of `model` (which is left untouched) for evaluation on our kernels: BatchNorm folded,
    ReLU and residual adds in the convolutions' epilogue, weights packed channels_last in `dtype`
    (float32 or bfloat16) once; takes what the model takes, returns float32. See the module doc.
    `method` names what the copy computes: the model's forward, or another method taking one
    tensor, e.g. ``"get_features"`` (the course networks' penultimate features, for retrieval).
    With `factor_linears` and bfloat16, a large Linear whose weight is within the cast's own error
    of a low rank runs as two thin products (low_rank.py: the course AlexNet's fc6 and fc7, rank 256).

    Raises ValueError for a model in training mode (folding needs BatchNorm's running statistics)
    or an unsupported dtype; the returned model raises for inputs that require grad."""
    if model.training:
        raise ValueError("optimize_for_inference: the model is in training mode; call model.eval() first "
                         "(BatchNorm is folded with its running statistics)")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"optimize_for_inference: dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    if not callable(getattr(model, method, None)):
        raise ValueError(f"optimize_for_inference: {type(model).__name__} has no method {method!r}")
    root = copy.deepcopy(model) if method == "forward" else _Method(copy.deepcopy(model), method)
    gm = torch.fx.GraphModule(root, _ConvLeafTracer().trace(root), type(model).__name__)
    counts = _fuse(gm)
    counts["low_rank_linears"] = _factor_linears(gm, dtype) if factor_linears else 0
    counts["max_pools"] = _swap_max_pools(gm)
    log.debug("optimize_for_inference: %s", counts)
    gm.fused = counts
    gm = gm.to(dtype=dtype)  # biases too: the op takes them in the input's dtype, as F.conv2d does
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    return InferenceModel(gm.eval(), dtype, channels_last).eval()
