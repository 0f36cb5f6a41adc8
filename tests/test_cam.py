"""Class activation maps: CAM and Grad-CAM agree where theory says they must, our kernels give
torch's maps, the maps point at evidence the network uses, and the command writes overlays."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROVIDED_WEIGHTS, miniplaces_root, requires_data, requires_weights
from miniplaces_ext import cam, data, models
from miniplaces_ext import nn as ext_nn


def _val_batch(count: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    root = miniplaces_root()
    lines = (root / "val.txt").read_text().splitlines()[offset:offset + count]
    images = torch.stack([data.load_image(root / "images" / line.split()[0]) for line in lines])
    return images, torch.tensor([int(line.split()[1]) for line in lines])


def _model(custom: bool = False) -> torch.nn.Module:
    model = (models.load_checkpoint("resnet18", PROVIDED_WEIGHTS) if PROVIDED_WEIGHTS.exists()
             else models.build("resnet18").eval())
    return ext_nn.swap_convs(model) if custom else model


@requires_data
def test_gradcam_at_the_last_layer_is_cam():
    """With global average pooling + fc, Grad-CAM's weights are fc's divided by h*w: same normalised map."""
    x, _ = _val_batch(6)
    model = _model()
    ids = torch.tensor([[3, 17, 42]] * 6)
    maps_cam, _ = cam.activation_maps(model, "resnet18", x, ids, "cam")
    maps_grad, _ = cam.activation_maps(model, "resnet18", x, ids, "gradcam", "layer4")
    torch.testing.assert_close(maps_grad, maps_cam, rtol=1e-4, atol=1e-5)


@requires_data
@pytest.mark.parametrize("method, layer", [("cam", "layer4"), ("gradcam", "layer3"), ("gradcam", "layer2")])
def test_our_kernels_give_torchs_maps(method, layer):
    """layer3/layer2 Grad-CAM gradients run through our conv backward."""
    x, labels = _val_batch(4)
    ids = labels[:, None]
    ours, p_ours = cam.activation_maps(_model(custom=True), "resnet18", x, ids, method, layer)
    ref, p_ref = cam.activation_maps(_model(), "resnet18", x, ids, method, layer)
    assert (ours.amax(dim=(2, 3)) == 1).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(p_ours, p_ref, rtol=0, atol=1e-5)


@requires_data
def test_alexnet_gradcam_runs_through_our_kernels():
    model = ext_nn.swap_convs(models.build("alexnet").eval())
    x, labels = _val_batch(2)
    maps, probs = cam.activation_maps(model, "alexnet", x, labels[:, None], "gradcam", "conv4")
    assert maps.shape == (2, 1, 15, 15) and probs.shape == (2, 100)


@requires_weights
@requires_data
def test_the_map_marks_evidence_the_network_uses():
    """Deleting the 4 of 16 image cells the true class's CAM ranks highest lowers that class's
    probability more than deleting 4 random cells (images the network gets right, confidently)."""
    model = _model()
    x, labels = _val_batch(200)
    with torch.no_grad():
        probs = model(x).softmax(1)
    keep = (probs.argmax(1) == labels) & (probs.max(1).values > 0.5)
    x, labels = x[keep][:24], labels[keep][:24]
    assert len(x) >= 10
    maps, base = cam.activation_maps(model, "resnet18", x, labels[:, None], "cam")
    cell_scores = torch.nn.functional.adaptive_avg_pool2d(maps[:, 0], 4)  # 4x4 cells of 32x32 pixels
    generator = torch.Generator().manual_seed(0)
    masked = {"cam": x.clone(), "random": x.clone()}
    for i in range(len(x)):
        for kind, cells in (("cam", cell_scores[i].flatten().topk(4).indices),
                            ("random", torch.randperm(16, generator=generator)[:4])):
            for c in cells.tolist():
                masked[kind][i, :, (c // 4) * 32:(c // 4 + 1) * 32, (c % 4) * 32:(c % 4 + 1) * 32] = 0  # mean colour
    drops = {}
    for kind, images in masked.items():
        with torch.no_grad():
            p = model(images).softmax(1).gather(1, labels[:, None])[:, 0]
        drops[kind] = (base.gather(1, labels[:, None])[:, 0] - p).numpy()
    cam_drop, random_drop = np.mean(drops["cam"]), np.mean(drops["random"])
    assert cam_drop > random_drop + 0.05, (cam_drop, random_drop)


def test_centre_crop_box_matches_preprocess():
    assert cam.centre_crop_box(128, 128) == (0, 0, 128, 128)
    left, top, right, bottom = cam.centre_crop_box(400, 200)
    assert (top, bottom) == (0, 200) and right - left == pytest.approx(200, abs=2) and left == pytest.approx(100, abs=2)


@requires_data
def test_command_writes_overlays_and_json(tmp_path, capsys):
    src = miniplaces_root() / "images" / "val" / "00000001.jpg"
    wide = tmp_path / "wide photo.png"
    Image.open(src).resize((300, 160)).save(wide)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    weights = PROVIDED_WEIGHTS if PROVIDED_WEIGHTS.exists() else tmp_path / "w.pt"
    if not weights.exists():
        torch.save(models.build("resnet18").state_dict(), weights)
    out = tmp_path / "maps"
    assert cam.main([str(src), str(wide), str(bad), "--weights", str(weights), "--topk", "2", "--out", str(out),
                     "--use-custom-conv", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert set(report["maps"]) == {str(src), str(wide)} and str(bad) in report["errors"]
    assert "cannot read image" in captured.err
    for entries in report["maps"].values():
        assert len(entries) == 2 and entries[0]["probability"] >= entries[1]["probability"]
        for entry in entries:
            with Image.open(entry["png"]) as png:
                assert png.size[0] > 300
    assert (out / "wide_photo_1_" f"{report['maps'][str(wide)][0]['class'].replace('/', '_')}.png").exists()


def test_command_rejects_cam_for_alexnet_and_unknown_classes(tmp_path, capsys):
    weights = tmp_path / "a.pt"
    torch.save(models.build("alexnet").state_dict(), weights)
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(photo)
    for argv, message in ((["--arch", "alexnet", "--method", "cam"], "needs --arch resnet18"),
                          (["--arch", "alexnet", "--class", "spaceship"], "unknown class 'spaceship'")):
        with pytest.raises(SystemExit) as exc:
            cam.main([str(photo), "--weights", str(weights), *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
