"""Training: the loss falls, resume is bit-exact, Ctrl-C leaves a resumable run, DDP keeps ranks in step."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from miniplaces_ext import data, models, train
from conftest import REPO, miniplaces_root, requires_data

pytestmark = requires_data


def _args(out, *extra):
    return ["--arch", "resnet18", "--data-root", str(miniplaces_root()), "--limit", "48", "--val-limit", "16",
            "--batch-size", "8", "--image-size", "32", "--workers", "0", "--lr", "0.05", "--warmup-steps", "2",
            "--use-custom-conv", "--no-progress", "--out", str(out), *extra]


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_exist(tmp_path):
    out = tmp_path / "run"
    assert train.main(_args(out, "--epochs", "4")) == 0
    log = _log(out)
    assert len(log) == 4 and log[-1]["train_loss"] < log[0]["train_loss"] - 0.2
    for name in ("checkpoint.pt", "resnet18.pt", "resnet18.json", "curve.png", "log.jsonl"):
        assert (out / name).exists(), name
    card = json.loads((out / "resnet18.json").read_text())
    assert card["arch"] == "resnet18" and 0 <= card["val_top1"] <= 1
    model = models.load_checkpoint("resnet18", out / "resnet18.pt")  # the workflow commands can load the export
    assert torch.load(out / "resnet18.pt", weights_only=True)["classes"] == data.read_categories(miniplaces_root())
    assert model.class_names == data.read_categories()


def _final_state(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    return ckpt["model"], ckpt["optimizer"]["state"], ckpt["epoch"]


def test_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(_args(straight, "--epochs", "3")) == 0
    assert train.main(_args(split, "--epochs", "3", "--stop-after-epochs", "1")) == 0
    assert _final_state(split)[2] == 1
    assert train.main(["--resume", str(split), "--no-progress"]) == 0
    (a, opt_a, ep_a), (b, opt_b, ep_b) = _final_state(straight), _final_state(split)
    assert ep_a == ep_b == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for i in opt_a:
        assert torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"])
    assert [e["train_loss"] for e in _log(straight)] == [e["train_loss"] for e in _log(split)]


def _run(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "miniplaces_ext.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigint_writes_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _run(_args(out, "--epochs", "50", "--limit", "400"))
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() and time.time() < deadline:  # wait for the first epoch to finish
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "resumable checkpoint" in output and "--resume" in output
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] >= 1 and ckpt["epoch"] < 50
    # resume runs on (a single more epoch keeps the test short)
    assert train.main(["--resume", str(out), "--stop-after-epochs", "1", "--no-progress"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == ckpt["epoch"] + 1


def test_torchrun_two_processes_stay_in_sync(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "-m", "miniplaces_ext.train", *_args(out, "--epochs", "1", "--threads", "1")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parameters identical on 2 ranks" in result.stdout + result.stderr
    assert len(_log(out)) == 1, "rank 0 alone writes the log"


def test_corrupt_checkpoint_is_reported_not_used(tmp_path):
    out = tmp_path / "run"
    assert train.main(_args(out, "--epochs", "1")) == 0
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    import pytest
    with pytest.raises(SystemExit, match="unreadable"):
        train.main(["--resume", str(out), "--no-progress"])
