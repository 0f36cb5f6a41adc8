"""Indoor or outdoor: each Miniplaces class's Places365 label, and the Places demo's vote.

The table (indoor_outdoor.txt, shipped with the package) is derived from the public
Places365 labels by scripts/derive_indoor_outdoor.py. An image is called indoor or outdoor
the way the Places365 demo does it: the unweighted share of outdoor classes among its 10
most probable classes, outdoor at 0.5 or more.
"""
from __future__ import annotations

from pathlib import Path

import torch

TABLE = Path(__file__).with_name("indoor_outdoor.txt")
VOTERS = 10  # the Places demo votes over the top-10 classes


def class_environments() -> dict[str, str]:
    """Class name (as read_categories gives it, e.g. 'bar/inside') -> 'indoor' or 'outdoor'."""
    table = {}
    for line in TABLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            path, label, _rule = line.split()
            table[path.strip("/").split("/", 1)[1]] = label
    return table


def environment_labels(classes: list[str]) -> list[str] | None:
    """'indoor'/'outdoor' for each of the model's classes, or None when any class is not in the table."""
    table = class_environments()
    if not all(name in table for name in classes):
        return None
    return [table[name] for name in classes]


def vote(probs: torch.Tensor, labels: list[str], voters: int = VOTERS) -> list[dict]:
    """For each row of class probabilities: {'environment': 'indoor'|'outdoor', 'outdoor_share': s},
    s the share of outdoor classes among the `voters` most probable (outdoor when s >= 0.5)."""
    outdoor = torch.tensor([label == "outdoor" for label in labels], dtype=torch.float64)
    top = probs.topk(min(voters, probs.shape[1]), dim=1).indices.cpu()
    shares = outdoor[top].mean(dim=1).tolist()
    return [{"environment": "outdoor" if s >= 0.5 else "indoor", "outdoor_share": s} for s in shares]
