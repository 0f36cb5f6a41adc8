"""DeepDream: amplify what a layer, a channel or a class of the network sees in a photo.

    python -m miniplaces_ext.dream photo.jpg --use-custom-conv --out dream.png
    python -m miniplaces_ext.dream photo.jpg --layer layer3 --channel 17 --gif dream.gif
    python -m miniplaces_ext.dream photo.jpg --class bamboo_forest --size 512

Gradient ascent on the objective (the mean squared activation of --layer, the mean activation
of one --channel of it, or the logit of a --class) with the network in eval mode and its
parameters frozen, so only the image changes; input gradients flow through the conv backward
kernels (ours with --use-custom-conv). The steps follow google/deepdream and the
transformation-robustness work of Lucid: an octave pyramid (--octaves, --octave-scale) from
coarse to fine, carrying the detail added at each scale up to the next; each step sees the
image rolled by a random jitter and randomly rotated (--rotate) and zoomed (--zoom); its
gradient is blurred at three scales (--smoothing; the stride-2 layers' uneven overlap would
otherwise paint stripes and checkerboards), taken in decorrelated colour space (no pink and
cyan speckle) and normalised by its mean magnitude. Pixels stay in the valid range; images
larger than --tile pixels are processed in tiles. The command prints how much the picture
changed (mean and blurred, in 0-255 levels) and its stripe check (dream_figures). --gif
writes the dream octave by octave as an animation.

Layers: resnet18: stem, layer1, layer2, layer3, layer4 (default);
alexnet: conv1, conv2, conv3, conv4, conv5 (default).
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
from miniplaces_ext.models import DEFAULT_LAYER, LAYERS, layer_activation

log = logging.getLogger("miniplaces_ext.dream")

def _pixel_bounds(device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(data.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(data.STD, device=device).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


# The square root of natural images' RGB colour covariance (Lucid's "color_correlation_svd_sqrt",
# measured on ImageNet): its columns are the colour directions photos vary along, luminance first.
COLOUR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur per channel (separable, reflect-padded, radius 3 sigma)."""
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def smooth_gradient(grad: torch.Tensor, sigma: float) -> torch.Tensor:
    """The gradient blurred at sigma / 2, sigma and 2 sigma, averaged (a cascade of Gaussians).

    The input gradient of a network with stride-2 layers is a sum of transposed convolutions
    whose kernels overlap unevenly, so it carries a periodic pattern at the strides' periods
    (2, 4, ... 32 px for ResNet-18). Followed as it is, that pattern grows into stripes and
    checkerboards; blurred at these scales it is gone while shapes a few pixels wide remain."""
    return sum(_gaussian_blur(grad, sigma * f) for f in (0.5, 1.0, 2.0)) / 3


def decorrelate_colour(grad: torch.Tensor) -> torch.Tensor:
    """The step for a gradient on normalised pixels, taken in decorrelated colour space.

    With the image's RGB written as C y (C = COLOUR_CORRELATION), a step along dL/dy is a step of
    C Cᵀ dL/dRGB in RGB: changes go along the colour directions photos vary in (mostly
    luminance) rather than each channel on its own, which paints pink and cyan noise."""
    std = torch.tensor(data.STD, device=grad.device, dtype=grad.dtype).view(1, 3, 1, 1)
    c = COLOUR_CORRELATION.to(grad.device, grad.dtype)
    rgb_grad = grad / std  # d loss / d rgb, as x = (rgb - mean) / std
    step = torch.einsum("ij,bjhw->bihw", c @ c.T, rgb_grad)
    return step / std  # back to normalised units


def random_view(x: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
    """x rotated by `degrees` and zoomed by `scale` about its centre (bilinear, edges reflected):
    differentiable, so the gradient of what the network sees in the view flows back to x."""
    if degrees == 0 and scale == 1:
        return x
    theta = torch.tensor(degrees * np.pi / 180)
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin(), torch.tensor(0.0)]),
                       torch.stack([theta.sin(), theta.cos(), torch.tensor(0.0)])]) / scale
    grid = F.affine_grid(rot[None].to(x.dtype).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="reflection", align_corners=False)


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
          octave_scale: float = 1.4, steps: int = 20, lr: float = 0.04, jitter: int = 16,
          generator: torch.Generator | None = None, progress: bool = True, channel: int | None = None,
          class_id: int | None = None, tile: int = 512, frames: list | None = None,
          on_step: Callable[[int, int], None] | None = None, smoothing: float = 1.5, rotate: float = 10.0,
          zoom: float = 0.05) -> torch.Tensor:
    """Runs DeepDream on a normalised (1, 3, H, W) image; returns the dreamed image (normalised).

    Each of `steps` steps per octave moves every pixel by `lr` (normalised units) on average along
    the smoothed, colour-decorrelated gradient of the objective seen through a random view (roll
    up to `jitter` px, rotation up to `rotate` degrees, zoom up to 1 +- `zoom`); the gradient blur's
    sigma grows from 0.75 to 3.75 `smoothing` px over an octave's steps. When `frames` is a list,
    the image after each octave is appended to it (at full size); on_step(done, total) is called
    after every gradient step (it may raise to stop the dream)."""
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
        for step in range(steps):
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else (0, 0))
            angle = (torch.rand((), generator=generator).item() * 2 - 1) * rotate
            scale = 1 + (torch.rand((), generator=generator).item() * 2 - 1) * zoom
            seen = lambda t: loss_of(random_view(t, angle, scale))  # noqa: E731
            grad, loss = _tiled_gradient(seen, torch.roll(x, shifts=(dy, dx), dims=(2, 3)), tile)
            grad = torch.roll(grad, shifts=(-dy, -dx), dims=(2, 3))
            sigma = smoothing * (0.5 + 2.0 * (step + 1) / steps)  # finer first, coarser later
            grad = decorrelate_colour(smooth_gradient(grad, sigma))
            x = x + lr * grad / (grad.abs().mean() + 1e-8)
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


def _spectral_peak_ratio(change: np.ndarray) -> float:
    """The strongest periodic component of a (H, W) change image: the largest ratio, at spatial
    frequencies above 1/16 cycle per pixel, of the power spectrum (averaged over 3 x 3 bins) to
    its local level (the geometric mean over 17 x 17 bins). A stripe or checkerboard pattern
    over much of the picture stands out as a narrow peak (the dreams this module made before
    its gradient smoothing: 8-39); content-following structure stays near the noise (< 6)."""
    g = torch.tensor(change - change.mean(), dtype=torch.float64)
    power = torch.fft.fftshift(torch.fft.fft2(g).abs() ** 2)[None, None]
    smooth = F.avg_pool2d(F.pad(power, (1, 1, 1, 1), mode="circular"), 3, 1)
    level = torch.exp(F.avg_pool2d(F.pad(torch.log(smooth + 1e-12), (8, 8, 8, 8), mode="circular"), 17, 1))
    h, w = change.shape
    fy = (torch.arange(h, dtype=torch.float64) - h // 2)[:, None] / h
    fx = (torch.arange(w, dtype=torch.float64) - w // 2)[None, :] / w
    high = (fx ** 2 + fy ** 2).sqrt() > 1 / 16
    return float((smooth / level)[0, 0][high].max())


def dream_figures(before: Image.Image, after: Image.Image) -> dict[str, float]:
    """How much a dream changed a picture, in 0-255 levels: mean |change| per pixel and channel,
    the same after a radius-4 Gaussian blur of both pictures (structure rather than fine
    noise), and the stripe check (_spectral_peak_ratio of the change's grey level)."""
    from PIL import ImageFilter

    a = np.asarray(before.convert("RGB"), dtype=np.float64)
    b = np.asarray(after.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pictures of different sizes: {a.shape[:2]} and {b.shape[:2]}")
    blur = lambda im: np.asarray(im.convert("RGB").filter(ImageFilter.GaussianBlur(4)), dtype=np.float64)  # noqa: E731
    return {"mean_change": float(np.abs(b - a).mean()), "blurred_change": float(np.abs(blur(after) - blur(before)).mean()),
            "stripe_peak": _spectral_peak_ratio((b - a).mean(axis=2))}


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
    parser.add_argument("--layer", help="layer to amplify (see the list above; default layer4 / conv5)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--channel", type=int, help="amplify one channel of --layer instead of all of it")
    target.add_argument("--class", dest="class_name", metavar="NAME",
                        help="dream toward a scene class (e.g. bamboo_forest) instead of a layer")
    parser.add_argument("--octaves", type=cli.positive_int, default=4)
    parser.add_argument("--octave-scale", type=float, default=1.4)
    parser.add_argument("--steps", type=cli.positive_int, default=20, help="gradient steps per octave (default 20)")
    parser.add_argument("--lr", type=float, default=0.04,
                        help="mean step per pixel, in normalised units (~0.23 per 0-255 level / 255; default 0.04)")
    parser.add_argument("--jitter", type=int, default=16, help="max random roll in pixels (default 16)")
    parser.add_argument("--rotate", type=float, default=10.0, help="max random rotation in degrees (default 10)")
    parser.add_argument("--zoom", type=float, default=0.05, help="max random zoom, 1 +- this (default 0.05)")
    parser.add_argument("--smoothing", type=float, default=1.5,
                        help="scale of the gradient blur (default 1.5; 0 is not allowed: stripes)")
    parser.add_argument("--size", type=cli.positive_int, default=384,
                        help="shorter side of the working image (default 384; the photos are 128 px)")
    parser.add_argument("--tile", type=cli.positive_int, default=512,
                        help="gradients in tiles of this many pixels on larger images (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="dream.png")
    parser.add_argument("--gif", metavar="GIF", help="also write the dream octave by octave as an animated GIF")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.layer = args.layer or DEFAULT_LAYER[args.arch]
    if args.smoothing <= 0:
        parser.error("--smoothing must be > 0")
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
                   args.jitter, generator, not args.no_progress, args.channel, class_id, args.tile, frames,
                   smoothing=args.smoothing, rotate=args.rotate, zoom=args.zoom)
    picture = to_image(result)
    cli.save_image(picture, args.out)
    what = args.class_name or f"{args.arch}.{args.layer}" + (f"[{args.channel}]" if args.channel is not None else "")
    figures = dream_figures(to_image(image), picture)
    print(f"dream of {args.image} toward {what}: {args.out} (mean change {figures['mean_change']:.1f} levels, "
          f"{figures['blurred_change']:.1f} blurred; stripe peak {figures['stripe_peak']:.1f})")
    if args.gif:
        pictures = [to_image(f) for f in frames]
        cli.atomic_write(args.gif, lambda tmp: pictures[0].save(tmp, format="GIF", save_all=True,
                                                                append_images=pictures[1:] + [pictures[-1]] * 2,
                                                                duration=600, loop=0), suffix=".gif")
        print(f"octave by octave: {args.gif}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
