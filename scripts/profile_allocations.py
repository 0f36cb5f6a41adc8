"""Counts the allocations and copies our conv ops make per ResNet-18 step (torch.profiler).

    python scripts/profile_allocations.py [--batch 32] [--weights models/resnet18.pt]

For inference (inference_mode) and a training step (forward + backward), prints per op the
aten allocation/copy calls made inside it and the bytes they allocated. The model is
channels_last, as the workflow commands run it. Findings: docs/cpu_kernels.md.
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from miniplaces_ext import models
from miniplaces_ext import nn as ext_nn

COUNTED = ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros", "aten::clone", "aten::copy_")


def step(model: torch.nn.Module, x: torch.Tensor, training: bool) -> None:
    if training:
        model(x.clone().requires_grad_()).sum().backward()
    else:
        with torch.inference_mode():
            model(x)


def count(model: torch.nn.Module, x: torch.Tensor, training: bool) -> dict:
    """{(our op, aten call): [calls, bytes]} for one step, after two warm-up steps."""
    step(model, x, training)
    step(model, x, training)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, x, training)
    found: dict = collections.defaultdict(lambda: [0, 0])
    for event in prof.events():
        if not event.name.startswith("miniplaces_ext::"):
            continue
        stack = list(event.cpu_children)
        while stack:
            child = stack.pop()
            if child.name in COUNTED:
                entry = found[(event.name.split("::")[1], child.name)]
                entry[0] += 1
                entry[1] += max(child.cpu_memory_usage, 0)
            stack.extend(child.cpu_children)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--weights", default="models/resnet18.pt")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ext_nn.swap_convs(models.load_checkpoint("resnet18", args.weights))
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(args.batch, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    for training in (False, True):
        print(f"== {'training step' if training else 'inference'}, batch {args.batch}")
        for (op, call), (calls, size) in sorted(count(model, x, training).items()):
            print(f"   {op:16s} {call:20s} {calls:4d} calls {size / 2**20:9.1f} MiB")


if __name__ == "__main__":
    main()
