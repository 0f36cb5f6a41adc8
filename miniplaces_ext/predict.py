"""Top-k scene classes for image files.

    python -m miniplaces_ext.predict photo.jpg [more.jpg ...] --use-custom-conv
    python -m miniplaces_ext.predict photo.jpg --arch alexnet --topk 3 --json

Any image size is accepted: it is resized (shorter side 128), centre-cropped
to 128x128 and normalised like the course's training data, then fed as a
batch of shape (N, 3, 128, 128).
"""
from __future__ import annotations

import argparse

import torch

from miniplaces_ext import cli, data


def predict(model: torch.nn.Module, images: torch.Tensor, classes: list[str], topk: int) -> list[list[dict]]:
    """For each image of the batch, the `topk` classes with their probabilities."""
    with torch.inference_mode():
        probs = model(images).float().softmax(dim=1)
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [[{"class": classes[i], "id": int(i), "probability": float(p)} for p, i in zip(vs, ids)]
            for vs, ids in zip(values.tolist(), indices.tolist())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files (any size, any PIL format)")
    cli.add_common_args(parser)
    parser.add_argument("--topk", type=int, default=5, help="how many classes per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    device = cli.setup(args)
    try:
        classes = data.read_categories(data.resolve_root(args.data_root))
    except data.DataNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    tensors, readable, failed = [], [], {}
    for path in args.images:
        try:
            tensors.append(data.load_image(path))
            readable.append(path)
        except (OSError, ValueError) as exc:
            failed[path] = str(exc)
    results = {}
    if tensors:
        model = cli.load_model(args.arch, args, device)
        batch = torch.stack(tensors).to(device, memory_format=torch.channels_last)
        results = dict(zip(readable, predict(model, batch, classes, args.topk)))
    if args.json:
        cli.write_json("-", {"arch": args.arch, "custom_conv": args.use_custom_conv, "predictions": results,
                             "errors": failed})
    else:
        for path, preds in results.items():
            print(path)
            for rank, p in enumerate(preds, 1):
                print(f"  {rank}. {p['class']:30s} {p['probability']:.1%}")
        for path, err in failed.items():
            print(f"{path}: error: {err}")
    return 1 if failed and not results else 0


if __name__ == "__main__":
    raise SystemExit(main())
