"""Miniplaces data: the official folder layout, course preprocessing, robust loading.

Layout (as in the official development kit)::

    ROOT/categories.txt   "/a/abbey 0"           100 lines
    ROOT/train.txt        "train/a/abbey/00000001.jpg 0"
    ROOT/val.txt          "val/00000001.jpg 71"
    ROOT/images/...       the JPEGs; images/test/*.jpg is the unlabelled test split

The root is --data-root, else $MINIPLACES_ROOT, else ./data/miniplaces.

    python -m miniplaces_ext.data download [--root DIR]    # official archive + label files
    python -m miniplaces_ext.data info [--root DIR]        # what is there
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

MEAN = (0.45486851, 0.43632515, 0.40461355)
STD = (0.26440552, 0.26142306, 0.27963778)
IMAGE_SIZE = 128
SPLITS = ("train", "val", "test")


class DataNotFoundError(FileNotFoundError):
    """The Miniplaces folder is missing; the message says how to get it."""


def resolve_root(data_root: Optional[Union[str, Path]] = None) -> Path:
    """--data-root, else $MINIPLACES_ROOT, else ./data/miniplaces; raises DataNotFoundError if absent."""
    root = Path(data_root or os.environ.get("MINIPLACES_ROOT") or "data/miniplaces")
    if not (root / "categories.txt").is_file():
        raise DataNotFoundError(
            f"Miniplaces data not found at {root} (no categories.txt). Pass --data-root DIR or set "
            f"$MINIPLACES_ROOT to a folder in the official layout (categories.txt, train.txt, val.txt, images/). "
            f"To fetch the official archive and label files: python -m miniplaces_ext.data download --root {root}"
        )
    return root


PACKAGED_CATEGORIES = Path(__file__).with_name("categories.txt")  # the official kit's file, shipped with us


def read_categories(root: Optional[Path] = None) -> list[str]:
    """Class names by id from ROOT/categories.txt (the packaged copy when root is None):
    '/a/abbey 0' -> 'abbey', '/b/bar/inside 7' -> 'bar/inside'."""
    names: dict[int, str] = {}
    path = PACKAGED_CATEGORIES if root is None else root / "categories.txt"
    for line in path.read_text().splitlines():
        if line.strip():
            path, idx = line.rsplit(maxsplit=1)
            names[int(idx)] = path.strip("/").split("/", 1)[1]
    return [names[i] for i in range(len(names))]


def read_split(root: Path, split: str) -> list[tuple[str, int]]:
    """(relative image path under images/, label) pairs; test images get label -1."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "test":
        return [(f"test/{p.name}", -1) for p in sorted((root / "images" / "test").glob("*.jpg"))]
    items = []
    for line in (root / f"{split}.txt").read_text().splitlines():
        if line.strip():
            path, label = line.rsplit(maxsplit=1)
            items.append((path, int(label)))
    return items


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> Tensor:
    """Course preprocessing for any image: RGB, shorter side to `size`, centre crop, normalise -> (3, size, size)."""
    image = image.convert("RGB")
    w, h = image.size
    if min(w, h) != size:
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def load_image(path: Union[str, Path], size: int = IMAGE_SIZE) -> Tensor:
    """One image file, preprocessed; raises OSError/ValueError naming the file if it can't be decoded."""
    try:
        with Image.open(path) as image:
            return preprocess(image, size)
    except (OSError, ValueError) as exc:
        raise type(exc)(f"cannot read image {path}: {exc}") from exc


@dataclass
class Sample:
    """One decoded item: image tensor (or None if unreadable), label, index in the split."""

    image: Optional[Tensor]
    label: int
    index: int


class MiniplacesDataset(torch.utils.data.Dataset):
    """A split of Miniplaces. Unreadable files yield ``Sample(image=None)`` and a warning, never an exception.

    ``transform(image, index)`` replaces the course preprocessing (e.g. a training
    augmentation seeded per image).
    """

    def __init__(self, root: Union[str, Path, None] = None, split: str = "val", limit: Optional[int] = None,
                 size: int = IMAGE_SIZE, transform: Optional[Callable[[Image.Image, int], Tensor]] = None):
        self.root = resolve_root(root)
        self.split = split
        self.items = read_split(self.root, split)[:limit]
        self.classes = read_categories(self.root)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def path(self, index: int) -> Path:
        """Absolute path of item `index`."""
        return self.root / "images" / self.items[index][0]

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        try:
            with Image.open(self.root / "images" / path) as image:
                image.load()
                tensor = self.transform(image, index) if self.transform else preprocess(image, self.size)
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable image %s: %s", self.root / "images" / path, exc)
            tensor = None
        return Sample(tensor, label, index)


@dataclass
class Batch:
    """Decoded images of one batch, their labels and split indices, and the indices that were skipped."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    skipped: list[int]


def collate(samples: Sequence[Sample]) -> Batch:
    """Stacks the readable samples and records the unreadable ones."""
    good = [s for s in samples if s.image is not None]
    images = torch.stack([s.image for s in good]) if good else torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return Batch(images, torch.tensor([s.label for s in good], dtype=torch.long),
                 torch.tensor([s.index for s in good], dtype=torch.long),
                 [s.index for s in samples if s.image is None])


def loader(dataset: MiniplacesDataset, batch_size: int, workers: int, shuffle: bool = False,
           sampler=None) -> torch.utils.data.DataLoader:
    """A DataLoader with parallel decoding that tolerates unreadable files."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       num_workers=workers, collate_fn=collate,
                                       persistent_workers=False, prefetch_factor=4 if workers else None)


# ---------------------------------------------------------------------------
# Download

ARCHIVE_URL = "https://places.csail.mit.edu/miniplaces/data/data.tar.gz"
LABELS_URL = "https://raw.githubusercontent.com/CSAILVision/miniplaces/master/data"
LABEL_FILES = ("categories.txt", "train.txt", "val.txt", "object_categories.txt")
REQUIRED_LABEL_FILES = ("categories.txt", "train.txt", "val.txt")
# SHA-256 of the development kit's label files that every copy shares (computed from copies
# byte-identical to the kit's data/ folder). The kit publishes no checksum for data.tar.gz or
# train.txt, so those are checked only against a value the user passes (--sha256).
KNOWN_SHA256 = {
    "categories.txt": "8658c6e5154e7502a1377e5ba1530b6f3618c0ddf98c72c14d2ad47bb6138d43",
    "val.txt": "0b554c7bc4fe97393a42484c36a28ea69efa1a27aadf5220db78823fa7913737",
}


class DownloadError(RuntimeError):
    """A download that could not complete; nothing half-written is left in place."""


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: Optional[str], name: Optional[str] = None) -> str:
    """Returns the file's SHA-256; when `expected` is given and differs, deletes the file and raises
    DownloadError with one line saying so (naming the file `name`, default its own)."""
    got = sha256_of(path)
    if expected is not None and got != expected.lower():
        path.unlink()
        raise DownloadError(f"{name or path.name}: sha256 {got} is not the expected {expected.lower()}; "
                            f"the file was deleted (a changed or corrupted download)")
    return got


def fetch(url: str, dest: Path, progress: bool = True, timeout: float = 30.0, sha256: Optional[str] = None) -> Path:
    """Downloads `url` to `dest` atomically and resumably, verified against `sha256` when given.

    Bytes go to ``dest.part``; an interrupted download resumes from there with
    an HTTP Range request (or restarts if the server ignores it), and only a
    complete file whose hash matches is renamed to `dest`. (torch.hub's
    download_url_to_file checks a hash prefix too, but cannot resume.)
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            total = response.headers.get("Content-Length")
            total = int(total) + (have if resumed else 0) if total else None
            from tqdm import tqdm

            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                    desc=dest.name, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        kept = f" The partial file {part} is kept; the next run resumes it." if part.exists() else ""
        raise DownloadError(f"could not download {url}: {exc}. Check the network (or a proxy).{kept}") from exc
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    verify_sha256(part, sha256, dest.name)
    os.replace(part, dest)
    return dest


def extract_archive(archive: Path, root: Path) -> int:
    """Extracts the archive's images/ tree into root (safely, via a temp folder); returns the file count."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "images/" in m.name]
            if not members:
                raise DownloadError(f"{archive} holds no images/ folder: not the Miniplaces archive?")
            for m in members:  # regular files only (above); no absolute or parent-relative names
                if Path(m.name).is_absolute() or ".." in Path(m.name).parts:
                    raise DownloadError(f"{archive} holds an unsafe path {m.name!r}; not extracted")
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                if hasattr(tarfile, "data_filter"):  # Python 3.12, 3.11.4+, 3.10.12+
                    tar.extractall(tmp, members=members, filter="data")
                else:  # older: the checks above are the filter
                    tar.extractall(tmp, members=members)
                src = next(Path(tmp).rglob("images"))
                dest = root / "images"
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(src, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive} is not a readable tar.gz ({exc}); delete it and download again") from exc
    return len(members)


def download(root: Path, archive_url: str = ARCHIVE_URL, labels_url: str = LABELS_URL,
             progress: bool = True, archive_sha256: Optional[str] = None) -> Path:
    """Downloads and unpacks Miniplaces into `root`: label files first (those in KNOWN_SHA256
    verified), then the image archive (verified against `archive_sha256` when given)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in LABEL_FILES:
        if (root / name).exists() and name in KNOWN_SHA256:
            verify_sha256(root / name, KNOWN_SHA256[name])
        if not (root / name).exists():
            try:
                fetch(f"{labels_url}/{name}", root / name, progress=False, sha256=KNOWN_SHA256.get(name))
            except DownloadError:
                if name in REQUIRED_LABEL_FILES:
                    raise
                log.info("optional label file %s not available; skipped", name)
    archive = root / "data.tar.gz"
    if not (root / "images" / "val").is_dir():
        if not archive.exists():
            fetch(archive_url, archive, progress)  # verified once, below, fresh or left by an earlier run
        digest = verify_sha256(archive, archive_sha256)
        log.info("archive %s sha256 %s (%s)", archive, digest,
                 "as expected" if archive_sha256 else "no published checksum: pass --sha256 to enforce one")
        count = extract_archive(archive, root)
        log.info("extracted %d images into %s", count, root / "images")
        archive.unlink()
    resolve_root(root)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.data",
                                     description="Get or inspect the Miniplaces data set.")
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download and unpack the official archive and label files")
    dl.add_argument("--root", default=os.environ.get("MINIPLACES_ROOT", "data/miniplaces"))
    dl.add_argument("--url", default=ARCHIVE_URL, help="image archive (data.tar.gz)")
    dl.add_argument("--labels-url", default=LABELS_URL, help="folder holding categories.txt, train.txt, val.txt")
    dl.add_argument("--sha256", metavar="HEX", help="refuse an image archive whose SHA-256 differs from HEX")
    dl.add_argument("--no-progress", action="store_true")
    info = sub.add_parser("info", help="count the images and labels that are there")
    info.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "download":
            root = download(Path(args.root), args.url, args.labels_url, not args.no_progress, args.sha256)
            print(f"Miniplaces is ready in {root}")
        else:
            root = resolve_root(args.root)
            for split in SPLITS:
                try:
                    items = read_split(root, split)
                except FileNotFoundError:
                    items = []
                present = sum((root / "images" / p).exists() for p, _ in items)
                print(f"{split:5s}: {len(items)} listed, {present} present")
            print(f"classes: {len(read_categories(root))}")
    except (DownloadError, DataNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
