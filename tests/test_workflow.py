"""The Miniplaces workflow: data, models, checkpoints, predict and evaluate CLIs."""
from __future__ import annotations

import json
import pytest
import torch

from miniplaces_ext import data, evaluate, models, predict
from miniplaces_ext import nn as ext_nn
from conftest import PROVIDED_WEIGHTS, REPO, miniplaces_root, requires_data, requires_weights


@requires_data
def test_dataset_layout_and_labels():
    root = miniplaces_root()
    val = data.MiniplacesDataset(root, "val")
    assert len(val) == 10_000
    assert val.items[0] == ("val/00000001.jpg", 71)
    assert val.classes[0] == "abbey" and val.classes[71] == "palace" and len(val.classes) == 100
    sample = val[0]
    assert sample.image.shape == (3, 128, 128) and sample.label == 71
    train = data.read_split(root, "train")
    assert train[0] == ("train/a/abbey/00000001.jpg", 0)


def test_preprocess_squares_any_size():
    from PIL import Image
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    x = data.preprocess(image)
    assert x.shape == (3, 128, 128)
    torch.testing.assert_close(x[0].mean(), torch.tensor((1 - data.MEAN[0]) / data.STD[0]))


def test_missing_data_root_explains(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="MINIPLACES_ROOT"):
        data.resolve_root(tmp_path / "nowhere")


@pytest.mark.parametrize("arch", models.ARCHS)
def test_checkpoint_round_trip_is_strict(arch, tmp_path):
    model = models.build(arch)
    path = tmp_path / f"{arch}.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = models.load_checkpoint(arch, path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_mismatch_lists_keys(tmp_path):
    state = models.build("resnet18").state_dict()
    del state["layer1.0.BN1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["layer4.1.Conv2.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(models.CheckpointError) as info:
        models.load_checkpoint("resnet18", tmp_path / "bad.pt")
    message = str(info.value)
    assert "missing (1): layer1.0.BN1.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "layer4.1.Conv2.weight: checkpoint (3, 3, 3, 3) vs model (512, 512, 3, 3)" in message


def test_missing_weights_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIPLACES_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(models, "REPO_MODELS", tmp_path)
    with pytest.raises(FileNotFoundError, match="models/README.md"):
        models.find_weights("alexnet")


@requires_data
@requires_weights
def test_provided_resnet_custom_equals_native_on_real_images():
    model = models.load_checkpoint("resnet18", PROVIDED_WEIGHTS)
    images = torch.stack([data.MiniplacesDataset(miniplaces_root(), "val")[i].image for i in range(16)])
    with torch.no_grad():
        native = model(images)
        ext_nn.swap_convs(model)
        custom = model(images)
    assert (custom.argmax(1) == native.argmax(1)).all()
    assert (custom - native).abs().max() <= 1e-4 * native.abs().max()


@requires_data
def test_evaluate_cli_end_to_end(small_root, small_weights, tmp_path):
    out = tmp_path / "eval.json"
    png = tmp_path / "confusion.png"
    code = evaluate.main(["--data-root", str(small_root), "--weights", str(small_weights), "--use-custom-conv",
                          "--compare-native", "--batch-size", "4", "--workers", "0", "--json", str(out),
                          "--confusion", str(png), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    res = report["results"]["resnet18"]
    assert res["images"] == 5 and res["skipped"] == 1 and res["skipped_files"][0].endswith("00000003.jpg")
    assert 0 <= res["top1"] <= res["top5"] <= 1
    assert res["agreement_with_native"] == 1.0 and res["max_abs_logit_difference"] < 1e-3
    assert png.stat().st_size > 10_000


@requires_data
def test_predict_cli_json(small_root, small_weights, capsys):
    image = next((small_root / "images" / "val").glob("00000001.jpg"))
    code = predict.main([str(image), "--weights", str(small_weights), "--topk", "3", "--json", "--use-custom-conv"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    preds = out["predictions"][str(image)]["top"]
    assert len(preds) == 3 and preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]
    assert all(p["class"] in data.read_categories(small_root) for p in preds)


@requires_data
def test_evaluate_sharded_over_two_processes_matches(small_root, small_weights, tmp_path):
    import os
    import subprocess
    import sys
    single, sharded = tmp_path / "single.json", tmp_path / "sharded.json"
    common = ["--data-root", str(small_root), "--weights", str(small_weights), "--workers", "0", "--batch-size", "2",
              "--no-progress", "--use-custom-conv"]
    assert evaluate.main([*common, "--json", str(single)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29532",
           "-m", "miniplaces_ext.evaluate", *common, "--json", str(sharded)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a = json.loads(single.read_text())["results"]["resnet18"]
    b = json.loads(sharded.read_text())["results"]["resnet18"]
    for key in ("images", "skipped", "skipped_files", "top1", "top5", "per_class_top1"):
        assert a[key] == b[key], key
