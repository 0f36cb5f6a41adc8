"""The inference idioms PyTorch's docs use, on our kernels: tensors made under
torch.inference_mode (which have no version counter for the weight cache to key on), and a
swapped ResNet-18 under inference_mode + bfloat16 autocast on real val images."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import miniplaces_ext as me
from conftest import (PROVIDED_WEIGHTS, assert_within_accumulation_bound, miniplaces_root, requires_data,
                      requires_weights)
from miniplaces_ext import data, models

log = logging.getLogger(__name__)


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (1, 2), (7, 2)])  # Winograd, direct, GEMM, direct
def test_conv2d_on_inference_tensors(kernel, stride):
    """Operands made under inference_mode are convolved (packed per call, never cached: they
    have no version counter), within the float32 accumulation bound of float64; an in-place
    change to such a weight is seen by the next call."""
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    with torch.inference_mode():
        x = torch.randn(4, 32, 20, 20, generator=gen)
        w = torch.randn(64, 32, kernel, kernel, generator=gen) / (kernel * 32 ** 0.5)
        b = torch.randn(64, generator=gen)
        assert w.is_inference()
        cached_before = me.weight_cache_size()
        out = me.conv2d(x, w, b, stride, kernel // 2)
        assert me.weight_cache_size() == cached_before
        args = (stride, kernel // 2)
        ref = F.conv2d(x.double(), w.double(), b.double(), *args)
        abs_ref = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), *args)
        assert_within_accumulation_bound(out, ref, abs_ref, 32 * kernel * kernel + 1, "inference tensors")
        w.mul_(2)  # no version counter: the next call must still see it
        doubled = me.conv2d(x, w, b, stride, kernel // 2)
        assert_within_accumulation_bound(doubled, F.conv2d(x.double(), w.double(), b.double(), *args), 2 * abs_ref,
                                         32 * kernel * kernel + 1, "after an in-place change")


def test_cached_weight_outside_inference_tensors_still_cached():
    """A normal weight (a parameter) used under inference_mode is still packed once."""
    conv = me.nn.Conv2d(16, 32, 3, padding=1)
    me.clear_weight_cache()
    with torch.inference_mode():
        x = torch.randn(2, 16, 12, 12)
        conv(x)
        conv(x)
    assert me.weight_cache_size() == 1


@requires_data
@requires_weights
def test_swapped_resnet18_under_inference_mode_and_bf16_autocast():
    """The provided ResNet-18 with our convs under torch.inference_mode + torch.autocast("cpu",
    bfloat16) (autocast's weight copies are inference tensors there) runs on 96 real val images
    and agrees with torch's float32 model on the top-1 class of at least 93 of them (bfloat16
    keeps 8 bits of mantissa: images whose two best logits are within its rounding swap)."""
    root = miniplaces_root()
    dataset = data.MiniplacesDataset(root, "val", limit=96)
    images = torch.stack([dataset[i].image for i in range(len(dataset))])
    reference = models.load_checkpoint("resnet18", PROVIDED_WEIGHTS).eval()
    ours = me.swap_convs(models.load_checkpoint("resnet18", PROVIDED_WEIGHTS).eval())
    with torch.inference_mode():
        expected = reference(images).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = torch.cat([ours(batch) for batch in images.split(32)])
            again = ours(images[:32])
    assert logits.dtype == torch.bfloat16
    agreement = (logits.float().argmax(1) == expected).sum().item()
    log.info("bf16 autocast + inference_mode: top-1 agreement with float32 torch %d / %d", agreement, len(images))
    assert agreement >= 93
    assert torch.equal(again, logits[:32])  # the same bits on a second pass
