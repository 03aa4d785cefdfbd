"""The web app: a REST API under ``/v1`` and an offline page at ``/``.

Built by :func:`create_app`; all state (model, lock, embedding cache, limits) belongs to the app
instance, none to a module: the routes (:mod:`.routes`) reach it through ``app.state``.
Endpoints:

    POST   /v1/images                  multipart upload (field "file") -> {id, width, height}
    POST   /v1/images/{id}/predict     points / labels / box -> masks (PNG or COCO RLE)
    POST   /v1/images/{id}/everything  automatic mask generation -> COCO RLE records
    GET    /v1/images/{id}/embedding   the embedding as .npy (1, C, h, w float32)
    DELETE /v1/images/{id}
    POST   /v1/export/{format}         labelled RLE masks -> COCO JSON, YOLO zip or LabelMe
    GET    /health
    GET    /docs, /openapi.json        API reference (rendered offline)

Errors are JSON ``{"detail": message, "field": name}`` with a 4xx status (503 when the
"everything" pool is full or the server is stopping, 504 when a job runs out of time).

Scheduling (:mod:`.scheduler`): predicts and uploads take the model before "everything" jobs,
which run in a bounded pool and stop when their client disconnects, their time limit passes or
the process gets SIGTERM/SIGINT.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..modeling import Sam
from . import routes
from .cache import EmbeddingCache
from .engine import Engine
from .errors import EXCEPTION_HANDLERS
from .export import router as export_router
from .limits import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CACHE_ITEMS,
    DEFAULT_EVERYTHING_QUEUE,
    DEFAULT_EVERYTHING_TIMEOUT,
    DEFAULT_EVERYTHING_WORKERS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    check_serve_limit,
)
from .middleware import BearerToken, JsonBodyLimit, SecurityHeaders
from .scheduler import JobPool

__all__ = ["create_app"]

# JSON bodies (prompts, options) are small: 256 points take about 10 kB.
MAX_JSON_BYTES = 2**20


def create_app(
    model: Sam,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_items: int = DEFAULT_CACHE_ITEMS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    everything_workers: int = DEFAULT_EVERYTHING_WORKERS,
    everything_queue: int = DEFAULT_EVERYTHING_QUEUE,
    everything_timeout: float = DEFAULT_EVERYTHING_TIMEOUT,
    cors_origins: Sequence[str] = (),
    token: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`mobile_sam.modeling.Sam`, loaded once).

    max_upload_bytes: largest accepted image file; larger uploads are refused while reading.
    max_pixels: largest accepted W * H, checked from the image header before decoding.
    cache_items, cache_bytes: bounds of the LRU cache of embeddings (plus uploaded bytes).
    everything_workers, everything_queue: "everything" jobs run at once, and waiting (more
    are refused with 503); everything_timeout: seconds one may take, waiting included (504).
    cors_origins: origins allowed to call the API from a browser ("*" for any); none by default.
    token: if given, requests under /v1 need ``Authorization: Bearer <token>`` (else 401).
    backend, precision: where the model runs, as for `SamPredictor`.
    The valid range of every limit is `mobile_sam.serve.limits.SERVE_BOUNDS`.
    """
    limits: dict[str, Any] = {
        name: check_serve_limit(name, value) for name, value in [
            ("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels),
            ("cache_items", cache_items), ("cache_bytes", cache_bytes),
            ("everything_workers", everything_workers), ("everything_queue", everything_queue),
            ("everything_timeout", everything_timeout)]
    }
    if token is not None and (not token or token != token.strip() or not token.isprintable()):
        raise ValueError("token must be a non-empty printable string without surrounding "
                         "spaces")
    origins = [cors_origins] if isinstance(cors_origins, str) else list(cors_origins)
    engine = Engine(model, backend, precision)
    jobs = JobPool(limits["everything_workers"], limits["everything_queue"])
    app = FastAPI(
        title="MobileSAM",
        version=__version__,
        description="Segment anything: upload an image once, then prompt it with points and "
                    "boxes. Coordinates are XY pixels of the uploaded image; boxes are XYXY.",
        docs_url=None,  # FastAPI's Swagger page loads its scripts from a CDN; ours is offline
        redoc_url=None,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=_stop_jobs_on_signals(jobs),
    )
    app.state.engine = engine
    app.state.cache = EmbeddingCache(limits["cache_items"], limits["cache_bytes"])
    app.state.limits = limits
    app.state.jobs = jobs
    for router in (routes.images, routes.service, routes.page):
        app.include_router(router)
    app.include_router(export_router)
    app.mount("/static", StaticFiles(directory=routes.STATIC_DIR), name="static")
    # Uploads are bounded by max_upload_bytes while they are read; other bodies by this.
    app.add_middleware(JsonBodyLimit, limit=MAX_JSON_BYTES,
                       exempt=frozenset({("POST", "/v1/images")}))
    if token is not None:
        app.add_middleware(BearerToken, token=token)
    app.add_middleware(SecurityHeaders)
    if origins:  # outermost: preflights are answered, and errors (401) carry CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-Original-Size", "X-Input-Size", "Retry-After"],
                           max_age=600)
    return app


def _stop_jobs_on_signals(jobs: JobPool) -> Callable[[FastAPI], Any]:
    """A lifespan that, while the app runs in a process's main thread (uvicorn, one worker
    or several), makes SIGTERM and SIGINT cancel the running "everything" jobs before the
    server's own handler starts its graceful shutdown, so the server exits within a model
    call; the jobs' threads are released at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chained: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)

                def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                    jobs.cancel_all("the server is stopping")
                    if callable(previous):
                        previous(signum, frame)
                    else:  # SIG_DFL or SIG_IGN: let it act as it would have
                        signal.signal(signum, previous)
                        signal.raise_signal(signum)

                chained[sig] = previous
                signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, previous in chained.items():
                signal.signal(sig, previous)
            jobs.close()

    return lifespan
