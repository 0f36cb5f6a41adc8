"""Outputs are replaced atomically: a writer killed mid-write (SIGKILL, no cleanup possible)
leaves the old complete file; an exception leaves the old file and no temp file."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from miniplaces_ext import cli

CHILD = textwrap.dedent(r'''
    import sys, time
    from pathlib import Path
    from miniplaces_ext import cli

    def slow(tmp):
        with open(tmp, "w") as f:
            f.write('{"half": ')
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

    cli.atomic_write(sys.argv[1], slow)
''')


def test_sigkill_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "result.json"
    cli.write_json(target, {"version": 1})
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads(target.read_text()) == {"version": 1}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.pt"
    cli.save_torch({"w": torch.ones(3)}, target)

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cli.atomic_write(target, broken)
    assert torch.equal(torch.load(target)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_new_content_replaces_old(tmp_path):
    target = tmp_path / "out.json"
    cli.write_json(target, {"v": 1})
    time.sleep(0.01)
    cli.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
