"""DeepDream: the Laplacian-pyramid gradient normalisation, the channel and class objectives,
tiled gradients, and the octave-by-octave GIF."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROVIDED_WEIGHTS, miniplaces_root, requires_data, requires_weights
from miniplaces_ext import data, dream, models
from miniplaces_ext import nn as ext_nn


VAL_PHOTOS = ("00000007", "00000042", "00000123")


def _patterns(size: int = 64):
    y, x = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    blob = torch.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (2 * 8.0 ** 2))
    checker = (x + y) % 2 * 2 - 1  # period 2: what a stride-2 layer's uneven overlap leaves
    stripes = torch.cos(2 * torch.pi * (x + y) / 4)  # diagonal, period 4
    return [t[None, None].expand(1, 3, size, size) for t in (blob, checker, stripes)]


def test_smoothing_removes_the_stride_patterns_and_keeps_shapes():
    """At the blur a default dream uses mid-octave (sigma 2.25 px: smoothing 1.5 x 1.5), the
    cascade cuts a period-2 checkerboard and period-4 diagonal stripes to under a tenth while a
    shape 8 px wide keeps most of itself."""
    blob, checker, stripes = _patterns()
    out = dream.smooth_gradient(blob + checker + stripes, sigma=2.25)
    share = lambda pattern: ((out * pattern).sum() / (pattern * pattern).sum()).item()  # noqa: E731
    assert share(checker) < 0.1 and share(stripes) < 0.1, (share(checker), share(stripes))
    assert share(blob) > 0.8, share(blob)


def test_colour_step_goes_along_natural_colours():
    """A gradient on the red channel alone moves all three channels the same way, by similar
    amounts in RGB (mostly luminance): no pure-red or cyan speckle."""
    grad = torch.zeros(1, 3, 4, 4)
    grad[:, 0] = 1.0
    std = torch.tensor(data.STD).view(1, 3, 1, 1)
    rgb_step = dream.decorrelate_colour(grad) * std  # back to RGB units
    per_channel = rgb_step[0, :, 0, 0]
    assert (per_channel > 0).all() and per_channel.max() / per_channel.min() < 1.5, per_channel


def test_random_view_rotates_about_the_centre():
    x = torch.randn(1, 3, 16, 16)
    assert dream.random_view(x, 0.0, 1.0) is x
    turned = dream.random_view(x, 90.0, 1.0)
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, -1))


def test_stripe_check_tells_stripes_from_shapes():
    """dream_figures' stripe peak: a photo plus period-4 diagonal stripes stands out; the same
    photo plus smooth blobs of the same mean change does not."""
    torch.manual_seed(0)
    photo = np.asarray(Image.open(_photo_or_noise()).convert("RGB").resize((256, 256)), dtype=np.float64)
    y, x = np.mgrid[0:256, 0:256]
    striped = photo + 30 * np.cos(2 * np.pi * (x + y) / 4)[..., None]
    blobs = photo + 30 * np.sign(np.sin(x / 23.0) * np.cos(y / 31.0))[..., None] * \
        np.exp(-((x % 64 - 32) ** 2 + (y % 64 - 32) ** 2) / 400.0)[..., None]
    as_image = lambda a: Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))  # noqa: E731
    base = as_image(photo)
    assert dream.dream_figures(base, as_image(striped))["stripe_peak"] > 20
    assert dream.dream_figures(base, as_image(blobs))["stripe_peak"] < 8


def _photo_or_noise() -> str:
    path = miniplaces_root() / "images" / "val" / f"{VAL_PHOTOS[0]}.jpg"
    if path.exists():
        return str(path)
    noise = Path(tempfile.mkdtemp()) / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(noise)
    return str(noise)


@requires_weights
@requires_data
def test_default_dream_grows_structure_without_stripes():
    """The default dream on the provided ResNet-18 (layer4, 384 px, our kernels) changes each of
    three val photos by >= 25 levels on average and >= 12 after a radius-4 blur, with a stripe
    peak under 8. Before the gradient smoothing (Laplacian-pyramid normalisation) the same
    photos gave stripe peaks of 38.5, 8.3 and 32.3 at 384 px and means of 11-24 levels at 256."""
    model = ext_nn.swap_convs(models.load_checkpoint("resnet18", PROVIDED_WEIGHTS)).to(
        memory_format=torch.channels_last).eval()
    for name in VAL_PHOTOS:
        image = data.load_image(str(miniplaces_root() / "images" / "val" / f"{name}.jpg"), size=384)[None]
        out = dream.dream(model, "resnet18", image, models.DEFAULT_LAYER["resnet18"],
                          generator=torch.Generator().manual_seed(0), progress=False)
        figures = dream.dream_figures(dream.to_image(image), dream.to_image(out))
        assert figures["mean_change"] >= 25 and figures["blurred_change"] >= 12, (name, figures)
        assert figures["stripe_peak"] < 8, (name, figures)


def test_tiled_gradient_equals_the_whole_one_for_a_local_objective():
    x = torch.randn(1, 3, 100, 90)
    loss_of = lambda t: t.pow(2).sum()  # noqa: E731
    whole, _ = dream._tiled_gradient(loss_of, x, tile=512)
    tiled, _ = dream._tiled_gradient(loss_of, x, tile=40)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :80, :80] = True  # tiles of 40 px; the 20 px / 10 px slivers at the edges are skipped
    torch.testing.assert_close(tiled[mask], whole[mask])
    assert (tiled[~mask] == 0).all()


def test_channel_and_class_objectives_rise_through_our_kernels():
    torch.manual_seed(0)
    model = ext_nn.swap_convs(models.build("resnet18").eval())
    image = torch.randn(1, 3, 64, 64) * 0.5
    kwargs = dict(octaves=1, steps=4, lr=0.05, jitter=0, progress=False)
    out = dream.dream(model, "resnet18", image, "layer2", channel=5, **kwargs)
    act = lambda t: models.layer_activation(model, "resnet18", "layer2", t)[:, 5].mean()  # noqa: E731
    assert act(out) > act(image)
    out = dream.dream(model, "resnet18", image, "layer4", class_id=42, **kwargs)
    with torch.no_grad():
        assert model(out)[0, 42] > model(image)[0, 42]


@requires_weights
def test_gif_and_class_dream_from_the_command(tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (96, 80), (120, 160, 90)).save(photo)
    out, gif = tmp_path / "d.png", tmp_path / "d.gif"
    assert dream.main([str(photo), "--weights", str(PROVIDED_WEIGHTS), "--class", "bamboo_forest", "--size", "64",
                       "--octaves", "2", "--steps", "2", "--out", str(out), "--gif", str(gif), "--no-progress"]) == 0
    with Image.open(gif) as animation:
        assert animation.n_frames >= 3  # the photo and one frame per octave
    with Image.open(out) as picture:
        assert picture.size == (64, 64)  # the centre crop the network sees


def test_command_checks_channel_and_class(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(models.build("resnet18").state_dict(), weights)
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(photo)
    for argv, message in ((["--channel", "999"], "--channel must be in 0..511"),
                          (["--class", "spaceship"], "unknown class 'spaceship'")):
        try:
            dream.main([str(photo), "--weights", str(weights), *argv])
        except SystemExit as exc:
            assert exc.code == 2
        assert message in capsys.readouterr().err
