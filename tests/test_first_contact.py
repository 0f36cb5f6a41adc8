"""A newcomer's path: predict with nothing but weights and a photo, and the CLI/API
defects of issue 10 (each test fails on the code before its fix)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from miniplaces_ext import cli, data, evaluate, models, predict
from conftest import REPO, miniplaces_root, requires_data


@pytest.fixture
def photo(tmp_path) -> Path:
    """A synthetic 200x150 photo (no data set involved)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(path)
    return path


def _save(tmp_path: Path, arch: str, payload=None, num_classes: int = 100) -> Path:
    torch.manual_seed(0)
    state = models.build(arch, num_classes).state_dict()
    path = tmp_path / f"{arch}-{num_classes}.pt"
    torch.save(state if payload is None else {"state_dict": state, **payload}, path)
    return path


@pytest.mark.parametrize("arch", ["resnet18", "alexnet"])
def test_predict_needs_only_weights_and_a_photo(arch, photo, tmp_path):
    """From a folder with no data set and no MINIPLACES_ROOT: top-5 with the packaged names."""
    weights = _save(tmp_path, arch)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MINIPLACES_ROOT", "MINIPLACES_WEIGHTS")}
    proc = subprocess.run([sys.executable, "-m", "miniplaces_ext.predict", str(photo), "--arch", arch, "--weights",
                           str(weights), "--json"], capture_output=True, text=True, cwd=empty, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    preds = json.loads(proc.stdout)["predictions"][str(photo)]["top"]
    names = data.read_categories()
    assert len(preds) == 5 and all(p["class"] == names[p["id"]] for p in preds)
    assert sum(p["probability"] for p in preds) <= 1.0 + 1e-6


@requires_data
def test_packaged_names_are_the_official_kits():
    assert data.PACKAGED_CATEGORIES.read_bytes() == (miniplaces_root() / "categories.txt").read_bytes()
    assert data.read_categories() == data.read_categories(miniplaces_root())


def test_checkpoint_names_win_and_are_checked(photo, tmp_path, capsys):
    names = [f"scene_{i}" for i in range(7)]
    weights = _save(tmp_path, "resnet18", {"classes": names}, num_classes=7)
    assert predict.main([str(photo), "--weights", str(weights), "--topk", "3", "--json"]) == 0
    assert {p["class"] for p in json.loads(capsys.readouterr().out)["predictions"][str(photo)]["top"]} <= set(names)
    bad = _save(tmp_path, "resnet18", {"classes": names[:5]}, num_classes=7)
    with pytest.raises(models.CheckpointError, match="names 5 classes but its last layer has 7"):
        models.load_checkpoint("resnet18", bad)


def test_unnamed_checkpoint_of_another_class_count_is_one_clear_error(photo, tmp_path, capsys):
    weights = _save(tmp_path, "resnet18", num_classes=7)
    with pytest.raises(SystemExit) as exc:
        predict.main([str(photo), "--weights", str(weights)])
    assert exc.value.code == 2
    assert "has 7 classes and carries no class names" in capsys.readouterr().err


@pytest.mark.parametrize("topk", ["0", "-1", "101"])
def test_predict_rejects_bad_topk(topk, photo, tmp_path):
    with pytest.raises(SystemExit) as exc:
        predict.main([str(photo), "--weights", str(_save(tmp_path, "resnet18")), "--topk", topk])
    assert exc.value.code == 2


def test_predict_batches_give_the_same_answers(tmp_path, capsys):
    weights = str(_save(tmp_path, "resnet18"))
    rng = np.random.default_rng(1)
    images = []
    for i in range(5):
        images.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 130, 3), dtype=np.uint8)).save(images[-1])
    outs = []
    for batch in ("2", "32"):
        assert predict.main([*images, "--weights", weights, "--batch-size", batch, "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out)["predictions"])
    assert list(outs[0]) == list(outs[1]) == images
    for path in images:
        assert [p["id"] for p in outs[0][path]["top"]] == [p["id"] for p in outs[1][path]["top"]]
        torch.testing.assert_close([p["probability"] for p in outs[0][path]["top"]],
                                   [p["probability"] for p in outs[1][path]["top"]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--compare-native"], "add --use-custom-conv"),
    (["--limit", "-5"], "must be a positive integer"),
    (["--limit", "0"], "must be a positive integer"),
    (["--dtype", "bfloat16"], "add --use-custom-conv"),
    (["--use-custom-conv", "--no-fuse", "--dtype", "bfloat16"], "drop --no-fuse"),
])
def test_evaluate_rejects_meaningless_options(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_torchrun_local_rank_picks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = cli.argparse.Namespace(verbose=False, threads=None, device="cuda")
    assert cli.setup(args) == torch.device("cuda", 1)
    args.device = "cuda:0"  # an explicit index is kept
    assert cli.setup(args) == torch.device("cuda", 0)


def test_custom_conv_on_cuda_without_cuda_kernels_is_one_clear_error(monkeypatch):
    """A build without CUDA kernels, a GPU and --use-custom-conv: one line naming the fix, not the
    dispatcher's error at the first convolution."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.ext_library, "cuda_kernels_built", lambda: False)
    args = cli.argparse.Namespace(verbose=False, threads=None, device="cuda", use_custom_conv=True)
    with pytest.raises(SystemExit, match="has no CUDA kernels.*FORCE_CUDA=1"):
        cli.setup(args)
    args.use_custom_conv = False  # torch's convs need none of ours
    assert cli.setup(args) == torch.device("cuda")


def test_atomic_write_leaves_the_umask_alone_and_syncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("atomic_write changed the process umask"))
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    cli.atomic_write(tmp_path / "out.txt", lambda tmp: Path(tmp).write_text("hello"))
    assert (tmp_path / "out.txt").read_text() == "hello" and len(synced) == 2  # the file, then its folder
    mode = (tmp_path / "out.txt").stat().st_mode & 0o777
    umask = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                     if line.startswith("Umask:")), 8)
    assert mode == 0o666 & ~umask


def test_plots_leave_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice must survive our plots
    try:
        evaluate.plot_confusion(torch.eye(3, dtype=torch.long), ["a", "b", "c"], "t", str(tmp_path / "c.png"))
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_console_scripts_are_declared():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("predict", "evaluate", "retrieve", "dream", "train", "bench"):
        module, func = scripts[f"miniplaces-{name}"].split(":")
        assert module == f"miniplaces_ext.{name}" and func == "main"


def test_wrong_torch_is_one_clear_import_error(monkeypatch):
    """The check runs before the library is loaded (where a mismatch would be an undefined-symbol trace)."""
    from miniplaces_ext import _build_info, _library

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "2.0.0+cu118")
    monkeypatch.setattr(torch.ops, "load_library", lambda path: pytest.fail("loaded a mismatched library"))
    with pytest.raises(ImportError) as exc:
        _library.load()
    message = str(exc.value)
    assert "2.0.0+cu118" in message and torch.__version__ in message and "--no-build-isolation" in message
    assert "\n" not in message


def test_shipped_library_holds_no_test_harness():
    """The CUDA-on-CPU harness is a test-only extension: `import miniplaces_ext` registers none of
    its ops, and the shipped binary holds none of its code (nor its SIGSEGV handler)."""
    import miniplaces_ext

    assert not hasattr(torch.ops.miniplaces_ext, "cuda_on_cpu_configure")
    assert b"cuda_on_cpu" not in Path(miniplaces_ext.LIBRARY_PATH).read_bytes()
