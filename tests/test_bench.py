"""The benchmark CLI runs end to end and reports ratios for every layer and network."""
from __future__ import annotations

import json

from miniplaces_ext import bench


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--net", "alexnet", "--batch-size", "2", "--min-time", "0", "--models", "--json",
                       str(out)]) == 0
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert [r["name"] for r in run["layers"]] == [l.name for l in bench.LAYERS if l.net == "alexnet"]
    assert all(r["fwd_ratio"] > 0 and r["fwdbwd_ratio"] > 0 for r in run["layers"])
    assert {m["net"] for m in run["models"]} == {"resnet18", "alexnet"}
    assert "3x3 layers ratio" in capsys.readouterr().out
