"""Class activation maps: where in a photo the network sees a scene class.

    python -m miniplaces_ext.cam photo.jpg --use-custom-conv                  # top-3 classes, CAM
    python -m miniplaces_ext.cam a.jpg b.jpg --method gradcam --layer layer3 --class bedroom
    python -m miniplaces_ext.cam photo.jpg --arch alexnet --out maps/ --json

Methods:
  cam      (ResNet-18) the fc weights of the class applied to the last feature map
           (Zhou et al., CVPR 2016) — the map of the Places365 demo.
  gradcam  (both networks) the feature map of --layer weighted by the spatial mean of
           the class score's gradient, then ReLU (Selvaraju et al., ICCV 2017). With
           --use-custom-conv, and a layer below the last conv, the gradient runs through
           our conv backward kernels.
Each overlay is the photo at its own resolution with the map (upsampled from the centre
crop the network saw) blended over it, a colour bar, and the class, its probability and
indoor/outdoor in the title: OUT/<photo>_<rank>_<class>.png. The CAM and Grad-CAM
plumbing is written here (a few lines over model.feature_map) rather than taken from the
pytorch-grad-cam package, so the core package gains no dependency.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from miniplaces_ext import cli, data, indoor_outdoor
from miniplaces_ext.models import DEFAULT_LAYER, LAYERS, layer_activation, logits_from

log = logging.getLogger("miniplaces_ext.cam")

METHODS = ("cam", "gradcam")


def activation_maps(model: torch.nn.Module, arch: str, images: torch.Tensor, class_ids: torch.Tensor,
                    method: str = "cam", layer: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N, K, h, w) at the layer's resolution, each scaled to [0, 1], for class_ids (N, K);
    and the softmax probabilities (N, classes). CAM is ResNet-18's last layer only."""
    layer = layer or DEFAULT_LAYER[arch]
    if method == "cam":
        if arch != "resnet18" or layer != "layer4":
            raise ValueError("CAM needs global average pooling + fc after the maps: ResNet-18, layer4")
        with torch.no_grad():
            features = model.feature_map(images)
            probs = model.fc(torch.flatten(model.avgpool(features), 1)).float().softmax(1)
            weights = model.fc.weight[class_ids]                                  # (N, K, C)
            maps = torch.einsum("nkc,nchw->nkhw", weights, features.float())
    elif method == "gradcam":
        maps_per_class = []
        with torch.enable_grad():
            features = layer_activation(model, arch, layer, images).detach().requires_grad_()
            logits = logits_from(model, arch, layer, features)
            probs = logits.detach().float().softmax(1)
            for k in range(class_ids.shape[1]):
                score = logits.gather(1, class_ids[:, k:k + 1]).sum()
                (grad,) = torch.autograd.grad(score, features, retain_graph=k + 1 < class_ids.shape[1])
                alpha = grad.float().mean(dim=(2, 3), keepdim=True)              # (N, C, 1, 1)
                maps_per_class.append((alpha * features.detach().float()).sum(1))
        maps = torch.stack(maps_per_class, dim=1)
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    maps = maps.relu()
    peak = maps.flatten(2).amax(2).clamp(min=1e-12)[..., None, None]
    return maps / peak, probs


def centre_crop_box(width: int, height: int, size: int = data.IMAGE_SIZE) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the photo's pixels of the square the network saw (data.preprocess)."""
    side = min(width, height)
    scale = side / size
    resized_w, resized_h = max(size, round(width / scale)), max(size, round(height / scale))
    left, top = (resized_w - size) // 2, (resized_h - size) // 2
    fx, fy = width / resized_w, height / resized_h
    return left * fx, top * fy, (left + size) * fx, (top + size) * fy


def upsample_over_crop(cam: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """`cam` bilinearly upsampled to the centre crop the network saw of a width x height photo,
    and that crop's box (centre_crop_box)."""
    box = centre_crop_box(width, height)
    size = (max(1, round(box[3] - box[1])), max(1, round(box[2] - box[0])))
    up = F.interpolate(torch.from_numpy(cam).float()[None, None], size=size, mode="bilinear", align_corners=False)
    return up[0, 0].numpy(), box


def overlay(photo: Image.Image, cam: np.ndarray, title: str, path: str | Path) -> None:
    """The photo at its own resolution, `cam` (values in [0, 1]) upsampled over the centre crop, a colour bar."""
    photo = photo.convert("RGB")
    width, height = photo.size
    up, box = upsample_over_crop(cam, width, height)
    inch = 6.0 / max(width, height)
    fig = cli.new_figure(figsize=(max(3.0, width * inch) + 1.2, max(3.0, height * inch) + 0.6))
    ax = fig.subplots()
    ax.imshow(np.asarray(photo))
    shown = ax.imshow(up, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(box[0], box[2], box[3], box[1]),
                      interpolation="bilinear")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02, label="activation (relative)")
    fig.tight_layout()
    cli.save_figure(fig, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.cam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMG", help="photos (any size, any PIL format)")
    cli.add_common_args(parser, data_root=False)
    parser.add_argument("--method", choices=METHODS, help="cam (default for resnet18) or gradcam (alexnet's)")
    parser.add_argument("--layer", help="feature layer for gradcam (default: layer4 / conv5)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_name", metavar="NAME", help="map this class (e.g. bedroom)")
    which.add_argument("--topk", type=cli.positive_int, default=3, help="map the k most probable classes (default 3)")
    parser.add_argument("--out", default="cam", help="output folder (default: ./cam)")
    cli.add_json_arg(parser, "the maps written and their classes")
    args = parser.parse_args(argv)
    method = args.method or ("cam" if args.arch == "resnet18" else "gradcam")
    layer = args.layer or DEFAULT_LAYER[args.arch]
    if layer not in LAYERS[args.arch]:
        parser.error(f"unknown layer {layer!r} for {args.arch}; valid layers: {', '.join(LAYERS[args.arch])}")
    if method == "cam" and (args.arch != "resnet18" or layer != "layer4"):
        parser.error("--method cam needs --arch resnet18 and layer4 (global average pooling + fc); use gradcam")
    device = cli.setup(args)
    model = cli.load_model(args.arch, args, device)
    classes = model.class_names
    if classes is None:
        parser.exit(2, "error: the checkpoint carries no class names\n")
    if args.class_name and args.class_name not in classes:
        parser.error(f"unknown class {args.class_name!r}; e.g. {', '.join(classes[:5])}, ...")
    environments = indoor_outdoor.environment_labels(classes)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = cli.table_printer(args)
    report, failed = {}, {}
    for path in args.images:
        try:
            with Image.open(path) as photo:
                photo.load()
                x = data.preprocess(photo)[None].to(device, memory_format=torch.channels_last)
                photo = photo.convert("RGB")
        except (OSError, ValueError) as exc:
            failed[path] = f"cannot read image {path}: {exc}"
            continue
        with torch.no_grad():
            probs = model(x).float().softmax(1)
        ids = (torch.tensor([[classes.index(args.class_name)]]) if args.class_name
               else probs.topk(min(args.topk, len(classes)), dim=1).indices.cpu())
        maps, probs = activation_maps(model, args.arch, x, ids.to(device), method, layer)
        report[path] = []
        for rank, (class_id, cam) in enumerate(zip(ids[0].tolist(), maps[0].cpu().numpy()), 1):
            name = classes[class_id]
            where = f", {environments[class_id]}" if environments else ""
            title = f"{name}: {probs[0, class_id].item():.1%}{where} — {method} ({args.arch}.{layer})"
            target = out_dir / f"{_slug(Path(path).stem)}_{rank}_{_slug(name)}.png"
            overlay(photo, cam, title, target)
            report[path].append({"class": name, "id": class_id, "probability": probs[0, class_id].item(),
                                 "png": str(target)})
            say(f"{path}: {name} ({probs[0, class_id].item():.1%}) -> {target}")
    if args.json:
        cli.write_json(args.json, {"arch": args.arch, "method": method, "layer": layer,
                                   "custom_conv": args.use_custom_conv, "maps": report, "errors": failed})
    for path, err in failed.items():
        print(f"error: {err}", file=sys.stderr)
    return 1 if failed and not report else 0


if __name__ == "__main__":
    raise SystemExit(main())
