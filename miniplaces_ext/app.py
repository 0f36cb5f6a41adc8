"""A local web page for the scene classifier, on our kernels: drop a photo (or take a random val
image) and see the top-5 scenes with indoor/outdoor, the class activation map of any of them,
the 5 nearest val images and a DeepDream of the photo; switch between the networks (ResNet-18
and AlexNet, whichever weights are found) and between our convolutions and torch's and see that
they agree.

    pip install -e .[app]
    python -m miniplaces_ext.app                    # then open http://127.0.0.1:8000
    python -m miniplaces_ext.app --arch alexnet --port 8080 --gallery-limit 2000

Needs only the weights; the neighbours and the random image need the Miniplaces val images
(--data-root or $MINIPLACES_ROOT), and the page says so when they are missing. The first
start extracts the val gallery's features in the background (minutes on a CPU; the page
shows the progress) and caches them in --cache-dir for the next starts. Listens on
127.0.0.1 only unless --host says otherwise. Ctrl-C stops it.
"""
from __future__ import annotations

import argparse
import io
import logging
import queue
import socket
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from miniplaces_ext import cli, models, retrieve, uploads
from miniplaces_ext.scene_service import CONVS, PhotoStore, SceneService, ServiceError

log = logging.getLogger("miniplaces_ext.app")
STATIC = Path(__file__).with_name("static")

try:
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel

    class DreamRequest(BaseModel):
        """POST /api/dream's body."""
        photo_id: str
        layer: str
        octaves: int = 3
        steps: int = 10
        conv: str = "custom"
        arch: str | None = None
except ImportError:  # the [app] extra is not installed
    FastAPI = None


def create_app(services: SceneService | dict[str, SceneService], max_upload_bytes: int = uploads.MAX_BYTES,
               seed: int = 0) -> "FastAPI":
    """The FastAPI application over one service or several (one per network, keyed by arch, the
    first the default; they should share a PhotoStore): the page (static/) and its JSON API
    (/api/..., each call taking ?arch=). Errors are JSON {"error": one line} with a 4xx status;
    never a stack trace."""
    services = {services.arch: services} if isinstance(services, SceneService) else dict(services)
    default = next(iter(services.values()))
    dreams: queue.Queue = queue.Queue()
    rng = np.random.default_rng(seed)

    def pick(arch: str | None) -> SceneService:
        if arch is None:
            return default
        if arch not in services:
            raise ServiceError(f"arch must be one of {', '.join(services)}, got {arch!r}")
        return services[arch]

    def dream_worker() -> None:  # one dream at a time
        while True:
            item = dreams.get()
            if item is None:
                return
            service, job = item
            service.run_dream(job)

    def build_galleries() -> None:  # one network at a time: they share the CPU
        for service in services.values():
            service.build_gallery()

    @asynccontextmanager
    async def lifespan(_app):
        worker = threading.Thread(target=dream_worker, name="dreams", daemon=True)
        worker.start()
        threading.Thread(target=build_galleries, name="gallery", daemon=True).start()
        yield
        for service in services.values():
            service.stop()
        dreams.put(None)

    app = FastAPI(title="miniplaces_ext scenes", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ServiceError)
    @app.exception_handler(uploads.UploadError)
    async def refused(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 400))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"bad request: {where} {first.get('msg', '')}".strip()}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    @app.middleware("http")
    async def cap_uploads(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > max_upload_bytes + 2**16:
            return JSONResponse({"error": f"the upload is {int(length) / 2**20:.3g} MB; the limit is "
                                          f"{max_upload_bytes / 2**20:.3g} MB"}, status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    def network(service: SceneService) -> dict:
        return {"arch": service.arch, "weights": service.weights.name, "classes": service.classes,
                "dream_layers": list(models.LAYERS[service.arch]),
                "default_dream_layer": models.DEFAULT_LAYER[service.arch], "gallery": dict(service.gallery_state)}

    @app.get("/api/info")
    def info() -> dict:
        return {**network(default), "networks": {a: network(s) for a, s in services.items()}, "convs": list(CONVS),
                "max_upload_mb": max_upload_bytes / 2**20, "device": str(default.device)}

    @app.post("/api/photo")
    def upload(file: UploadFile = File(...), conv: str = "custom", arch: str | None = None) -> dict:
        service = pick(arch)
        payload = file.file.read(max_upload_bytes + 1)
        photo = uploads.decode_photo(payload, max_bytes=max_upload_bytes)
        photo_id = service.add_photo(photo)
        return {**service.classify(photo_id, conv), "name": file.filename, "size": list(photo.size)}

    @app.post("/api/photo/random")
    def random_photo(conv: str = "custom", arch: str | None = None) -> dict:
        service = pick(arch)
        path, true_class = service.random_val_image(rng)
        photo = uploads.decode_photo(path.read_bytes(), max_bytes=max_upload_bytes)
        photo_id = service.add_photo(photo)
        return {**service.classify(photo_id, conv), "name": path.name, "true_class": true_class,
                "size": list(photo.size)}

    @app.get("/api/photo/{photo_id}")
    def photo_file(photo_id: str) -> Response:
        buffer = io.BytesIO()
        default.photo(photo_id).save(buffer, "JPEG", quality=90)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    @app.get("/api/classify/{photo_id}")
    def classify(photo_id: str, conv: str = "custom", arch: str | None = None) -> dict:
        return pick(arch).classify(photo_id, conv)

    @app.get("/api/cam/{photo_id}")
    def activation_map(photo_id: str, class_name: str, conv: str = "custom", arch: str | None = None) -> dict:
        return pick(arch).activation_map(photo_id, class_name, conv)

    @app.get("/api/neighbours/{photo_id}")
    def neighbours(photo_id: str, conv: str = "custom", arch: str | None = None) -> dict:
        service = pick(arch)
        found = service.neighbours(photo_id, conv)
        for n in found["neighbours"]:
            n["url"] = f"/api/gallery/{n['index']}?arch={service.arch}"
        return found

    @app.get("/api/gallery/{index}")
    def gallery_image(index: int, arch: str | None = None) -> FileResponse:
        return FileResponse(pick(arch).gallery_image(index), media_type="image/jpeg")

    @app.post("/api/dream")
    def start_dream(request: DreamRequest) -> dict:
        service = pick(request.arch)
        job = service.start_dream(request.photo_id, request.layer, request.octaves, request.steps, request.conv)
        dreams.put((service, job))
        return job.as_dict()

    @app.get("/api/dream/{job_id}")
    def dream_status(job_id: str) -> dict:
        for service in services.values():
            if service.has_job(job_id):
                return service.job(job_id).as_dict()
        return default.job(job_id).as_dict()  # raises: unknown dream

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniplaces_ext.app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="all", choices=(*models.ARCHS, "all"),
                        help="network, or all whose weights are found, switchable on the page (default: all)")
    parser.add_argument("--weights", help="checkpoint file (default: $MINIPLACES_WEIGHTS/<arch>.pt, else models/)")
    parser.add_argument("--data-root", help="Miniplaces folder for neighbours and random images "
                                            "(default: $MINIPLACES_ROOT or data/miniplaces)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--gallery-limit", type=cli.positive_int, help="index only the first N val images")
    parser.add_argument("--cache-dir", default=retrieve.DEFAULT_CACHE_DIR,
                        help="where the gallery's features are cached (default: $MINIPLACES_CACHE or .cache/miniplaces_ext)")
    parser.add_argument("--max-upload-mb", type=float, default=uploads.MAX_BYTES / 2**20,
                        help="largest photo accepted (default: 20)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if FastAPI is None:
        parser.exit(2, "error: the web app needs its extra: pip install -e '.[app]' (fastapi, uvicorn, python-multipart)\n")
    import uvicorn

    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            parser.exit(2, f"error: cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port\n")
    args.use_custom_conv = False
    device = cli.setup(args)
    if args.arch == "all" and args.weights:
        parser.error("--weights names one network's checkpoint: give --arch too")
    photos, services, missing = PhotoStore(), {}, []
    for arch in models.ARCHS if args.arch == "all" else (args.arch,):
        try:
            services[arch] = SceneService(arch, args.weights, args.data_root, args.gallery_limit, args.cache_dir,
                                          str(device), photos)
        except (FileNotFoundError, models.CheckpointError, ServiceError) as exc:
            missing.append(f"{arch}: {exc}")
    if not services or (args.arch != "all" and missing):
        parser.exit(2, "error: " + "; ".join(missing) + "\n")
    for why in missing:
        log.warning("not serving %s", why)
    app = create_app(services, int(args.max_upload_mb * 2**20))
    print(f"miniplaces_ext: {', '.join(services)} on {device}; open http://{args.host}:{args.port} (Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.verbose else "warning")
    print("miniplaces_ext: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
