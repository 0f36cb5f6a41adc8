"""Miniplaces challenge submissions: the development kit's file format and its scoring rule.

A submission has one line per image of the split, sorted by path:
    test/00000001.jpg 62 81 19 2 3
the image path under images/ and five class ids, most likely first. An image scores
top-k error 0 when its label is among the first k ids, else 1; the split's top-k error is
the mean (the kit reports top-5 error; top-1 is the same rule with k = 1).

    python -m miniplaces_ext.submission preds.txt --split val      # score a val submission
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from miniplaces_ext import cli, data

GUESSES = 5


def write(path: str | Path, predictions: dict[str, list[int]]) -> None:
    """Writes {image path under images/: 5 class ids} in the kit's format, sorted, atomically."""
    path = Path(path)
    for image, ids in predictions.items():
        if len(ids) != GUESSES:
            raise ValueError(f"{image}: a submission needs {GUESSES} class ids, got {len(ids)}")
    text = "".join(f"{image} {' '.join(str(i) for i in ids)}\n" for image, ids in sorted(predictions.items()))
    with tempfile.NamedTemporaryFile("w", dir=path.parent or ".", delete=False, prefix=f".{path.name}.") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def read(path: str | Path) -> dict[str, list[int]]:
    """{image: 5 class ids} from a submission file; a malformed line is an error naming it."""
    predictions = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if len(fields) != GUESSES + 1 or not all(f.isdigit() for f in fields[1:]):
            raise ValueError(f"{path}:{number}: expected an image path and {GUESSES} class ids, got {line!r}")
        predictions[fields[0]] = [int(f) for f in fields[1:]]
    return predictions


def score(predictions: dict[str, list[int]], labels: dict[str, int]) -> dict[str, float]:
    """Top-1 ... top-5 error of a submission against {image: label}; every labelled image must be there."""
    missing = sorted(set(labels) - set(predictions))
    if missing:
        raise ValueError(f"the submission lacks {len(missing)} of the {len(labels)} images, e.g. {missing[0]}")
    errors = {}
    for k in range(1, GUESSES + 1):
        wrong = sum(labels[image] not in predictions[image][:k] for image in labels)
        errors[f"top{k}_error"] = wrong / len(labels)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.submission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submission", help="a file written by `evaluate --submission`")
    parser.add_argument("--data-root", help="Miniplaces folder (default: $MINIPLACES_ROOT or ./data/miniplaces)")
    parser.add_argument("--split", default="val", choices=["val", "train"], help="labelled split to score against")
    cli.add_json_arg(parser, "the errors")
    args = parser.parse_args(argv)
    try:
        labels = dict(data.read_split(data.resolve_root(args.data_root), args.split))
        errors = score(read(args.submission), labels)
    except (OSError, ValueError, data.DataNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.json:
        cli.write_json(args.json, errors)
    else:
        print("  ".join(f"{name.replace('_', ' ')} {value:.2%}" for name, value in errors.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
