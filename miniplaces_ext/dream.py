"""DeepDream: amplify what a layer of the network sees in an image.

    python -m miniplaces_ext.dream photo.jpg --layer layer3 --use-custom-conv --out dream.png

Gradient ascent on the mean squared activation of one layer, with the
network in eval mode and its parameters frozen, so only the image changes;
input gradients flow through the conv backward kernels. Each step rolls the
image by a random jitter, normalises the gradient, and clamps pixels to the
valid range. An octave pyramid (--octaves, --octave-scale) works from coarse
to fine, carrying the detail added at each scale up to the next.

Layers: resnet18: stem, layer1, layer2, layer3, layer4;
alexnet: conv1, conv2, conv3, conv4, conv5.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from miniplaces_ext import cli, data

log = logging.getLogger("miniplaces_ext.dream")

LAYERS = {
    "resnet18": ("stem", "layer1", "layer2", "layer3", "layer4"),
    # index of the ReLU after each conv in AlexNet.features
    "alexnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),
}
ALEXNET_RELU = {"conv1": 2, "conv2": 5, "conv3": 9, "conv4": 12, "conv5": 15}


def layer_activation(model: torch.nn.Module, arch: str, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The activation of `layer` for input x."""
    if arch == "resnet18":
        return model.feature_map(x, until=layer)
    return model.features[: ALEXNET_RELU[layer] + 1](x)


def _pixel_bounds(device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(data.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(data.STD, device=device).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def dream(model: torch.nn.Module, arch: str, image: torch.Tensor, layer: str, octaves: int = 4,
          octave_scale: float = 1.4, steps: int = 10, lr: float = 0.01, jitter: int = 32,
          generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
    """Runs DeepDream on a normalised (1, 3, H, W) image; returns the dreamed image (normalised)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    low, high = _pixel_bounds(image.device)
    base = image.detach()
    h, w = base.shape[-2:]
    sizes = [(max(8, round(h / octave_scale ** i)), max(8, round(w / octave_scale ** i)))
             for i in reversed(range(octaves))]
    detail = torch.zeros_like(F.interpolate(base, size=sizes[0], mode="bilinear", align_corners=False))
    bar = tqdm(total=octaves * steps, desc=f"dream {layer}", disable=not progress)
    for size in sizes:
        scaled = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        x = (scaled + detail).clone()
        for _ in range(steps):
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else (0, 0))
            rolled = torch.roll(x, shifts=(dy, dx), dims=(2, 3)).requires_grad_(True)
            loss = layer_activation(model, arch, layer, rolled).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, rolled)
            grad = torch.roll(grad, shifts=(-dy, -dx), dims=(2, 3))
            x = x + lr * grad / (grad.abs().mean() + 1e-8)
            x = torch.maximum(torch.minimum(x, high), low)
            bar.update(1)
            bar.set_postfix(size=f"{size[0]}x{size[1]}", loss=f"{loss.item():.3f}")
        detail = x - scaled
    bar.close()
    return x.detach()


def to_image(x: torch.Tensor) -> Image.Image:
    """A normalised (1, 3, H, W) tensor as an RGB PIL image."""
    mean = torch.tensor(data.MEAN).view(3, 1, 1)
    std = torch.tensor(data.STD).view(3, 1, 1)
    pixels = (x[0].detach().cpu().float() * std + mean).clamp(0, 1)
    return Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.dream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", metavar="IMG")
    cli.add_common_args(parser, data_root=False)
    parser.add_argument("--layer", default="layer3", help="layer to amplify (see the list above; default layer3)")
    parser.add_argument("--octaves", type=int, default=4)
    parser.add_argument("--octave-scale", type=float, default=1.4)
    parser.add_argument("--steps", type=int, default=10, help="gradient steps per octave")
    parser.add_argument("--lr", type=float, default=0.01, help="step size (on the normalised gradient)")
    parser.add_argument("--jitter", type=int, default=32, help="max random roll in pixels")
    parser.add_argument("--size", type=int, default=256, help="shorter side of the working image (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="dream.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.layer not in LAYERS[args.arch]:
        parser.error(f"unknown layer {args.layer!r} for {args.arch}; valid layers: {', '.join(LAYERS[args.arch])}")
    device = cli.setup(args)
    torch.manual_seed(args.seed)
    try:
        image = data.load_image(args.image, size=args.size)[None].to(device)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    model = cli.load_model(args.arch, args, device)
    generator = torch.Generator().manual_seed(args.seed)
    result = dream(model, args.arch, image, args.layer, args.octaves, args.octave_scale, args.steps, args.lr,
                   args.jitter, generator, not args.no_progress)
    cli.save_image(to_image(result), args.out)
    print(f"dream of {args.image} on {args.arch}.{args.layer}: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
