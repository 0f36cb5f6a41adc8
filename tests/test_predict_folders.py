"""predict on folders and globs: CSV / JSON Lines rows, unreadable files counted, and a resumed
run that redoes nothing finished and ends with the same rows as an uninterrupted one."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from conftest import miniplaces_root, requires_data
from miniplaces_ext import models, predict


@pytest.fixture
def photo_dir(tmp_path):
    src = miniplaces_root() / "images" / "val"
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(1, 6):
        shutil.copy(src / f"{i:08d}.jpg", (folder / "sub" if i > 3 else folder) / f"img{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(models.build("resnet18").state_dict(), path)
    return str(path)


@requires_data
def test_folders_and_globs_expand_to_image_files(photo_dir):
    files = predict.expand_inputs([str(photo_dir)])
    assert len(files) == 6 and not any(f.endswith(".txt") for f in files)
    assert predict.expand_inputs([str(photo_dir / "**" / "img*.jpg")]) == sorted(
        str(p) for p in photo_dir.rglob("img*.jpg"))
    with pytest.raises(FileNotFoundError, match="no image files in"):
        predict.expand_inputs([str(photo_dir / "*.webp")])


@requires_data
@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_output_rows_and_resume(photo_dir, weights, tmp_path, suffix, capsys):
    full, resumed = tmp_path / f"full.{suffix}", tmp_path / f"resumed.{suffix}"
    args = [str(photo_dir), "--weights", weights, "--topk", "3", "--batch-size", "2", "--workers", "0"]
    assert predict.main([*args, "--output", str(full)]) == 0
    rows = _rows(full)
    assert len(rows) == 6 and sum(bool(r["error"]) for r in rows) == 1
    good = next(r for r in rows if not r["error"])
    if suffix == "csv":
        assert {"id1", "class3", "p2", "environment", "outdoor_share"} <= good.keys()
    else:
        assert len(good["top"]) == 3 and good["environment"] in ("indoor", "outdoor")

    # An interrupted run: the first 3 rows written, the 4th cut short.
    lines = full.read_text().splitlines(keepends=True)
    header = 1 if suffix == "csv" else 0
    resumed.write_text("".join(lines[:header + 3]) + lines[header + 3][:10])
    capsys.readouterr()
    assert predict.main([*args, "--output", str(resumed)]) == 0
    assert "resuming: 3 of 6 images already" in capsys.readouterr().err
    assert _by_path(_rows(resumed)) == _by_path(rows)


@requires_data
def test_output_must_be_csv_or_jsonl(photo_dir, weights, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        predict.main([str(photo_dir), "--weights", weights, "--output", str(tmp_path / "out.xlsx")])
    assert exc.value.code == 2 and "must end in .csv or .jsonl" in capsys.readouterr().err


def _rows(path):
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_path(rows):
    return {r["path"]: {k: v for k, v in r.items()} for r in rows}
