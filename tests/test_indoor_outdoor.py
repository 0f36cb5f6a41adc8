"""Indoor/outdoor: the packaged table (derived from Places365's labels) and the demo's top-10 vote."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from conftest import PROVIDED_WEIGHTS, REPO, miniplaces_root, requires_weights
from miniplaces_ext import data, indoor_outdoor, predict

# A few lines of CSAILVision/places365 IO_places365.txt (1 = indoor, 2 = outdoor), enough to
# check each rule of the derivation.
PLACES365_SAMPLE = """/b/bedroom 1
/b/beach 2
/t/temple/asia 2
/a/airfield 2
"""


def test_every_class_has_a_label_and_known_ones_are_right():
    env = indoor_outdoor.class_environments()
    assert set(env) == set(data.read_categories())
    assert set(env.values()) == {"indoor", "outdoor"}
    for name, label in [("bedroom", "indoor"), ("kitchen", "indoor"), ("bar", "indoor"), ("coast", "outdoor"),
                        ("mountain", "outdoor"), ("monastery/outdoor", "outdoor"), ("temple/east_asia", "outdoor")]:
        assert env[name] == label, name
    assert sum(v == "indoor" for v in env.values()) == 42


def test_derivation_rules():
    sys.path.insert(0, str(REPO / "scripts"))
    from derive_indoor_outdoor import derive
    rows = derive(PLACES365_SAMPLE.splitlines(),
                  ["/b/bedroom", "/b/beach", "/t/temple/east_asia", "/t/track/outdoor", "/a/abbey"])
    assert rows == [("/b/bedroom", "indoor", "places365"), ("/b/beach", "outdoor", "places365"),
                    ("/t/temple/east_asia", "outdoor", "places365-renamed"), ("/t/track/outdoor", "outdoor", "name"),
                    ("/a/abbey", "outdoor", "inspected")]


def test_packaged_table_matches_the_derivation_rules():
    """Every line's label follows from its rule: names with a suffix, and no unexplained rule."""
    for line in indoor_outdoor.TABLE.read_text().splitlines():
        if line.startswith("#"):
            continue
        path, label, rule = line.split()
        assert rule in {"places365", "places365-renamed", "name", "inspected"}
        if rule == "name":
            assert path.endswith("/" + label)


def test_vote_is_the_share_of_outdoor_classes_in_the_top_10():
    labels = ["indoor"] * 6 + ["outdoor"] * 6
    probs = torch.zeros(3, 12)
    probs[0, :10] = torch.linspace(1, 0.5, 10)            # top-10: 6 indoor, 4 outdoor
    probs[1, 2:12] = torch.linspace(1, 0.5, 10)           # top-10: 4 indoor, 6 outdoor
    probs[2, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]] = 1.0       # 5 and 5: a tie goes outdoor, as in the demo
    out = indoor_outdoor.vote(probs, labels)
    assert [o["environment"] for o in out] == ["indoor", "outdoor", "outdoor"]
    assert [o["outdoor_share"] for o in out] == [0.4, 0.6, 0.5]


def test_classes_outside_the_table_give_no_labels():
    assert indoor_outdoor.environment_labels(["bedroom", "spaceship"]) is None
    assert indoor_outdoor.environment_labels(["bedroom", "coast"]) == ["indoor", "outdoor"]


@requires_weights
def test_predict_reports_indoor_or_outdoor_on_real_photos(capsys):
    """Val images of clearly indoor and outdoor classes, with the provided weights."""
    root = miniplaces_root()
    names = data.read_categories(root)
    wanted = {"bedroom": "indoor", "kitchen": "indoor", "coast": "outdoor", "mountain": "outdoor"}
    images = {}
    for line in (root / "val.txt").read_text().splitlines():
        rel, label = line.split()
        name = names[int(label)]
        if name in wanted and len([p for p in images.values() if p == name]) < 5:
            images[str(root / "images" / rel)] = name
    assert predict.main([*images, "--weights", str(PROVIDED_WEIGHTS), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["predictions"]
    right = sum(results[path]["environment"] == wanted[name] for path, name in images.items())
    assert right >= 0.8 * len(images), f"{right} of {len(images)} indoor/outdoor calls right"
    for result in results.values():
        assert all(p["environment"] == indoor_outdoor.class_environments()[p["class"]] for p in result["top"])


def test_predict_text_output_names_the_environment(tmp_path):
    from PIL import Image
    photo = tmp_path / "p.png"
    Image.new("RGB", (160, 120), (90, 140, 200)).save(photo)
    weights = tmp_path / "w.pt"
    from miniplaces_ext import models
    torch.save(models.build("resnet18").state_dict(), weights)
    proc = subprocess.run([sys.executable, "-m", "miniplaces_ext.predict", str(photo), "--weights", str(weights)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "of the top-10 classes are outdoor)" in proc.stdout
    assert ("(indoor:" in proc.stdout) != ("(outdoor:" in proc.stdout)
