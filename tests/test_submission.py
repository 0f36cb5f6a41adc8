"""Challenge submissions: evaluate --submission writes the kit's format; scored by the kit's rule
it reproduces evaluate's own top-1/top-5 exactly; unreadable or missing test images are errors."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import PROVIDED_WEIGHTS, copy_val_subset, requires_data
from miniplaces_ext import evaluate, submission


@pytest.fixture
def val_root(tmp_path):
    """A Miniplaces folder holding the first 40 real val images (all readable)."""
    copy_val_subset(tmp_path / "mp", 40)
    return tmp_path / "mp"


def _weights(small_weights):
    return str(PROVIDED_WEIGHTS if PROVIDED_WEIGHTS.exists() else small_weights)


@requires_data
def test_val_submission_scored_by_the_kit_rule_gives_evaluates_figures(val_root, small_weights, tmp_path, capsys):
    out, report = tmp_path / "val_sub.txt", tmp_path / "report.json"
    assert evaluate.main(["--data-root", str(val_root), "--weights", _weights(small_weights), "--submission",
                          str(out), "--json", str(report), "--no-progress", "--workers", "0"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 40 and lines == sorted(lines)
    assert all(line.startswith("val/") and len(line.split()) == 6 for line in lines)
    res = json.loads(report.read_text())["results"]["resnet18"]
    labels = dict(line.split() for line in (val_root / "val.txt").read_text().splitlines())
    errors = submission.score(submission.read(out), {k: int(v) for k, v in labels.items()})
    assert 1 - errors["top1_error"] == res["top1"] and 1 - errors["top5_error"] == res["top5"]
    capsys.readouterr()
    assert submission.main([str(out), "--data-root", str(val_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == errors


@requires_data
def test_test_split_submission(val_root, small_weights, tmp_path):
    test_dir = val_root / "images" / "test"
    test_dir.mkdir()
    for i, src in enumerate(sorted((val_root / "images" / "val").glob("*.jpg"))[:3], 1):
        shutil.copy(src, test_dir / f"{4 - i:08d}.jpg")
    out = tmp_path / "test_sub.txt"
    assert evaluate.main(["--data-root", str(val_root), "--split", "test", "--weights", _weights(small_weights),
                          "--submission", str(out), "--no-progress", "--workers", "0"]) == 0
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["test/00000001.jpg", "test/00000002.jpg", "test/00000003.jpg"]
    assert all(len(set(line.split()[1:])) == 5 and all(0 <= int(c) < 100 for c in line.split()[1:])
               for line in lines)

    (test_dir / "00000002.jpg").write_bytes(b"not a jpeg")
    out.unlink()
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--data-root", str(val_root), "--split", "test", "--weights", _weights(small_weights),
                       "--submission", str(out), "--no-progress", "--workers", "0"])
    assert exc.value.code == 1 and not out.exists()


@requires_data
def test_missing_test_images_are_a_clear_error(val_root, small_weights, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--data-root", str(val_root), "--split", "test", "--weights", str(small_weights),
                       "--submission", str(tmp_path / "s.txt")])
    assert exc.value.code == 2 and "no test images under" in capsys.readouterr().err


def test_test_split_needs_a_submission_file(capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--split", "test"])
    assert exc.value.code == 2 and "add --submission" in capsys.readouterr().err


def test_reading_and_scoring_check_their_input(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("val/00000001.jpg 1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected an image path and 5 class ids"):
        submission.read(bad)
    with pytest.raises(ValueError, match="lacks 1 of the 2 images"):
        submission.score({"a.jpg": [1, 2, 3, 4, 5]}, {"a.jpg": 1, "b.jpg": 2})
    assert submission.score({"a.jpg": [9, 1, 2, 3, 4]}, {"a.jpg": 1}) == {
        "top1_error": 1.0, "top2_error": 0.0, "top3_error": 0.0, "top4_error": 0.0, "top5_error": 0.0}
