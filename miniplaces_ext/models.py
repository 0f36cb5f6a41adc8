"""The 2018 course networks for 128x128 Miniplaces images, with the course's state_dict keys.

``build(arch)`` builds one (``ResNet18``, ``AlexNet``); ``load_checkpoint`` fills one
from a checkpoint file (bare state_dict or ``{"state_dict"|"model": ..., "classes": [...]}``,
``module.`` prefixes stripped), with an error that lists every missing, unexpected and
mis-shaped key, and gives it its class names; ``find_weights`` resolves where a
checkpoint lives.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from miniplaces_ext import data

ARCHS = ("resnet18", "alexnet")
NUM_CLASSES = 100
REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual; course names Conv1/BN1/Conv2/BN2/downsample."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.Conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.BN1 = nn.BatchNorm2d(planes)
        self.Conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.BN2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.BN1(self.Conv1(x)))
        out = self.BN2(self.Conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 for 128x128 input: 7x7/2 stem, no max-pool, [2,2,2,2] blocks, 8x8 average pool, fc.

    The pool is adaptive, so other input sizes work; at 128x128 it is the
    course's AvgPool2d(8) exactly.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.BN1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, strides, in_planes = (64, 128, 256, 512), (1, 2, 2, 2), 64
        for i, (planes, stride) in enumerate(zip(widths, strides), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def feature_map(self, x: Tensor, until: str = "layer4") -> Tensor:
        """Activations after the stem or after `until` (one of stem, layer1..layer4)."""
        x = self.relu(self.BN1(self.Conv1(x)))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            if until == "stem":
                break
            x = getattr(self, name)(x)
            if name == until:
                break
        return x

    def get_features(self, x: Tensor) -> Tensor:
        """The 512-d pooled vector before fc."""
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)

    get_feature = get_features  # the course's name

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.get_features(x))


class AlexNet(nn.Module):
    """The course AlexNet for 128x128 input (BatchNorm after every conv, features -> 256x7x7)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 192, 5, padding=2), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(7)  # identity at 128x128 input
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 7 * 7, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def get_features(self, x: Tensor) -> Tensor:
        """The 4096-d fc7 activation."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        for layer in list(self.classifier)[:6]:  # each a submodule, so torch.fx can trace it
            x = layer(x)
        return x

    get_feature = get_features

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier[6](self.get_features(x))


# The layers that CAM, DeepDream and the command lines name, in the order the network computes
# them; the deepest is the default of CAM and DeepDream.
LAYERS = {
    "resnet18": ("stem", "layer1", "layer2", "layer3", "layer4"),
    "alexnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),
}
DEFAULT_LAYER = {arch: layers[-1] for arch, layers in LAYERS.items()}
_ALEXNET_RELU = {"conv1": 2, "conv2": 5, "conv3": 9, "conv4": 12, "conv5": 15}  # index in AlexNet.features


def layer_activation(model: nn.Module, arch: str, layer: str, x: Tensor) -> Tensor:
    """The network up to `layer` (one of LAYERS[arch], after its ReLU): that layer's activation for x."""
    if arch == "resnet18":
        return model.feature_map(x, until=layer)
    return model.features[: _ALEXNET_RELU[layer] + 1](x)


def logits_from(model: nn.Module, arch: str, layer: str, activation: Tensor) -> Tensor:
    """The rest of the network: logits from `layer`'s activation (layer_activation's output)."""
    if arch == "resnet18":
        x = activation
        for name in LAYERS[arch][LAYERS[arch].index(layer) + 1:]:  # the stages after `layer`
            x = getattr(model, name)(x)
        return model.fc(torch.flatten(model.avgpool(x), 1))
    x = model.features[_ALEXNET_RELU[layer] + 1:](activation)
    return model.classifier(torch.flatten(model.avgpool(x), 1))


_BUILDERS = {"resnet18": ResNet18, "alexnet": AlexNet}
_LAST_LAYER = {"resnet18": "fc.weight", "alexnet": "classifier.6.weight"}


def build(arch: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """A freshly initialised network of the given architecture."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return _BUILDERS[arch](num_classes)


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the network; the message lists every problem."""


def _state_dict(obj: object) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError("the file holds neither a state_dict nor {'state_dict'|'model': state_dict}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _class_names(raw: object, num_classes: int, path: Union[str, Path]) -> Optional[list[str]]:
    """The checkpoint's own "classes", else the packaged Miniplaces names for a 100-class model, else None."""
    names = raw.get("classes") if isinstance(raw, Mapping) else None
    if names is not None:
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{path}: 'classes' must be a list of class names")
        if len(names) != num_classes:
            raise CheckpointError(f"{path} names {len(names)} classes but its last layer has {num_classes} outputs")
        return list(names)
    return data.read_categories() if num_classes == NUM_CLASSES else None


def load_checkpoint(arch: str, path: Union[str, Path]) -> nn.Module:
    """Builds `arch` with the checkpoint's class count and loads it strictly (float32, eval mode).

    The model's ``class_names`` are the checkpoint's own, else the packaged
    Miniplaces names when it has 100 classes, else None.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    state = _state_dict(raw)
    last = state.get(_LAST_LAYER[arch])
    if last is None:
        raise CheckpointError(f"{path} is not a {arch} checkpoint: it has no {_LAST_LAYER[arch]!r}")
    model = build(arch, num_classes=last.shape[0])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                       for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or misshaped:
        lines = [f"{path} does not fit {arch}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    model.class_names = _class_names(raw, last.shape[0], path)
    return model.float().eval()


def find_weights(arch: str, weights: Optional[Union[str, Path]] = None) -> Path:
    """--weights, else $MINIPLACES_WEIGHTS/<arch>.pt, else models/<arch>.pt; a clear error if none exists."""
    candidates = [Path(weights)] if weights else []
    if not weights and os.environ.get("MINIPLACES_WEIGHTS"):
        candidates.append(Path(os.environ["MINIPLACES_WEIGHTS"]) / f"{arch}.pt")
    if not weights:
        candidates.append(REPO_MODELS / f"{arch}.pt")
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"no {arch} weights found (tried {tried}). Pass --weights PATH, set $MINIPLACES_WEIGHTS to a folder "
        f"holding {arch}.pt, or put the file at models/{arch}.pt. See models/README.md for where the provided "
        f"weights are and how to train your own."
    )
