"""evaluate --report: one self-contained HTML page whose figures are evaluate's own, pictures
that decode, calibration maths checked by hand, and (where Debian's chromium is installed, as
scripts/setup.sh does) a real headless browser rendering it."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROVIDED_WEIGHTS, copy_val_subset, requires_data
from miniplaces_ext import evaluate, report


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "mp"
    copy_val_subset(root, 60)
    weights = PROVIDED_WEIGHTS
    if not weights.exists():
        from miniplaces_ext import models
        weights = tmp / "w.pt"
        torch.save(models.build("resnet18").state_dict(), weights)
    html, js = tmp / "report.html", tmp / "r.json"
    assert evaluate.main(["--data-root", str(root), "--weights", str(weights), "--use-custom-conv",
                          "--compare-native", "--report", str(html), "--json", str(js), "--no-progress",
                          "--workers", "0"]) == 0
    return html.read_text(), json.loads(js.read_text())["results"]["resnet18"], tmp


@requires_data
def test_page_is_self_contained_and_states_evaluates_figures(page):
    text, res, _ = page
    assert not re.search(r"""(src|href)=["']?(https?:|//|/)""", text), "the page loads something from elsewhere"
    for section in ("Per-class top-1 accuracy", "Confusion matrix", "most confused pairs", "Calibration",
                    "Settings", "torch convs top-1"):
        assert section in text
    assert f"{res['top1']:.2%}" in text and f"{res['top5']:.2%}" in text
    images = re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) >= 3
    for _, payload in images:
        Image.open(io.BytesIO(base64.b64decode(payload))).verify()


def test_reliability_and_ece_by_hand():
    conf = np.array([0.05, 0.15, 0.95, 0.95, 0.55])
    correct = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    stats = report.reliability(conf, correct)
    assert [b["count"] for b in stats["bins"]] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    expected = (1 * abs(0 - 0.05) + 1 * abs(1 - 0.15) + 1 * abs(1 - 0.55) + 2 * abs(0.5 - 0.95)) / 5
    assert stats["ece"] == pytest.approx(expected)


def test_confused_pairs_are_the_largest_off_diagonal_entries():
    confusion = torch.tensor([[9, 3, 0], [1, 9, 5], [0, 2, 9]])
    assert report.confused_pairs(confusion, 3) == [(1, 2, 5), (0, 1, 3), (2, 1, 2)]


@requires_data
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (scripts/setup.sh installs it as root with apt-get)")
def test_a_real_browser_renders_the_page(page):
    _, _, tmp = page
    shot = tmp / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", (tmp / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20, "the screenshot is blank"
