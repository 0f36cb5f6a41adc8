"""Top-k scene classes for photos, folders and globs; needs only the weights (class names ship
with the package).

    python -m miniplaces_ext.predict photo.jpg [more.jpg ...] --use-custom-conv
    python -m miniplaces_ext.predict photo.jpg --arch alexnet --weights alexnet.pt --topk 3 --json
    python -m miniplaces_ext.predict ~/holiday/ 'scans/**/*.png' --output predictions.csv   # or .jsonl
    python -m miniplaces_ext.predict photo.jpg --arch all      # AlexNet and ResNet-18 side by side

A folder means every image file under it (recursively); a pattern with * ? [ is a glob
(** spans folders). With --output the rows (path, top-k ids, names, probabilities,
indoor/outdoor) are appended batch by batch, so an interrupted run (Ctrl-C) resumes
where it stopped when started again with the same --output: finished images are not
redone, and every batch runs at the full --batch-size (the last one padded), so the rows
are those an uninterrupted run writes, bit for bit. Unreadable files are skipped, counted
and written as rows with an error.

With --arch all every network (each with its default weights) answers for every photo, as the
course handout asks: printed one after the other under each photo, and in --json as
{"predictions": {path: {arch: answer}}}.

Each image is also called indoor or outdoor, as the Places365 demo does: by the
share of outdoor classes among its 10 most probable (indoor_outdoor.py).

Any image size is accepted: it is resized (shorter side 128), centre-cropped
to 128x128 and normalised like the course's training data, then fed in
batches of --batch-size. Class names come from the checkpoint if it carries
them (checkpoints from `train` do), else from the packaged Miniplaces list.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from miniplaces_ext import cli, data, indoor_outdoor, models

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def expand_inputs(specs: list[str]) -> list[str]:
    """Files as given; every image file under a folder (sorted, recursive); glob patterns expanded
    (sorted, ** recursive). A folder or pattern that matches nothing is an error naming it."""
    paths: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(str(p) for p in Path(spec).rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        else:
            found = [spec]
        if not found:
            raise FileNotFoundError(f"no image files in {spec}")
        paths.extend(found)
    return list(dict.fromkeys(paths))  # each file once, first occurrence first


class ImageFiles(torch.utils.data.Dataset):
    """Paths -> (index, preprocessed tensor or None, error message or None)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, data.load_image(self.paths[index]), None
        except (OSError, ValueError) as exc:  # load_image's message names the file
            return index, None, str(exc)


def _collate(items):
    return items


class RowWriter:
    """Appends prediction rows to a .csv or .jsonl file, flushed per batch; knows the paths already there."""

    def __init__(self, path: str, topk: int):
        self.path = Path(path)
        self.jsonl = self.path.suffix.lower() in (".jsonl", ".ndjson")
        if not self.jsonl and self.path.suffix.lower() != ".csv":
            raise ValueError(f"--output must end in .csv or .jsonl, got {path}")
        self.fields = ["path", *[f"{kind}{r}" for r in range(1, topk + 1) for kind in ("id", "class", "p")],
                       "environment", "outdoor_share", "error"]
        self.done = self._read_done()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")
        self.csv = None if self.jsonl else csv.DictWriter(self.file, fieldnames=self.fields)
        if self.csv is not None and new:
            self.csv.writeheader()

    def _read_done(self) -> set[str]:
        """Paths already in the file, after cutting off a last line an interruption left unfinished."""
        if not self.path.exists():
            return set()
        text = self.path.read_bytes()
        if text and not text.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(text.rfind(b"\n") + 1)
        with open(self.path, newline="") as f:
            if self.jsonl:
                try:
                    rows = [json.loads(line) for line in f if line.strip()]
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.path} is not JSON Lines written by this command: {exc}") from exc
            else:
                rows = list(csv.DictReader(f))
                if rows and list(rows[0].keys()) != self.fields:
                    raise ValueError(f"{self.path} has other columns ({', '.join(rows[0])}): not a resumable "
                                     f"output of this command with --topk {(len(self.fields) - 4) // 3}")
        return {row["path"] for row in rows}

    def write(self, path: str, result: dict | None, error: str | None) -> None:
        row: dict = {"path": path, "error": error}
        if result is not None:
            if self.jsonl:
                row.update(result)
            else:
                for r, entry in enumerate(result["top"], 1):
                    row.update({f"id{r}": entry["id"], f"class{r}": entry["class"],
                                f"p{r}": f"{entry['probability']:.6f}"})
                row["environment"] = result.get("environment")
                row["outdoor_share"] = result.get("outdoor_share")
        if self.jsonl:
            self.file.write(json.dumps(row) + "\n")
        else:
            self.csv.writerow(row)

    def flush(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def predict(model: torch.nn.Module, images: torch.Tensor, classes: list[str], topk: int,
            environments: list[str] | None = None) -> list[dict]:
    """For each image of the batch: {'top': the `topk` classes with their probabilities, and,
    when `environments` (indoor/outdoor per class) is given, 'environment' and 'outdoor_share'}."""
    with torch.inference_mode():
        probs = model(images).float().softmax(dim=1)
    return describe(probs, classes, topk, environments)


def describe(probs: torch.Tensor, classes: list[str], topk: int, environments: list[str] | None = None) -> list[dict]:
    """predict's answer for rows of class probabilities (N, classes)."""
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
    parser.add_argument("images", nargs="+", metavar="IMG",
                        help="image files, folders (every image under them) or glob patterns")
    cli.add_common_args(parser, archs=(*models.ARCHS, "all"), data_root=False)
    parser.add_argument("--topk", type=cli.positive_int, default=5, help="how many classes per image (default: 5)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default: 2)")
    parser.add_argument("--output", metavar="FILE", help="append rows to FILE.csv or FILE.jsonl; rerun to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_inference_args(parser)
    cli.add_json_arg(parser, "the predictions")
    args = parser.parse_args(argv)
    cli.check_inference_args(parser, args)
    side_by_side = args.arch == "all"
    if side_by_side and args.weights:
        parser.error("--weights names one checkpoint: give it with --arch resnet18 or alexnet "
                     "(--arch all loads each network's default weights)")
    if side_by_side and args.output:
        parser.error("--output writes one network's rows: give --arch resnet18 or alexnet")
    device = cli.setup(args)
    try:
        paths = expand_inputs(args.images)
    except FileNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    networks = {}  # arch -> (model, class names, indoor/outdoor labels)
    for arch in models.ARCHS if side_by_side else (args.arch,):
        model = cli.load_model(arch, args, device)
        classes = model.class_names
        if classes is None:
            parser.exit(2, f"error: the checkpoint has {model_outputs(model)} classes and carries no class names "
                           f"(the packaged names are for the {len(data.read_categories())} Miniplaces classes); "
                           f"save it as {{'state_dict': ..., 'classes': [...]}} as train does\n")
        if args.topk > len(classes):
            parser.error(f"--topk {args.topk} is more than the {arch} model's {len(classes)} classes")
        networks[arch] = (cli.inference_network(model, args), classes, indoor_outdoor.environment_labels(classes))
    writer = None
    if args.output:
        try:
            writer = RowWriter(args.output, args.topk)
        except ValueError as exc:
            parser.exit(2, f"error: {exc}\n")
        if writer.done:
            print(f"resuming: {len(writer.done & set(paths))} of {len(paths)} images already in {args.output}",
                  file=sys.stderr)
        paths = [p for p in paths if p not in writer.done]

    results, failed = {}, {}
    files = ImageFiles(paths)
    workers = args.workers if len(paths) > args.batch_size else 0  # one batch: decoding processes cost more
    loader = torch.utils.data.DataLoader(files, batch_size=args.batch_size, num_workers=workers, collate_fn=_collate)
    bar = tqdm(total=len(paths), unit="img", disable=args.no_progress or len(paths) <= args.batch_size,
               file=sys.stderr)
    try:
        for batch in loader:
            good = [(i, t) for i, t, err in batch if t is not None]
            for i, _, err in batch:
                if err is not None:
                    failed[paths[i]] = err
                    if writer:
                        writer.write(paths[i], None, err)
            if good:
                images = torch.stack([t for _, t in good]).to(device, memory_format=torch.channels_last)
                if writer:  # resumable rows: every batch the same size, whatever was done before
                    images = padded_batch(images, args.batch_size)
                answers = {arch: predict(model, images, classes, args.topk, environments)
                           for arch, (model, classes, environments) in networks.items()}
                for k, (i, _) in enumerate(good):
                    if writer:
                        writer.write(paths[i], answers[args.arch][k], None)
                    elif side_by_side:
                        results[paths[i]] = {arch: answer[k] for arch, answer in answers.items()}
                    else:
                        results[paths[i]] = answers[args.arch][k]
            if writer:
                writer.flush()
            bar.update(len(batch))
    except KeyboardInterrupt:
        bar.close()
        if writer:
            writer.close()
            print(f"\ninterrupted: rows so far are in {args.output}; run the same command to resume", file=sys.stderr)
        return 130
    bar.close()
    if writer:
        writer.close()
        print(f"{len(paths) - len(failed)} images predicted, {len(failed)} unreadable: {args.output}", file=sys.stderr)
    elif args.json:
        cli.write_json(args.json, {"arch": args.arch, "custom_conv": args.use_custom_conv, "predictions": results,
                                   "errors": failed})
    else:
        for path, result in results.items():
            if not side_by_side:
                print_answer(path, result)
                continue
            print(path)
            for arch, answer in result.items():
                print_answer(f"  {arch}", answer, indent="    ")
    for path, err in failed.items():
        print(f"{path}: error: {err}", file=sys.stderr)
    return 1 if failed and len(failed) == len(paths) else 0


def print_answer(title: str, result: dict, indent: str = "  ") -> None:
    """One network's answer for one image: the title, indoor/outdoor, then the ranked classes."""
    where = (f"  ({result['environment']}: {result['outdoor_share']:.0%} of the top-10 classes are outdoor)"
             if "environment" in result else "")
    print(f"{title}{where}")
    for rank, p in enumerate(result["top"], 1):
        env = f"  {p['environment']}" if "environment" in p else ""
        print(f"{indent}{rank}. {p['class']:30s} {p['probability']:6.1%}{env}")


def padded_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """`images` followed by black images up to `size` of them, channels_last.

    A convolution's sums for one image can depend on how many images share its batch (oneDNN
    and our kernels split the work by it), so a resumed run, whose batches hold other images
    than the interrupted one's, runs every batch at the full size: then each image gets the bits
    an uninterrupted run gives it."""
    missing = size - images.shape[0]
    if missing <= 0:
        return images
    fill = torch.zeros((missing, *images.shape[1:]), dtype=images.dtype, device=images.device)
    return torch.cat([images, fill]).contiguous(memory_format=torch.channels_last)


def model_outputs(model: torch.nn.Module) -> int:
    """The number of classes the network's last linear layer predicts."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


if __name__ == "__main__":
    raise SystemExit(main())
