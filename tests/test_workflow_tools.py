"""retrieve (cache reuse/invalidation/corruption), dream, and the data download."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading

import pytest
import torch

from miniplaces_ext import data, dream, models, retrieve
from conftest import miniplaces_root, requires_data


@requires_data
def test_retrieve_cli_caches_and_recovers(small_root, small_weights, tmp_path, capsys):
    query = small_root / "images" / "val" / "00000001.jpg"
    cache_dir = tmp_path / "cache"
    args = [str(query), "--data-root", str(small_root), "--weights", str(small_weights), "--k", "3", "--workers",
            "0", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "nb.png"), "--json", "--no-progress",
            "--use-custom-conv"]
    assert retrieve.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    caches = list(cache_dir.glob("*.pt"))
    assert len(caches) == 1
    names = [n["file"] for n in first["neighbours"]]
    assert len(names) == 3 and "val/00000001.jpg" not in names, "the query itself is excluded"
    assert "val/00000003.jpg" not in names, "the corrupt file is not in the gallery"
    distances = [n["distance"] for n in first["neighbours"]]
    assert distances == sorted(distances)
    assert (tmp_path / "nb.png").stat().st_size > 5_000

    # Reuse: the cache is not rewritten.
    stamp = caches[0].stat().st_mtime_ns
    assert retrieve.main(args) == 0
    assert json.loads(capsys.readouterr().out)["neighbours"] == first["neighbours"]
    assert caches[0].stat().st_mtime_ns == stamp

    # Corruption is detected and the cache rebuilt with the same answer.
    caches[0].write_bytes(caches[0].read_bytes()[:100])
    assert retrieve.main(args) == 0
    assert json.loads(capsys.readouterr().out)["neighbours"] == first["neighbours"]
    assert retrieve.load_cache(caches[0], retrieve.cache_key(
        "resnet18", small_weights, data.MiniplacesDataset(small_root, "val"),
        retrieve.conv_kind(True, fused=True))) is not None

    # Other weights -> another key -> another cache file.
    torch.manual_seed(1)
    torch.save(models.build("resnet18").state_dict(), small_weights)
    assert retrieve.main(args) == 0
    capsys.readouterr()
    assert len(list(cache_dir.glob("*.pt"))) == 2


def test_nearest_is_exact():
    gallery = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [-2.0, 0.0]])
    dist, idx = retrieve.nearest(torch.tensor([0.9, 1.0]), gallery, 3)
    assert idx.tolist() == [2, 0, 3]
    torch.testing.assert_close(dist, torch.tensor([0.1, (0.81 + 1) ** 0.5, (2.9 ** 2 + 1) ** 0.5]))


def test_dream_changes_image_deterministically(tmp_path):
    torch.manual_seed(0)
    model = models.build("resnet18").eval()
    from miniplaces_ext import nn as ext_nn
    ext_nn.swap_convs(model)
    image = torch.randn(1, 3, 48, 48) * 0.5
    run = functools.partial(dream.dream, model, "resnet18", image, "layer2", octaves=2, steps=3, lr=0.05, jitter=4,
                            progress=False)
    a = run(generator=torch.Generator().manual_seed(3))
    b = run(generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b), "fixed seed, same dream"
    assert a.shape == image.shape and not torch.allclose(a, image, atol=1e-3)
    low, high = dream._pixel_bounds("cpu")
    assert (a >= low - 1e-6).all() and (a <= high + 1e-6).all()
    assert all(not p.requires_grad for p in model.parameters())
    before = models.layer_activation(model, "resnet18", "layer2", image).pow(2).mean()
    after = models.layer_activation(model, "resnet18", "layer2", a).pow(2).mean()
    assert after > before, "gradient ascent raises the layer's activation"


def test_dream_rejects_unknown_layer(capsys):
    with pytest.raises(SystemExit):
        dream.main(["x.jpg", "--layer", "layer9"])
    assert "valid layers: stem, layer1" in capsys.readouterr().err


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1 (with Range support) for the download test."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

        def send_head(self):
            rng = self.headers.get("Range")
            path = www / self.path.lstrip("/")
            if not rng or not path.is_file():
                return super().send_head()
            start = int(rng.split("=")[1].split("-")[0])
            body = path.read_bytes()[start:]
            self.send_response(206)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _tiny_archive(path):
    from PIL import Image
    with tarfile.open(path, "w:gz") as tar:
        for name in ("images/val/00000001.jpg", "images/train/a/abbey/00000001.jpg", "images/test/00000001.jpg"):
            buf = io.BytesIO()
            Image.new("RGB", (128, 128), (10, 200, 30)).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"data/{name}")
            info.size = len(buf.getvalue())
            buf.seek(0)
            tar.addfile(info, buf)


def test_download_from_local_server(http_server, tmp_path, monkeypatch):
    www, url = http_server
    monkeypatch.setattr(data, "KNOWN_SHA256", {})  # this server's label files are made up
    _tiny_archive(www / "data.tar.gz")
    (www / "categories.txt").write_text("/a/abbey 0\n/b/bar 1\n")
    (www / "train.txt").write_text("train/a/abbey/00000001.jpg 0\n")
    (www / "val.txt").write_text("val/00000001.jpg 1\n")
    root = tmp_path / "mp"
    # A half-finished earlier download resumes.
    root.mkdir()
    (root / "data.tar.gz.part").write_bytes((www / "data.tar.gz").read_bytes()[:50])
    assert data.main(["download", "--root", str(root), "--url", f"{url}/data.tar.gz", "--labels-url", url,
                      "--no-progress"]) == 0
    ds = data.MiniplacesDataset(root, "val")
    assert ds.classes == ["abbey", "bar"] and ds[0].image.shape == (3, 128, 128) and ds[0].label == 1
    assert data.read_split(root, "test") == [("test/00000001.jpg", -1)]
    assert not list(root.glob("*.part")) and not (root / "data.tar.gz").exists()


def test_download_refuses_files_whose_sha256_differs(http_server, tmp_path, capsys):
    """A label file unlike the kit's, or an archive unlike --sha256, is refused with one line and
    deleted; the archive with the right --sha256 is taken."""
    www, url = http_server
    _tiny_archive(www / "data.tar.gz")
    (www / "categories.txt").write_text("/a/abbey 0\n/b/bar 1\n")  # not the kit's categories.txt
    root = tmp_path / "mp"
    args = ["download", "--root", str(root), "--url", f"{url}/data.tar.gz", "--labels-url", url, "--no-progress"]
    assert data.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "categories.txt: sha256" in err[0] and "is not the expected" in err[0], err
    assert not (root / "categories.txt").exists() and not list(root.glob("*.part"))
    for name in data.KNOWN_SHA256:  # the kit's own label files, then the archive
        (root / name).write_bytes(_kit_label_file(name))
    (root / "train.txt").write_text("train/a/abbey/00000001.jpg 0\n")
    assert data.main([*args, "--sha256", "0" * 64]) == 1
    assert "data.tar.gz: sha256" in capsys.readouterr().err and not (root / "data.tar.gz").exists()
    digest = hashlib.sha256((www / "data.tar.gz").read_bytes()).hexdigest()
    assert data.main([*args, "--sha256", digest.upper()]) == 0
    assert (root / "images" / "val" / "00000001.jpg").exists()


def _kit_label_file(name: str) -> bytes:
    path = miniplaces_root() / name
    if not path.exists():
        pytest.skip(f"needs the kit's {name} (../shared/miniplaces) to build a matching copy")
    return path.read_bytes()


def test_download_offline_fails_cleanly(tmp_path, capsys):
    root = tmp_path / "mp"
    code = data.main(["download", "--root", str(root), "--url", "http://127.0.0.1:9/data.tar.gz",
                      "--labels-url", "http://127.0.0.1:9", "--no-progress"])
    assert code == 1
    assert "could not download" in capsys.readouterr().err
    assert not (root / "categories.txt").exists() and not list(root.glob("*.part"))


@requires_data
def test_dream_cli_end_to_end(small_root, small_weights, tmp_path):
    out = tmp_path / "dream.png"
    image = small_root / "images" / "val" / "00000001.jpg"
    assert dream.main([str(image), "--weights", str(small_weights), "--layer", "layer2", "--octaves", "2",
                       "--steps", "2", "--size", "64", "--use-custom-conv", "--out", str(out), "--no-progress"]) == 0
    from PIL import Image
    with Image.open(out) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


@requires_data
def test_evaluate_all_prints_one_table_of_both_networks(small_root, tmp_path, monkeypatch, capsys):
    """evaluate --arch all: each network (its default weights) on the same images, then one table
    whose rows are the JSON's figures."""
    from miniplaces_ext import evaluate

    weights = tmp_path / "weights"
    weights.mkdir()
    for arch in models.ARCHS:
        torch.save(models.build(arch).state_dict(), weights / f"{arch}.pt")
    monkeypatch.setenv("MINIPLACES_WEIGHTS", str(weights))
    out = tmp_path / "results.json"
    assert evaluate.main(["--data-root", str(small_root), "--arch", "all", "--use-custom-conv", "--no-progress",
                          "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("network "):].splitlines()
    results = json.loads(out.read_text())["results"]
    assert table[0].split() == ["network", "convs", "images", "top-1", "top-5", "img/s"]
    assert [line.split()[0] for line in table[1:]] == list(models.ARCHS) == list(results)
    for line, arch in zip(table[1:], models.ARCHS):
        fields = line.split()
        assert fields[1:5] == ["custom", str(results[arch]["images"]), f"{results[arch]['top1']:.2%}",
                               f"{results[arch]['top5']:.2%}"]
