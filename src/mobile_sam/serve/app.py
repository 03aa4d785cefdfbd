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

Errors are JSON ``{"detail": message, "field": name}`` with a 4xx status.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from . import routes
from .cache import EmbeddingCache
from .engine import Engine
from .errors import EXCEPTION_HANDLERS
from .export import router as export_router
from .limits import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CACHE_ITEMS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
)
from .middleware import JsonBodyLimit, SecurityHeaders

if TYPE_CHECKING:
    from ..modeling import Sam
    from ..onnx.runtime import OnnxPredictor

__all__ = ["create_app"]

# JSON bodies (prompts, options) are small: 256 points take about 10 kB.
MAX_JSON_BYTES = 2**20


def create_app(
    model: Sam | OnnxPredictor,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_items: int = DEFAULT_CACHE_ITEMS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`mobile_sam.modeling.Sam`, loaded once, or an
    :class:`mobile_sam.onnx.OnnxPredictor` on an exported folder: no torch needed).

    max_upload_bytes: largest accepted image file; larger uploads are refused while reading.
    max_pixels: largest accepted W * H, checked from the image header before decoding.
    cache_items, cache_bytes: bounds of the LRU cache of embeddings (plus uploaded bytes).
    backend, precision: where the model runs, as for `SamPredictor`.
    """
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    app = FastAPI(
        title="MobileSAM",
        version=__version__,
        description="Segment anything: upload an image once, then prompt it with points and "
                    "boxes. Coordinates are XY pixels of the uploaded image; boxes are XYXY.",
        docs_url=None,  # FastAPI's Swagger page loads its scripts from a CDN; ours is offline
        redoc_url=None,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.engine = Engine(model, backend, precision)
    app.state.cache = EmbeddingCache(cache_items, cache_bytes)
    app.state.limits = limits
    for router in (routes.images, routes.service, routes.page):
        app.include_router(router)
    app.include_router(export_router)
    app.mount("/static", StaticFiles(directory=routes.STATIC_DIR), name="static")
    # Uploads are bounded by max_upload_bytes while they are read; other bodies by this.
    app.add_middleware(JsonBodyLimit, limit=MAX_JSON_BYTES,
                       exempt=frozenset({("POST", "/v1/images")}))
    app.add_middleware(SecurityHeaders)
    return app
