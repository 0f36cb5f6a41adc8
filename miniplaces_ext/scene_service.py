"""What the web page (app.py) asks of a network, with no web code: one network loaded once,
shared by requests from many threads. The page serves one SceneService per network (ResNet-18
and AlexNet side by side), which share one PhotoStore so that a photo can be asked of either.

The weights are read once; the torch-conv and our-conv networks are two module trees over the
same Parameter objects. Every use of a network holds one lock (a request's forward pass, a
CAM, a neighbour query, each DeepDream step), so concurrent requests never interleave inside
a network; a dream gives the lock back between its steps so that predictions are not held up
behind it. Photos live in memory (the last 64) under an id; nothing is written to disk except
the gallery's feature cache (retrieve.py's, in the cache folder).
"""
from __future__ import annotations

import base64
import collections
import copy
import io
import itertools
import logging
import threading
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from miniplaces_ext import cam, data, dream, indoor_outdoor, models, retrieve
from miniplaces_ext import nn as ext_nn
from miniplaces_ext.inference import optimize_for_inference
from miniplaces_ext.predict import describe

log = logging.getLogger("miniplaces_ext.scene_service")

CONVS = ("custom", "torch")
MAX_PHOTOS = 64
DISPLAY_SIDE = 768  # photos are kept (and shown) at most this large
SAME_IMAGE_DISTANCE = 1e-3  # feature distance below which a gallery image is the photo itself


class ServiceError(ValueError):
    """A request the service cannot serve; str(error) is the message for the user."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def png_data_uri(image: Image.Image) -> str:
    """The image as a data: URI (PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def heat_overlay(photo: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """`heat` (values in [0, 1], over the centre crop the network saw) in the jet colour map,
    blended over the photo at the photo's resolution."""
    up, box = cam.upsample_over_crop(heat, *photo.size)
    colours = Image.fromarray((colormaps["jet"](np.clip(up, 0, 1))[..., :3] * 255).astype(np.uint8))
    left, top = round(box[0]), round(box[1])
    region = photo.crop((left, top, left + colours.width, top + colours.height))
    blended = photo.copy()
    blended.paste(Image.blend(region, colours, alpha), (left, top))
    return blended


@dataclass
class DreamJob:
    """A DeepDream run in the background: state queued | running | done | error."""
    id: str
    state: str = "queued"
    progress: float = 0.0
    result: str | None = None  # PNG data URI when done
    error: str | None = None
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"job": self.id, "state": self.state, "progress": self.progress, "png": self.result,
                "error": self.error, "settings": self.settings}


class PhotoStore:
    """The last MAX_PHOTOS photos, kept in memory under an id, safe across threads."""

    def __init__(self) -> None:
        self._photos: collections.OrderedDict[str, Image.Image] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, photo: Image.Image) -> str:
        """Keeps the photo (at most DISPLAY_SIDE pixels a side) and returns its id."""
        photo = photo.convert("RGB")
        photo.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.BILINEAR)
        photo_id = uuid.uuid4().hex
        with self._lock:
            self._photos[photo_id] = photo
            while len(self._photos) > MAX_PHOTOS:
                self._photos.popitem(last=False)
        return photo_id

    def get(self, photo_id: str) -> Image.Image:
        """The photo with this id; ServiceError (404) when it is unknown or was dropped."""
        with self._lock:
            if photo_id not in self._photos:
                raise ServiceError("unknown or expired photo: upload it again", 404)
            return self._photos[photo_id]


class SceneService:
    """Predictions, CAMs, neighbours and dreams for photos, on one network (see the module doc)."""

    def __init__(self, arch: str = "resnet18", weights: str | None = None, data_root: str | None = None,
                 gallery_limit: int | None = None, cache_dir: str | Path = retrieve.DEFAULT_CACHE_DIR,
                 device: str = "cpu", photos: PhotoStore | None = None):
        self.arch = arch
        self.device = torch.device(device)
        self.weights = models.find_weights(arch, weights)
        base = models.load_checkpoint(arch, self.weights).to(self.device, memory_format=torch.channels_last).eval()
        self.classes = base.class_names
        if self.classes is None:
            raise ServiceError(f"{self.weights} has no class names and is not a 100-class Miniplaces model")
        shared = {id(t): t for t in itertools.chain(base.parameters(), base.buffers())}
        self.nets = {"torch": base, "custom": ext_nn.swap_convs(copy.deepcopy(base, memo=shared))}
        # Predictions on our convs run optimize_for_inference's fused network (BatchNorm folded, ReLU and
        # residual adds in the kernels' epilogue); CAMs, dreams and neighbours the swapped one.
        self.predictors = {"torch": base, "custom": optimize_for_inference(self.nets["custom"])}
        self.environments = indoor_outdoor.environment_labels(self.classes)
        self.lock = threading.Lock()
        self.photos = photos if photos is not None else PhotoStore()
        self._jobs: dict[str, DreamJob] = {}
        self._stopping = threading.Event()
        self.gallery_state = {"status": "unavailable", "message": "", "done": 0, "total": 0}
        self._gallery: dict | None = None
        self._dataset: data.MiniplacesDataset | None = None
        try:
            self._dataset = data.MiniplacesDataset(data_root, "val", limit=gallery_limit)
        except (data.DataNotFoundError, FileNotFoundError, OSError) as exc:
            self.gallery_state["message"] = f"Neighbours need the Miniplaces val images: {exc}"
        self._cache_dir = Path(cache_dir)

    # --- photos ---------------------------------------------------------------------------
    def add_photo(self, photo: Image.Image) -> str:
        """Keeps the photo in the (shared) store and returns its id."""
        return self.photos.add(photo)

    def photo(self, photo_id: str) -> Image.Image:
        """A stored photo (see PhotoStore.get)."""
        return self.photos.get(photo_id)

    def _net(self, conv: str) -> torch.nn.Module:
        if conv not in CONVS:
            raise ServiceError(f"conv must be one of {', '.join(CONVS)}, got {conv!r}")
        return self.nets[conv]

    def _batch(self, photo: Image.Image) -> torch.Tensor:
        return data.preprocess(photo)[None].to(self.device, memory_format=torch.channels_last)

    def class_id(self, name: str) -> int:
        if name not in self.classes:
            raise ServiceError(f"unknown class {name!r}")
        return self.classes.index(name)

    # --- predictions ----------------------------------------------------------------------
    def classify(self, photo_id: str, conv: str = "custom", topk: int = 5) -> dict:
        """Top-k with indoor/outdoor from `conv`'s network, and how the other conv kind agrees."""
        x = self._batch(self.photo(photo_id))
        other = "torch" if conv == "custom" else "custom"
        self._net(conv)
        probs, seconds = {}, {}
        with self.lock, torch.inference_mode():
            for c in (conv, other):
                start = time.perf_counter()
                probs[c] = self.predictors[c](x).float().softmax(1)
                seconds[c] = time.perf_counter() - start
        result = describe(probs[conv], self.classes, topk, self.environments)[0]
        result["other"] = describe(probs[other], self.classes, topk, self.environments)[0]["top"]
        result["agreement"] = {
            "other_conv": other,
            "same_top1": result["top"][0]["class"] == result["other"][0]["class"],
            "same_topk": [t["class"] for t in result["top"]] == [t["class"] for t in result["other"]],
            "max_abs_probability_difference": float((probs[conv] - probs[other]).abs().max()),
        }
        result.update(photo_id=photo_id, conv=conv, milliseconds={c: round(t * 1000, 1) for c, t in seconds.items()})
        return result

    def activation_map(self, photo_id: str, class_name: str, conv: str = "custom") -> dict:
        """CAM (ResNet-18) or Grad-CAM (AlexNet) of `class_name`, as an overlay PNG data URI."""
        photo = self.photo(photo_id)
        cid = self.class_id(class_name)
        method = "cam" if self.arch == "resnet18" else "gradcam"
        with self.lock:
            maps, probs = cam.activation_maps(self._net(conv), self.arch, self._batch(photo),
                                              torch.tensor([[cid]], device=self.device), method)
        return {"class": class_name, "probability": float(probs[0, cid]), "method": method,
                "png": png_data_uri(heat_overlay(photo, maps[0, 0].cpu().numpy()))}

    # --- neighbours -----------------------------------------------------------------------
    def build_gallery(self, progress: bool = False) -> None:
        """Loads (or extracts and caches) the val gallery's features; meant for a background thread."""
        if self._dataset is None:
            return
        self.gallery_state.update(status="indexing", total=len(self._dataset),
                                  message=f"indexing {len(self._dataset)} val images")
        net = self.nets["custom"]

        def features(x: torch.Tensor) -> torch.Tensor:  # one batch at a time under the lock
            with self.lock:
                out = net.get_features(x)
            self.gallery_state["done"] += len(x)
            return out

        try:
            gallery, _ = retrieve.load_or_build_gallery(types.SimpleNamespace(get_features=features), self.arch,
                                                        self.weights, self._dataset, retrieve.conv_kind(True),
                                                        self._cache_dir,
                                                        self.device, workers=0, progress=progress)
            self._gallery = gallery
            self.gallery_state.update(status="ready", done=len(gallery["paths"]),
                                      message=f"{len(gallery['paths'])} val images")
        except Exception as exc:  # reported on the page, never a crash of the server
            log.exception("building the gallery failed")
            self.gallery_state.update(status="error", message=f"building the neighbour index failed: {exc}")

    def neighbours(self, photo_id: str, conv: str = "custom", k: int = 5) -> dict:
        """The k nearest val images (features of `conv`'s network) or why there are none yet; the
        photo itself (a val image picked at random) is left out."""
        state = dict(self.gallery_state)
        if self._gallery is None:
            return {**state, "neighbours": []}
        x = self._batch(self.photo(photo_id))
        with self.lock, torch.inference_mode():
            query = self._net(conv).get_features(x).float().cpu()[0]
        dist, idx = retrieve.nearest(query, self._gallery["features"], k + 1)
        found = [{"index": i, "file": self._gallery["paths"][i], "distance": d,
                  "class": self.classes[self._gallery["labels"][i]] if self._gallery["labels"][i] >= 0 else "?"}
                 for d, i in zip(dist.tolist(), idx.tolist()) if d > SAME_IMAGE_DISTANCE]
        return {**state, "neighbours": found[:k]}

    def gallery_image(self, index: int) -> Path:
        """The file of gallery entry `index` (by index only: no path from the client is ever opened)."""
        if self._gallery is None or not 0 <= index < len(self._gallery["paths"]):
            raise ServiceError("no such gallery image", 404)
        return self._dataset.root / "images" / self._gallery["paths"][index]

    def random_val_image(self, rng: np.random.Generator) -> tuple[Path, str]:
        """A random val image's file and true class."""
        if self._dataset is None:
            raise ServiceError(self.gallery_state["message"] or "no val images", 404)
        i = int(rng.integers(len(self._dataset)))
        file, label = self._dataset.items[i]
        return self._dataset.root / "images" / file, self.classes[label]

    # --- DeepDream ------------------------------------------------------------------------
    def start_dream(self, photo_id: str, layer: str, octaves: int, steps: int, conv: str = "custom") -> DreamJob:
        """Queues a dream of the photo (run by run_dream in a worker thread)."""
        self.photo(photo_id)
        self._net(conv)
        if layer not in models.LAYERS[self.arch]:
            raise ServiceError(f"layer must be one of {', '.join(models.LAYERS[self.arch])}")
        if not (1 <= octaves <= 5 and 1 <= steps <= 40):
            raise ServiceError("octaves must be 1..5 and steps 1..40")
        job = DreamJob(uuid.uuid4().hex, settings={"photo_id": photo_id, "layer": layer, "octaves": octaves,
                                                    "steps": steps, "conv": conv})
        self._jobs[job.id] = job
        return job

    def has_job(self, job_id: str) -> bool:
        """Whether this service queued the dream `job_id`."""
        return job_id in self._jobs

    def job(self, job_id: str) -> DreamJob:
        if job_id not in self._jobs:
            raise ServiceError("unknown dream", 404)
        return self._jobs[job_id]

    def run_dream(self, job: DreamJob, size: int = 256) -> None:
        """Runs a queued dream, holding the network's lock one gradient step at a time."""
        s = job.settings
        job.state = "running"

        def on_step(done: int, total: int) -> None:
            job.progress = done / total
            self.lock.release()
            time.sleep(0.001)  # let a waiting request take the network between two steps
            self.lock.acquire()
            if self._stopping.is_set():
                raise ServiceError("the server is stopping")

        try:
            image = data.preprocess(self.photo(s["photo_id"]), size)[None].to(self.device)
            with self.lock:
                out = dream.dream(self.nets[s["conv"]], self.arch, image, s["layer"], octaves=s["octaves"],
                                  steps=s["steps"], progress=False, generator=torch.Generator().manual_seed(0),
                                  on_step=on_step)
            job.result = png_data_uri(dream.to_image(out))
            job.state = "done"
        except Exception as exc:  # shown on the page
            log.warning("dream %s failed: %s", job.id, exc)
            job.error = str(exc)
            job.state = "error"

    def stop(self) -> None:
        """Makes running dreams stop at their next step."""
        self._stopping.set()
