"""Top-k scene classes for image files; needs only the weights (class names ship with the package).

    python -m miniplaces_ext.predict photo.jpg [more.jpg ...] --use-custom-conv
    python -m miniplaces_ext.predict photo.jpg --arch alexnet --weights alexnet.pt --topk 3 --json

Each image is also called indoor or outdoor, as the Places365 demo does: by the
share of outdoor classes among its 10 most probable (indoor_outdoor.py).

Any image size is accepted: it is resized (shorter side 128), centre-cropped
to 128x128 and normalised like the course's training data, then fed in
batches of --batch-size. Class names come from the checkpoint if it carries
them (checkpoints from `train` do), else from the packaged Miniplaces list.
"""
from __future__ import annotations

import argparse
import sys

import torch

from miniplaces_ext import cli, data, indoor_outdoor


def predict(model: torch.nn.Module, images: torch.Tensor, classes: list[str], topk: int,
            environments: list[str] | None = None) -> list[dict]:
    """For each image of the batch: {'top': the `topk` classes with their probabilities, and,
    when `environments` (indoor/outdoor per class) is given, 'environment' and 'outdoor_share'}."""
    with torch.inference_mode():
        probs = model(images).float().softmax(dim=1)
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    results = []
    for vs, ids in zip(values.tolist(), indices.tolist()):
        top = [{"class": classes[i], "id": int(i), "probability": float(p)} for p, i in zip(vs, ids)]
        if environments is not None:
            for entry in top:
                entry["environment"] = environments[entry["id"]]
        results.append({"top": top})
    if environments is not None:
        for result, env in zip(results, indoor_outdoor.vote(probs, environments)):
            result.update(env)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files (any size, any PIL format)")
    cli.add_common_args(parser, data_root=False)
    parser.add_argument("--topk", type=cli.positive_int, default=5, help="how many classes per image (default: 5)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=32, help="images per batch (default: 32)")
    cli.add_json_arg(parser, "the predictions")
    args = parser.parse_args(argv)
    device = cli.setup(args)
    model = cli.load_model(args.arch, args, device)
    classes = model.class_names
    if classes is None:
        parser.exit(2, f"error: the checkpoint has {model_outputs(model)} classes and carries no class names "
                       f"(the packaged names are for the {len(data.read_categories())} Miniplaces classes); "
                       f"save it as {{'state_dict': ..., 'classes': [...]}} as train does\n")
    if args.topk > len(classes):
        parser.error(f"--topk {args.topk} is more than the model's {len(classes)} classes")

    environments = indoor_outdoor.environment_labels(classes)
    results, failed = {}, {}
    for start in range(0, len(args.images), args.batch_size):
        tensors, readable = [], []
        for path in args.images[start:start + args.batch_size]:
            try:
                tensors.append(data.load_image(path))
                readable.append(path)
            except (OSError, ValueError) as exc:
                failed[path] = str(exc)
        if tensors:
            batch = torch.stack(tensors).to(device, memory_format=torch.channels_last)
            results.update(zip(readable, predict(model, batch, classes, args.topk, environments)))
    if args.json:
        cli.write_json(args.json, {"arch": args.arch, "custom_conv": args.use_custom_conv, "predictions": results,
                                   "errors": failed})
    else:
        for path, result in results.items():
            where = (f"  ({result['environment']}: {result['outdoor_share']:.0%} of the top-10 classes are outdoor)"
                     if "environment" in result else "")
            print(f"{path}{where}")
            for rank, p in enumerate(result["top"], 1):
                env = f"  {p['environment']}" if "environment" in p else ""
                print(f"  {rank}. {p['class']:30s} {p['probability']:6.1%}{env}")
    for path, err in failed.items():
        print(f"{path}: error: {err}", file=sys.stderr)
    return 1 if failed and not results else 0


def model_outputs(model: torch.nn.Module) -> int:
    """The number of classes the network's last linear layer predicts."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


if __name__ == "__main__":
    raise SystemExit(main())
