"""DeepDream: the Laplacian-pyramid gradient normalisation, the channel and class objectives,
tiled gradients, and the octave-by-octave GIF."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import PROVIDED_WEIGHTS, requires_weights
from miniplaces_ext import dream, models
from miniplaces_ext import nn as ext_nn


def test_laplacian_normalize_weights_every_band_equally():
    """A smooth ramp plus a faint checkerboard: a plain normalisation keeps the checkerboard's
    share as small as it was; lapnorm lifts the finest band by orders of magnitude. And it
    ignores the gradient's scale."""
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (x + y)[None, None].expand(1, 3, 64, 64) / 64
    checker = ((x + y) % 2 * 2 - 1)[None, None].expand(1, 3, 64, 64)
    grad = ramp + 1e-3 * checker
    out = dream.laplacian_normalize(grad)

    def fine_to_coarse(g):
        centred = ramp - ramp.mean()
        return ((g * checker).mean() / ((g * centred).mean() / centred.pow(2).mean().sqrt())).abs()

    assert fine_to_coarse(out) > 30 * fine_to_coarse(grad), (fine_to_coarse(out), fine_to_coarse(grad))
    assert fine_to_coarse(grad / grad.abs().mean()) == pytest.approx(fine_to_coarse(grad).item(), rel=1e-3)  # mean-abs: no lift
    torch.testing.assert_close(dream.laplacian_normalize(37.0 * grad), out, rtol=1e-4, atol=1e-5)


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
    act = lambda t: dream.layer_activation(model, "resnet18", "layer2", t)[:, 5].mean()  # noqa: E731
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
    for argv, message in ((["--channel", "999"], "--channel must be in 0..255"),
                          (["--class", "spaceship"], "unknown class 'spaceship'")):
        try:
            dream.main([str(photo), "--weights", str(weights), *argv])
        except SystemExit as exc:
            assert exc.code == 2
        assert message in capsys.readouterr().err
