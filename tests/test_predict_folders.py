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


@requires_data
def test_arch_all_answers_with_both_networks_side_by_side(photo_dir, tmp_path, monkeypatch, capsys):
    """--arch all: every network (each with its default weights) answers for every photo, the same
    answer the network gives alone; the table names each network under each photo; --weights and
    --output, which name one network, are refused with one line."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for seed, arch in enumerate(models.ARCHS):
        torch.manual_seed(seed)
        torch.save(models.build(arch).state_dict(), folder / f"{arch}.pt")
    monkeypatch.setenv("MINIPLACES_WEIGHTS", str(folder))
    photos = [str(photo_dir / "img1.jpg"), str(photo_dir / "img2.jpg")]
    out = tmp_path / "all.json"
    assert predict.main([*photos, "--arch", "all", "--topk", "3", "--json", str(out)]) == 0
    both = json.loads(out.read_text())["predictions"]
    assert set(both) == set(photos) and all(set(answer) == set(models.ARCHS) for answer in both.values())
    for arch in models.ARCHS:
        alone = tmp_path / f"{arch}.json"
        assert predict.main([*photos, "--arch", arch, "--topk", "3", "--json", str(alone)]) == 0
        single = json.loads(alone.read_text())["predictions"]
        for photo in photos:
            assert [t["class"] for t in both[photo][arch]["top"]] == [t["class"] for t in single[photo]["top"]]
            torch.testing.assert_close([t["probability"] for t in both[photo][arch]["top"]],
                                       [t["probability"] for t in single[photo]["top"]])
    capsys.readouterr()
    assert predict.main([photos[0], "--arch", "all"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == photos[0] and [line.split()[0] for line in table if not line.startswith("    ")][1:] == list(
        models.ARCHS)
    for bad in (["--weights", str(folder / "resnet18.pt")], ["--output", str(tmp_path / "rows.csv")]):
        with pytest.raises(SystemExit) as exit_info:
            predict.main([photos[0], "--arch", "all", *bad])
        assert exit_info.value.code == 2
        assert "give" in capsys.readouterr().err.splitlines()[-1]
