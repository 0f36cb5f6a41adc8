"""Nearest neighbours of an image among a Miniplaces split, by network features.

    python -m miniplaces_ext.retrieve photo.jpg --k 5 --use-custom-conv --out neighbours.png
    python -m miniplaces_ext.retrieve photo.jpg --gallery train --json

Features are the network's ``get_features`` (ResNet-18: the 512-d pooled
vector before fc). The gallery's features are computed once and cached on
disk, keyed by the weights' content, the gallery's file list, the conv kind
and the code version; the cache is written atomically and checked on load
(a corrupt or stale cache is rebuilt). Neighbours are exact Euclidean k-NN.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import types
from pathlib import Path
from typing import Optional

import torch
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from miniplaces_ext import cli, data, models

log = logging.getLogger("miniplaces_ext.retrieve")

FEATURE_VERSION = 1  # bump when feature extraction changes
DEFAULT_CACHE_DIR = os.environ.get("MINIPLACES_CACHE", ".cache/miniplaces_ext")


def conv_kind(use_custom_conv: bool, fused: bool = False, dtype: str = "float32") -> str:
    """Which convolutions computed a gallery's features: "torch", "ours" (swap_convs) or
    "ours, fused, <dtype>" (optimize_for_inference's network)."""
    if not use_custom_conv:
        return "torch"
    return f"ours, fused, {dtype}" if fused else "ours"


def cache_key(arch: str, weights: Path, dataset: data.MiniplacesDataset, convs: str) -> str:
    """What the cached features depend on, hashed (`convs`: conv_kind's answer)."""
    items = hashlib.sha256("\n".join(f"{p} {l}" for p, l in dataset.items).encode()).hexdigest()
    parts = [arch, data.sha256_of(weights), dataset.split, items, f"convs={convs}", f"v{FEATURE_VERSION}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _checksum(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()


def load_cache(path: Path, key: str) -> Optional[dict]:
    """The cached gallery if `path` holds a complete, intact cache for `key`; else None (with a warning)."""
    if not path.exists():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        if cache.get("key") != key:
            log.warning("feature cache %s is stale (different key); recomputing", path)
            return None
        if _checksum(cache["features"]) != cache["checksum"]:
            raise ValueError("checksum mismatch")
        return cache
    except Exception as exc:  # truncated, corrupt, or not a cache at all
        log.warning("feature cache %s is unreadable (%s); recomputing", path, exc)
        return None


def extract_features(model: torch.nn.Module, dataset: data.MiniplacesDataset, batch_size: int, workers: int,
                     device: torch.device, progress: bool = True) -> dict:
    """get_features over the dataset; unreadable images are left out (and counted)."""
    feats, indices, skipped = [], [], []
    with torch.inference_mode():
        bar = tqdm(total=len(dataset), unit="img", desc="gallery features", disable=not progress)
        for batch in data.loader(dataset, batch_size, workers):
            skipped += batch.skipped
            bar.update(len(batch.labels) + len(batch.skipped))
            if len(batch.labels):
                x = batch.images.to(device, memory_format=torch.channels_last)
                feats.append(model.get_features(x).float().cpu())
                indices.append(batch.indices)
        bar.close()
    features = torch.cat(feats) if feats else torch.empty(0, 0)
    index = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
    return {"features": features, "paths": [dataset.items[i][0] for i in index.tolist()],
            "labels": [dataset.items[i][1] for i in index.tolist()], "skipped": len(skipped),
            "checksum": _checksum(features)}


def load_or_build_gallery(model: torch.nn.Module, arch: str, weights: Path, dataset: data.MiniplacesDataset,
                          convs: str, cache_dir: str | Path, device: torch.device, batch_size: int = 100,
                          workers: int = 2, progress: bool = True) -> tuple[dict, Path]:
    """The gallery's features from the cache in `cache_dir` when it is intact and current, else
    extracted (and cached atomically); with the cache file's path."""
    key = cache_key(arch, weights, dataset, convs)
    cache_path = Path(cache_dir) / f"{arch}_{dataset.split}_{key}.pt"
    gallery = load_cache(cache_path, key)
    if gallery is None:
        gallery = extract_features(model, dataset, batch_size, workers, device, progress)
        gallery["key"] = key
        cli.save_torch(gallery, cache_path)
        log.info("cached %d gallery features in %s", len(gallery["paths"]), cache_path)
    else:
        log.info("reusing cached gallery features %s", cache_path)
    return gallery, cache_path


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean k-NN: (distances, indices) of the k closest gallery rows, closest first."""
    dist = torch.cdist(query[None].double(), gallery.double())[0]
    values, idx = dist.topk(min(k, len(gallery)), largest=False)
    return values.float(), idx


def montage(query: Path, neighbours: list[dict], root: Path, path: Path, tile: int = 160) -> None:
    """Query + neighbours in a row, each captioned; written atomically as PNG."""
    caption_h = 34
    canvas = Image.new("RGB", ((len(neighbours) + 1) * (tile + 8) + 8, tile + caption_h + 16), "white")
    draw = ImageDraw.Draw(canvas)
    entries = [(query, "query", Path(query).name)] + [
        (root / "images" / n["file"], f"{i}. {n['class']}", f"d={n['distance']:.2f}")
        for i, n in enumerate(neighbours, 1)]
    for col, (file, line1, line2) in enumerate(entries):
        with Image.open(file) as im:
            x = 8 + col * (tile + 8)
            canvas.paste(ImageOps.fit(im.convert("RGB"), (tile, tile)), (x, 8))
        draw.text((x, tile + 12), line1[:26], fill="black")
        draw.text((x, tile + 12 + 14), line2[:26], fill=(90, 90, 90))
    cli.save_image(canvas, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.retrieve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", metavar="IMG", help="query image (any size)")
    cli.add_common_args(parser)
    parser.add_argument("--k", type=cli.positive_int, default=5, help="number of neighbours (default: 5)")
    parser.add_argument("--gallery", default="val", choices=["val", "train", "test"], help="split to search")
    parser.add_argument("--limit", type=int, help="use only the first N gallery images")
    parser.add_argument("--keep-self", action="store_true", help="keep the query file itself if it is in the gallery")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                        help="where gallery features are cached (default: $MINIPLACES_CACHE or .cache/miniplaces_ext)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="neighbours.png", help="montage PNG (default: neighbours.png)")
    cli.add_json_arg(parser, "the neighbours")
    parser.add_argument("--no-progress", action="store_true")
    cli.add_inference_args(parser)
    args = parser.parse_args(argv)
    cli.check_inference_args(parser, args)
    device = cli.setup(args)
    try:
        dataset = data.MiniplacesDataset(args.data_root, args.gallery, limit=args.limit)
        query = data.load_image(args.image)
        weights = models.find_weights(args.arch, args.weights)
    except (data.DataNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    args.weights = str(weights)
    model = cli.load_model(args.arch, args, device)
    # The features of the fused network (optimize_for_inference) with --use-custom-conv, unless --no-fuse.
    net = types.SimpleNamespace(get_features=cli.inference_network(model, args, method="get_features"))
    convs = conv_kind(args.use_custom_conv, cli.runs_fused(args), args.dtype)
    gallery, cache_path = load_or_build_gallery(net, args.arch, weights, dataset, convs, args.cache_dir, device,
                                                args.batch_size, args.workers, not args.no_progress)

    with torch.inference_mode():
        q = net.get_features(query[None].to(device, memory_format=torch.channels_last)).float().cpu()[0]
    query_path = Path(args.image).resolve()
    extra = 0 if args.keep_self else 1
    dist, idx = nearest(q, gallery["features"], args.k + extra)
    neighbours = []
    for d, i in zip(dist.tolist(), idx.tolist()):
        file = gallery["paths"][i]
        if not args.keep_self and (dataset.root / "images" / file).resolve() == query_path:
            continue
        label = gallery["labels"][i]
        neighbours.append({"file": file, "class": dataset.classes[label] if label >= 0 else "?",
                           "distance": d})
    neighbours = neighbours[:args.k]
    montage(Path(args.image), neighbours, dataset.root, Path(args.out))
    if args.json:
        cli.write_json(args.json, {"query": args.image, "gallery": args.gallery, "cache": str(cache_path),
                             "neighbours": neighbours, "montage": args.out})
    else:
        print(f"{len(neighbours)} nearest {args.gallery} images to {args.image} ({args.arch} features):")
        for rank, n in enumerate(neighbours, 1):
            print(f"  {rank}. {n['distance']:8.3f}  {n['class']:28s} {n['file']}")
        print(f"montage: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
