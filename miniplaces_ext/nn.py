"""Drop-in nn modules on our kernels, and swapping them into existing models."""
from __future__ import annotations

from torch import Tensor, nn

from miniplaces_ext.ops import conv1d, conv2d


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` computed by our kernels: same arguments, parameters and state_dict keys."""

    def forward(self, input: Tensor) -> Tensor:
        return conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                      self.padding_mode)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by our kernels: same arguments, parameters and state_dict keys."""

    def forward(self, input: Tensor) -> Tensor:
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                      self.padding_mode)


_OURS = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}
_TORCH = {ours: theirs for theirs, ours in _OURS.items()}


def _convert(conv: nn.Module, cls: type) -> nn.Module:
    """A `cls` module with `conv`'s hyper-parameters that shares its Parameter objects."""
    new = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device="meta",
    )
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new


def _replace(model: nn.Module, mapping: dict[type, type]) -> nn.Module:
    if type(model) in mapping:
        return _convert(model, mapping[type(model)])
    for name, child in model.named_children():
        replaced = _replace(child, mapping)
        if replaced is not child:
            setattr(model, name, replaced)
    return model


def swap_convs(model: nn.Module) -> nn.Module:
    """Replaces every ``nn.Conv1d``/``nn.Conv2d`` in `model` (in place) with ours.

    The new modules share the original Parameter objects, so optimizers and
    state_dicts keep working. Subclasses of the torch convs with their own
    ``forward`` are left alone. Returns the model (a new module if `model`
    itself was a conv).
    """
    return _replace(model, _OURS)


def restore_convs(model: nn.Module) -> nn.Module:
    """Undoes :func:`swap_convs`: our conv modules become torch's again, parameters shared."""
    return _replace(model, _TORCH)


def count_convs(model: nn.Module) -> dict[str, int]:
    """Counts conv modules by kind: ``{"ours": n, "torch": m}``; handy to check a swap."""
    ours = sum(isinstance(m, (Conv1d, Conv2d)) for m in model.modules())
    theirs = sum(type(m) in _OURS for m in model.modules())
    return {"ours": ours, "torch": theirs}
