"""Derive miniplaces_ext/indoor_outdoor.txt from the Places365 indoor/outdoor labels.

    python scripts/derive_indoor_outdoor.py IO_places365.txt > miniplaces_ext/indoor_outdoor.txt

IO_places365.txt is public data of the CSAILVision/places365 repository (one line per
Places365 class, "/a/airfield 2": 1 = indoor, 2 = outdoor). The 100 Miniplaces classes
(miniplaces_ext/categories.txt) are Places classes; each gets its label by the first rule
that applies, and the rule is written beside it:
  places365         the same category path in Places365 (96 classes)
  places365-renamed the category Places365 renamed (temple/east_asia -> temple/asia)
  name              a "/indoor" or "/outdoor" suffix in the Miniplaces name itself
  inspected         not in Places365 and no suffix: abbey, labelled outdoor after looking at
                    16 of its val images (13 show the building from outside)
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENAMED = {"/t/temple/east_asia": "/t/temple/asia"}
INSPECTED = {"/a/abbey": "outdoor"}
LABELS = {1: "indoor", 2: "outdoor"}


def derive(io_lines: list[str], categories: list[str]) -> list[tuple[str, str, str]]:
    """(category path, indoor|outdoor, rule) for each Miniplaces category, in id order."""
    places = {path: LABELS[int(label)] for path, label in (line.split() for line in io_lines if line.strip())}
    rows = []
    for path in categories:
        if path in places:
            rows.append((path, places[path], "places365"))
        elif RENAMED.get(path) in places:
            rows.append((path, places[RENAMED[path]], "places365-renamed"))
        elif path.endswith(("/indoor", "/outdoor")):
            rows.append((path, path.rsplit("/", 1)[1], "name"))
        elif path in INSPECTED:
            rows.append((path, INSPECTED[path], "inspected"))
        else:
            raise SystemExit(f"no rule gives {path} an indoor/outdoor label")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("io_places365", type=Path, help="IO_places365.txt from CSAILVision/places365")
    args = parser.parse_args()
    lines = (ROOT / "miniplaces_ext" / "categories.txt").read_text().splitlines()
    categories = [line.rsplit(maxsplit=1)[0] for line in sorted(lines, key=lambda l: int(l.rsplit(maxsplit=1)[1]))]
    print("# Miniplaces class -> indoor/outdoor, derived by scripts/derive_indoor_outdoor.py from\n"
          "# CSAILVision/places365 IO_places365.txt; third column: the rule that gave the label.")
    for path, label, rule in derive(args.io_places365.read_text().splitlines(), categories):
        print(f"{path} {label} {rule}")


if __name__ == "__main__":
    main()
