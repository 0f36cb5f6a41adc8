"""DeepDream: amplify what a layer, a channel or a class of the network sees in a photo.

    python -m miniplaces_ext.dream photo.jpg --use-custom-conv --out dream.png
    python -m miniplaces_ext.dream photo.jpg --layer layer3 --channel 17 --gif dream.gif
    python -m miniplaces_ext.dream photo.jpg --class bamboo_forest --size 384

Gradient ascent on the objective — the mean squared activation of --layer, the mean
activation of one --channel of it, or the logit of a --class — with the network in eval
mode and its parameters frozen, so only the image changes; input gradients flow through the
conv backward kernels (ours with --use-custom-conv). Each step rolls the image by a random
jitter and normalises the gradient per frequency band (a Laplacian pyramid, the "lapnorm"
of the TensorFlow DeepDream tutorial), so coarse shapes grow as fast as fine texture
instead of high-frequency stripes; pixels stay in the valid range. An octave pyramid
(--octaves, --octave-scale) works from coarse to fine, carrying the detail added at each
scale up to the next; images larger than --tile pixels are processed in tiles. --gif writes
the dream octave by octave as an animation.

Layers: resnet18: stem, layer1, layer2, layer3, layer4;
alexnet: conv1, conv2, conv3, conv4, conv5.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable

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


def _binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur per channel, reflect-padded."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype) / 16
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_normalize(grad: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """The gradient split into `levels` frequency bands (a Laplacian pyramid), each divided by its
    standard deviation, and summed back: every band gets the same weight."""
    bands, low = [], grad
    for _ in range(levels - 1):
        if min(low.shape[-2:]) < 8:
            break
        down = F.avg_pool2d(_binomial_blur(low), 2, ceil_mode=True)
        up = F.interpolate(down, size=low.shape[-2:], mode="bilinear", align_corners=False)
        bands.append(low - up)
        low = down
    out = low / (low.std() + 1e-8)
    for band in reversed(bands):
        out = F.interpolate(out, size=band.shape[-2:], mode="bilinear", align_corners=False) + band / (band.std() + 1e-8)
    return out / levels


def objective(model: torch.nn.Module, arch: str, x: torch.Tensor, layer: str, channel: int | None = None,
              class_id: int | None = None) -> torch.Tensor:
    """What the dream maximises: a class logit, one channel's mean activation, or a layer's mean square."""
    if class_id is not None:
        return model(x)[:, class_id].sum()
    activation = layer_activation(model, arch, layer, x)
    if channel is not None:
        return activation[:, channel].mean()
    return activation.pow(2).mean()


def _tiled_gradient(loss_of, x: torch.Tensor, tile: int) -> tuple[torch.Tensor, float]:
    """d loss / d x, computed tile by tile when x is larger than `tile` pixels."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        x = x.detach().requires_grad_(True)
        loss = loss_of(x)
        return torch.autograd.grad(loss, x)[0], loss.item()
    grad = torch.zeros_like(x)
    total = 0.0
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            piece = x[..., top:top + tile, left:left + tile].detach().requires_grad_(True)
            if min(piece.shape[-2:]) < 32:  # a sliver at the edge: too small for the network
                continue
            loss = loss_of(piece)
            grad[..., top:top + tile, left:left + tile] = torch.autograd.grad(loss, piece)[0]
            total += loss.item()
    return grad, total


def dream(model: torch.nn.Module, arch: str, image: torch.Tensor, layer: str, octaves: int = 4,
          octave_scale: float = 1.4, steps: int = 20, lr: float = 0.02, jitter: int = 16,
          generator: torch.Generator | None = None, progress: bool = True, channel: int | None = None,
          class_id: int | None = None, tile: int = 512, frames: list | None = None,
          on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Runs DeepDream on a normalised (1, 3, H, W) image; returns the dreamed image (normalised).
    When `frames` is a list, the image after each octave is appended to it (at full size);
    on_step(done, total) is called after every gradient step (it may raise to stop the dream)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    low, high = _pixel_bounds(image.device)
    base = image.detach()
    h, w = base.shape[-2:]
    sizes = [(max(32, round(h / octave_scale ** i)), max(32, round(w / octave_scale ** i)))
             for i in reversed(range(octaves))]
    detail = torch.zeros_like(F.interpolate(base, size=sizes[0], mode="bilinear", align_corners=False))
    what = f"class {class_id}" if class_id is not None else layer + (f"[{channel}]" if channel is not None else "")
    bar = tqdm(total=octaves * steps, desc=f"dream {what}", disable=not progress)
    loss_of = lambda t: objective(model, arch, t, layer, channel, class_id)  # noqa: E731
    done = 0
    for size in sizes:
        scaled = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        x = (scaled + detail).clone()
        for _ in range(steps):
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else (0, 0))
            grad, loss = _tiled_gradient(loss_of, torch.roll(x, shifts=(dy, dx), dims=(2, 3)), tile)
            grad = torch.roll(grad, shifts=(-dy, -dx), dims=(2, 3))
            x = x + lr * laplacian_normalize(grad)
            x = torch.maximum(torch.minimum(x, high), low)
            bar.update(1)
            bar.set_postfix(size=f"{size[0]}x{size[1]}", objective=f"{loss:.3f}")
            done += 1
            if on_step is not None:
                on_step(done, octaves * steps)
        detail = x - scaled
        if frames is not None:
            frames.append(F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).detach())
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
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--channel", type=int, help="amplify one channel of --layer instead of all of it")
    target.add_argument("--class", dest="class_name", metavar="NAME",
                        help="dream toward a scene class (e.g. bamboo_forest) instead of a layer")
    parser.add_argument("--octaves", type=cli.positive_int, default=4)
    parser.add_argument("--octave-scale", type=float, default=1.4)
    parser.add_argument("--steps", type=cli.positive_int, default=20, help="gradient steps per octave (default 20)")
    parser.add_argument("--lr", type=float, default=0.02, help="step size on the normalised gradient (default 0.02)")
    parser.add_argument("--jitter", type=int, default=16, help="max random roll in pixels (default 16)")
    parser.add_argument("--size", type=cli.positive_int, default=256,
                        help="shorter side of the working image (default 256)")
    parser.add_argument("--tile", type=cli.positive_int, default=512,
                        help="gradients in tiles of this many pixels on larger images (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="dream.png")
    parser.add_argument("--gif", metavar="GIF", help="also write the dream octave by octave as an animated GIF")
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
    class_id = None
    if args.class_name is not None:
        if model.class_names is None or args.class_name not in model.class_names:
            parser.error(f"unknown class {args.class_name!r}; e.g. bamboo_forest, bedroom, coast")
        class_id = model.class_names.index(args.class_name)
    if args.channel is not None:
        channels = layer_activation(model, args.arch, args.layer, image[..., :32, :32]).shape[1]
        if not 0 <= args.channel < channels:
            parser.error(f"--channel must be in 0..{channels - 1} for {args.arch}.{args.layer}")
    generator = torch.Generator().manual_seed(args.seed)
    frames = [image] if args.gif else None  # the octave frames only when a GIF is asked for
    result = dream(model, args.arch, image, args.layer, args.octaves, args.octave_scale, args.steps, args.lr,
                   args.jitter, generator, not args.no_progress, args.channel, class_id, args.tile, frames)
    cli.save_image(to_image(result), args.out)
    what = args.class_name or f"{args.arch}.{args.layer}" + (f"[{args.channel}]" if args.channel is not None else "")
    print(f"dream of {args.image} toward {what}: {args.out}")
    if args.gif:
        pictures = [to_image(f) for f in frames]
        cli.atomic_write(args.gif, lambda tmp: pictures[0].save(tmp, format="GIF", save_all=True,
                                                                append_images=pictures[1:] + [pictures[-1]] * 2,
                                                                duration=600, loop=0), suffix=".gif")
        print(f"octave by octave: {args.gif}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
