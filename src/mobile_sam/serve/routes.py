"""The REST API and the page as module-level routers.

Routes hold no state: each reaches its app's engine, embedding cache and limits through the
dependencies below (``request.app.state``, filled by :func:`mobile_sam.serve.create_app`), so
several apps in one process never share anything.
"""
from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from PIL import Image

from ..prompts import PromptError, check_generator_options, check_inside_image
from .cache import CachedImage, EmbeddingCache
from .engine import Engine, image_id, mask_boxes, masks_as_rle
from .errors import ApiError, error_responses
from .scheduler import Job, JobCancelled, JobPool, PoolFull
from .schemas import (
    EverythingRequest,
    EverythingResponse,
    Health,
    ImageInfo,
    PredictRequest,
    PredictResponse,
)
from .upload import decode_and_embed, read_upload

__all__ = ["STATIC_DIR", "images", "page", "service"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


# ------------------------------------------------------------------ per-app state


async def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def _cache(request: Request) -> EmbeddingCache:
    return request.app.state.cache


async def _limits(request: Request) -> dict[str, Any]:
    return request.app.state.limits


async def _jobs(request: Request) -> JobPool:
    return request.app.state.jobs


EngineDep = Annotated[Engine, Depends(_engine)]
CacheDep = Annotated[EmbeddingCache, Depends(_cache)]
LimitsDep = Annotated[dict[str, Any], Depends(_limits)]
JobsDep = Annotated[JobPool, Depends(_jobs)]

# How often a waiting "everything" request checks its client and its time limit, and the
# Retry-After given when the job pool is full.
JOB_POLL_S = 0.1
RETRY_AFTER_S = 5


def _entry_or_404(cache: EmbeddingCache, key: str) -> CachedImage:
    entry = cache.get(key)
    if entry is None:
        shown = key if len(key) <= 80 else key[:77] + "..."
        raise ApiError(404, "id", f"id: unknown image {shown!r}; upload it again with "
                                  "POST /v1/images (images are evicted when the cache is full, "
                                  "and each server worker has its own cache)")
    return entry


_UNKNOWN_ID = "Unknown image id"

_UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "An encoded image (PNG, JPEG, WebP, ...)"}},
        }}},
    }
}


def _mask_png_base64(mask: np.ndarray) -> str:
    # Same encoding as io.save_mask_png: 8-bit gray, 255 inside, 0 outside.
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------ /v1/images

images = APIRouter(prefix="/v1/images", tags=["images"])


@images.post("", response_model=ImageInfo,
             summary="Upload an image; its embedding is computed once and cached",
             openapi_extra=_UPLOAD_OPENAPI,
             responses=error_responses(e400="Malformed multipart body",
                                       e413="Too many bytes or pixels",
                                       e415="Not an image, or not multipart/form-data",
                                       e422="No file field, or an empty file"))
async def upload_image(request: Request, engine: EngineDep, cache: CacheDep,
                       limits: LimitsDep) -> ImageInfo:
    data = await read_upload(request, limits["max_upload_bytes"])
    key = image_id(data)
    entry = cache.get(key)
    cached = entry is not None
    if entry is None:
        entry, cached = await run_in_threadpool(decode_and_embed, engine, cache, key, data,
                                                limits["max_pixels"])
    height, width = entry.original_size
    return ImageInfo(id=key, width=width, height=height, cached=cached)


@images.post("/{id}/predict", response_model=PredictResponse,
             summary="Masks for points and/or a box",
             responses=error_responses(e400="Invalid JSON", e404=_UNKNOWN_ID,
                                       e422="A field is invalid (points outside the image, ...)"))
def predict(id: str, body: PredictRequest, engine: EngineDep, cache: CacheDep) -> PredictResponse:
    entry = _entry_or_404(cache, id)
    height, width = entry.original_size
    if body.point_coords is None and body.point_labels is None and body.box is None:
        raise ApiError(422, "point_coords", "point_coords: give points (with point_labels) "
                                            "and/or a box")
    try:  # the rules of mobile_sam.prompts, as on every surface; err.field is the field
        check_inside_image((height, width), body.point_coords, body.box)
        masks, scores = engine.predict(entry, body.point_coords, body.point_labels, body.box,
                                       body.multimask_output)
    except PromptError as err:
        raise ApiError(422, err.field, str(err)) from None
    if body.mask_format == "png":
        encoded: list[Any] = [_mask_png_base64(m) for m in masks]
    else:
        encoded = masks_as_rle(masks)
    return PredictResponse(
        width=width, height=height, mask_format=body.mask_format, masks=encoded,
        scores=[float(s) for s in scores], boxes=mask_boxes(masks),
        areas=[int(m.sum()) for m in masks],
    )


@images.post("/{id}/everything", response_model=EverythingResponse,
             summary="Automatic mask generation (SamAutomaticMaskGenerator options)",
             responses=error_responses(e400="Invalid JSON", e404=_UNKNOWN_ID,
                                       e422="An option is invalid",
                                       e503="Too many everything jobs (see Retry-After), or "
                                            "the server is stopping",
                                       e504="The job ran longer than the server's time limit"))
async def everything(id: str, request: Request, engine: EngineDep, cache: CacheDep,
                     jobs: JobsDep, limits: LimitsDep,
                     body: Annotated[EverythingRequest | None, Body()] = None,
                     ) -> EverythingResponse:
    entry = _entry_or_404(cache, id)
    options = (body or EverythingRequest()).model_dump()
    try:
        check_generator_options(**options)
    except PromptError as err:
        raise ApiError(422, err.field, str(err)) from None
    try:
        job, future = jobs.submit(lambda job: engine.everything(entry, options, job))
    except PoolFull as exc:
        raise ApiError(503, None, f"everything: the server is busy: {exc}; retry later",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    records = await _wait_for_job(request, job, future, limits["everything_timeout"])
    height, width = entry.original_size
    return EverythingResponse(width=width, height=height, masks=records)


async def _wait_for_job(request: Request, job: Job, future: Future[Any],
                        timeout: float) -> Any:
    """The result of a job, awaited without holding a thread. The job is cancelled when the
    client disconnects, when ``timeout`` seconds pass (504), or when this request is
    cancelled (the server stopping); it then stops at its next model call."""
    waiting = asyncio.wrap_future(future)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=JOB_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                job.cancel("the client disconnected")
            elif asyncio.get_running_loop().time() > deadline:
                job.cancel("timeout")
                raise ApiError(504, None, f"everything: the job did not finish within the "
                                          f"server's limit of {timeout:g} s and was stopped; "
                                          "try fewer points_per_side or crop_n_layers")
        return waiting.result()
    except JobCancelled as exc:  # disconnected (nobody reads this) or the server stopping
        raise ApiError(503, None, f"everything: the job was stopped: {exc.reason}") from None
    except PromptError as err:
        raise ApiError(422, err.field, str(err)) from None
    finally:
        job.cancel("the request ended")  # no-op once the job is done


@images.get("/{id}/embedding",
            summary="The image embedding as a .npy file (1, C, h, w float32)",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "NumPy .npy; headers X-Original-Size and "
                                            "X-Input-Size give H,W and the resized h',w'"},
                       **error_responses(e404=_UNKNOWN_ID)})
def embedding(id: str, cache: CacheDep) -> Response:
    entry = _entry_or_404(cache, id)
    buffer = io.BytesIO()
    np.save(buffer, entry.features.detach().float().cpu().numpy(), allow_pickle=False)
    return Response(
        content=buffer.getvalue(), media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{entry.id}.npy"',
            "X-Original-Size": ",".join(map(str, entry.original_size)),
            "X-Input-Size": ",".join(map(str, entry.input_size)),
        },
    )


@images.delete("/{id}", status_code=204, summary="Forget an image and its embedding",
               response_class=Response, responses=error_responses(e404=_UNKNOWN_ID))
def delete_image(id: str, cache: CacheDep) -> Response:
    if not cache.delete(id):
        _entry_or_404(cache, id)
    return Response(status_code=204)


# ------------------------------------------------------------------ service and page

service = APIRouter(tags=["service"])


@service.get("/health", response_model=Health, summary="Liveness and cache use")
def health(engine: EngineDep, cache: CacheDep) -> Health:
    return Health(status="ok", cached_images=len(cache), cache_bytes=cache.total_bytes,
                  model_input_size=int(engine.model.img_size))


page = APIRouter(include_in_schema=False)


@page.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@page.get("/docs")
def docs() -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")
