"""Writes docs/img/dream_gallery.jpg and its figures (dream_gallery_figures.json): three val
photos dreamed with the default settings at several layers of the provided ResNet-18 and
AlexNet, on our kernels, each labelled with its change and stripe figures (dream.dream_figures).

    .venv/bin/python scripts/dream_gallery.py [--out docs/img/dream_gallery.jpg] [--size 384]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from miniplaces_ext import data, dream, models
from miniplaces_ext import nn as ext_nn

PHOTOS = ("00000007", "00000042", "00000123")
COLUMNS = (("resnet18", "layer2"), ("resnet18", "layer3"), ("resnet18", "layer4"), ("alexnet", "conv3"),
           ("alexnet", "conv5"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help="Miniplaces root (default: $MINIPLACES_ROOT, else ./data/miniplaces)")
    parser.add_argument("--out", default="docs/img/dream_gallery.jpg")
    parser.add_argument("--size", type=int, default=384, help="working size of each dream (default 384)")
    parser.add_argument("--cell", type=int, default=224, help="size of each picture in the gallery (default 224)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nets = {arch: ext_nn.swap_convs(models.load_checkpoint(arch, models.find_weights(arch, None)))
            .to(memory_format=torch.channels_last).eval() for arch in ("resnet18", "alexnet")}
    cell, label = args.cell, 30
    sheet = Image.new("RGB", ((len(COLUMNS) + 1) * cell, len(PHOTOS) * (cell + label)), "white")
    draw = ImageDraw.Draw(sheet)
    figures = {}
    for row, name in enumerate(PHOTOS):
        image = data.load_image(str(data.resolve_root(args.data_root) / "images" / "val" / f"{name}.jpg"), size=args.size)[None]
        photo = dream.to_image(image)
        top = row * (cell + label)
        sheet.paste(photo.resize((cell, cell)), (0, top))
        draw.text((4, top + cell + 2), f"val {name}", fill="black")
        for col, (arch, layer) in enumerate(COLUMNS, start=1):
            out = dream.to_image(dream.dream(nets[arch], arch, image, layer, progress=False,
                                             generator=torch.Generator().manual_seed(0)))
            f = dream.dream_figures(photo, out)
            figures[f"{name} {arch}.{layer}"] = {k: round(v, 1) for k, v in f.items()}
            logging.info("%s %s.%s %s", name, arch, layer, figures[f"{name} {arch}.{layer}"])
            sheet.paste(out.resize((cell, cell), Image.LANCZOS), (col * cell, top))
            draw.text((col * cell + 4, top + cell + 2),
                      f"{arch}.{layer}  change {f['mean_change']:.0f}/{f['blurred_change']:.0f}  stripes {f['stripe_peak']:.1f}",
                      fill="black")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=85, optimize=True)
    Path(args.out).with_name(Path(args.out).stem + "_figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"gallery: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
