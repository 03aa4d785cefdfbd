"""The web app: a REST API under ``/v1`` and an offline page at ``/``.

Built by :func:`create_app`; all state (model, lock, embedding cache, limits) belongs to the app
instance, none to this module. Endpoints:

    POST   /v1/images                  multipart upload (field "file") -> {id, width, height}
    POST   /v1/images/{id}/predict     points / labels / box -> masks (PNG or COCO RLE)
    POST   /v1/images/{id}/everything  automatic mask generation -> COCO RLE records
    GET    /v1/images/{id}/embedding   the embedding as .npy (1, C, h, w float32)
    DELETE /v1/images/{id}
    GET    /health
    GET    /docs, /openapi.json        API reference (rendered offline)

Errors are JSON ``{"detail": message, "field": name}`` with a 4xx status.
"""
from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..io import ImageLoadError, ImageTooLargeError, load_image
from ..modeling import Sam
from .cache import CachedImage, EmbeddingCache
from .engine import Engine, image_id, mask_boxes, masks_as_rle
from .limits import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CACHE_ITEMS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
)
from .schemas import (
    EverythingRequest,
    EverythingResponse,
    Health,
    ImageInfo,
    PredictRequest,
    PredictResponse,
)

__all__ = ["ApiError", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# JSON bodies (prompts, options) are small: 256 points take about 10 kB.
MAX_JSON_BYTES = 2**20
# Room for the multipart boundaries and part headers around the file's bytes.
_MULTIPART_OVERHEAD = 64 * 2**10

_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

_ERROR_SCHEMA = {"application/json": {"schema": {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "What was wrong, naming the field"},
                   "field": {"type": ["string", "null"], "description": "The offending field"}}}}}


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, e.g. _errors(e404="Unknown image id")."""
    return {int(code[1:]): {"description": text, "content": _ERROR_SCHEMA}
            for code, text in codes.items()}


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


class ApiError(HTTPException):
    """An error the client caused: becomes ``{"detail": message, "field": field}``.

    An HTTPException, so that raised while FastAPI reads a body it is not turned into a 400.
    """

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.field = field
        self.message = message


class _UploadTooLarge(Exception):
    pass


class _SecurityHeaders:
    """ASGI middleware: ``nosniff`` on every response; on HTML pages a Content-Security-Policy
    allowing nothing but this server (no CDN, no inline script)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", _CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _JsonBodyLimit:
    """ASGI middleware: request bodies other than image uploads (JSON prompts and options) may
    not exceed ``limit`` bytes; counted as they arrive, so a huge body is never held."""

    def __init__(self, app: ASGIApp, limit: int, exempt: frozenset[tuple[str, str]]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        total = 0

        async def bounded_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.limit:
                    raise ApiError(413, "body", f"body: larger than the limit of {self.limit} "
                                                "bytes for a JSON request")
            return message

        await self.app(scope, bounded_receive, send)


def _error_response(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"detail": message, "field": field}, status_code=status)


def _mask_png_base64(mask: np.ndarray) -> str:
    # Same encoding as io.save_mask_png: 8-bit gray, 255 inside, 0 outside.
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_inside(name: str, points: list[tuple[float, float]], width: int, height: int) -> None:
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise ApiError(422, name, f"{name}[{i}] = [{x:g}, {y:g}] is outside the image "
                                      f"(x in 0..{width}, y in 0..{height})")


def _value_error_field(message: str, fields: tuple[str, ...]) -> str | None:
    return next((f for f in fields if message.startswith(f)), None)


def create_app(
    model: Sam,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_items: int = DEFAULT_CACHE_ITEMS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`mobile_sam.modeling.Sam`, loaded once).

    max_upload_bytes: largest accepted image file; larger uploads are refused while reading.
    max_pixels: largest accepted W * H, checked from the image header before decoding.
    cache_items, cache_bytes: bounds of the LRU cache of embeddings (plus uploaded bytes).
    backend, precision: where the model runs, as for `SamPredictor`.
    """
    for name, value in [("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    engine = Engine(model, backend, precision)
    cache = EmbeddingCache(cache_items, cache_bytes)

    app = FastAPI(
        title="MobileSAM",
        version=__version__,
        description="Segment anything: upload an image once, then prompt it with points and "
                    "boxes. Coordinates are XY pixels of the uploaded image; boxes are XYXY.",
        docs_url=None,  # FastAPI's Swagger page loads its scripts from a CDN; ours is offline
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.cache = cache
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.field, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "")
            return _error_response(400, "body", f"body: invalid JSON: {reason}".rstrip(": "))
        field = loc[0] if loc else "body"
        where = ".".join(loc) if loc else "body"
        message = f"{where}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _error_response(422, field, message)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception: it may hold server paths.
        return _error_response(500, None, "internal server error")

    def entry_or_404(key: str) -> CachedImage:
        entry = cache.get(key)
        if entry is None:
            shown = key if len(key) <= 80 else key[:77] + "..."
            raise ApiError(404, "id", f"id: unknown image {shown!r}; upload it with "
                                      "POST /v1/images (images are evicted when the cache is full)")
        return entry

    # ------------------------------------------------------------------ upload
    async def read_upload(request: Request) -> bytes:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(415, "file", "file: upload the image as multipart/form-data with a "
                                        f"field named 'file' (got content type {content_type!r})")
        limit = max_upload_bytes + _MULTIPART_OVERHEAD
        too_large = f"file: the upload is larger than the limit of {max_upload_bytes} bytes"
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(413, "file", too_large)

        async def bounded() -> AsyncIterator[bytes]:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise _UploadTooLarge
                yield chunk

        parser = MultiPartParser(request.headers, bounded(), max_files=1, max_fields=8)
        try:
            form = await parser.parse()
        except _UploadTooLarge:
            raise ApiError(413, "file", too_large) from None
        except MultiPartException as exc:
            message = f"file: malformed multipart upload: {exc.message}"
            raise ApiError(400, "file", message) from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "file", "file: missing; send the image in a multipart "
                                            "field named 'file'")
            if upload.size is not None and upload.size > max_upload_bytes:
                raise ApiError(413, "file", too_large)
            data = await upload.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise ApiError(413, "file", too_large)
            return data
        finally:
            await form.close()

    def decode_and_embed(key: str, data: bytes) -> tuple[CachedImage, bool]:
        if not data:
            raise ApiError(422, "file", "file: the upload is empty")
        try:
            image = load_image(data, max_pixels=max_pixels)
        except ImageTooLargeError:
            raise ApiError(413, "file", f"file: the image has more pixels than this server "
                                        f"accepts (max_pixels = {max_pixels})") from None
        except ImageLoadError as exc:
            message = f"file: not an image this server can read ({exc})"
            raise ApiError(415, "file", message) from None
        with engine.lock:  # a concurrent upload of the same bytes may have finished meanwhile
            entry = cache.get(key)
            if entry is not None:
                return entry, True
            entry = engine.embed(key, data, image)
            try:
                cache.put(entry)
            except ValueError as exc:
                raise ApiError(413, "file", f"file: {exc}") from None
        return entry, False

    @app.post("/v1/images", response_model=ImageInfo, tags=["images"],
              summary="Upload an image; its embedding is computed once and cached",
              openapi_extra=_UPLOAD_OPENAPI,
              responses=_errors(e400="Malformed multipart body", e413="Too many bytes or pixels",
                                e415="Not an image, or not multipart/form-data",
                                e422="No file field, or an empty file"))
    async def upload_image(request: Request) -> ImageInfo:
        data = await read_upload(request)
        key = image_id(data)
        entry = cache.get(key)
        cached = entry is not None
        if entry is None:
            entry, cached = await run_in_threadpool(decode_and_embed, key, data)
        height, width = entry.original_size
        return ImageInfo(id=key, width=width, height=height, cached=cached)

    # ------------------------------------------------------------------ prompts
    @app.post("/v1/images/{id}/predict", response_model=PredictResponse, tags=["images"],
              summary="Masks for points and/or a box",
              responses=_errors(e400="Invalid JSON", e404=_UNKNOWN_ID,
                                e422="A field is invalid (points outside the image, ...)"))
    def predict(id: str, body: PredictRequest) -> PredictResponse:
        entry = entry_or_404(id)
        height, width = entry.original_size
        if body.point_coords is None and body.point_labels is None and body.box is None:
            raise ApiError(422, "point_coords", "point_coords: give points (with point_labels) "
                                                "and/or a box")
        if body.point_coords is not None:
            _check_inside("point_coords", body.point_coords, width, height)
        if body.box is not None:
            _check_inside("box", [body.box[:2], body.box[2:]], width, height)
        try:
            masks, scores = engine.predict(entry, body.point_coords, body.point_labels, body.box,
                                           body.multimask_output)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            field = _value_error_field(message, ("point_coords", "point_labels", "box"))
            raise ApiError(422, field, message) from None
        if body.mask_format == "png":
            encoded: list[Any] = [_mask_png_base64(m) for m in masks]
        else:
            encoded = masks_as_rle(masks)
        return PredictResponse(
            width=width, height=height, mask_format=body.mask_format, masks=encoded,
            scores=[float(s) for s in scores], boxes=mask_boxes(masks),
            areas=[int(m.sum()) for m in masks],
        )

    @app.post("/v1/images/{id}/everything", response_model=EverythingResponse, tags=["images"],
              summary="Automatic mask generation (SamAutomaticMaskGenerator options)",
              responses=_errors(e400="Invalid JSON", e404=_UNKNOWN_ID,
                                e422="An option is invalid"))
    def everything(id: str,
                   body: Annotated[EverythingRequest | None, Body()] = None) -> EverythingResponse:
        entry = entry_or_404(id)
        options = (body or EverythingRequest()).model_dump()
        try:
            records = engine.everything(entry, options)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            raise ApiError(422, _value_error_field(message, tuple(options)), message) from None
        height, width = entry.original_size
        return EverythingResponse(width=width, height=height, masks=records)

    @app.get("/v1/images/{id}/embedding", tags=["images"],
             summary="The image embedding as a .npy file (1, C, h, w float32)",
             response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "NumPy .npy; headers X-Original-Size and "
                                             "X-Input-Size give H,W and the resized h',w'"},
                        **_errors(e404=_UNKNOWN_ID)})
    def embedding(id: str) -> Response:
        entry = entry_or_404(id)
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

    @app.delete("/v1/images/{id}", status_code=204, tags=["images"],
                summary="Forget an image and its embedding", response_class=Response,
                responses=_errors(e404=_UNKNOWN_ID))
    def delete_image(id: str) -> Response:
        if not cache.delete(id):
            entry_or_404(id)
        return Response(status_code=204)

    @app.get("/health", response_model=Health, tags=["service"], summary="Liveness and cache use")
    def health() -> Health:
        return Health(status="ok", cached_images=len(cache), cache_bytes=cache.total_bytes,
                      model_input_size=int(engine.model.img_size))

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_JsonBodyLimit, limit=MAX_JSON_BYTES,
                       exempt=frozenset({("POST", "/v1/images")}))
    app.add_middleware(_SecurityHeaders)
    return app
