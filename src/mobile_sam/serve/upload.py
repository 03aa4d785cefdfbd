"""Image uploads: read a multipart body within a byte limit, decode it within a pixel limit,
embed it once and cache the embedding."""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..io import ImageLoadError, ImageTooLargeError, load_image
from ..prompts import PromptError
from .cache import CachedImage, EmbeddingCache
from .engine import Engine
from .errors import ApiError

__all__ = ["decode_and_embed", "read_upload"]

# Room for the multipart boundaries and part headers around the file's bytes.
_MULTIPART_OVERHEAD = 64 * 2**10


class _UploadTooLarge(Exception):
    pass


async def read_upload(request: Request, max_upload_bytes: int) -> bytes:
    """The bytes of the multipart field ``file``; refused (413) as soon as the body passes
    ``max_upload_bytes`` plus the multipart overhead, without reading the rest."""
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
        raise ApiError(400, "file", f"file: malformed multipart upload: {exc.message}") from None
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


def decode_and_embed(engine: Engine, cache: EmbeddingCache, key: str, data: bytes,
                     max_pixels: int) -> tuple[CachedImage, bool]:
    """The cache entry for uploaded bytes whose id is ``key``, and whether it was cached
    already (a concurrent upload of the same bytes may have finished meanwhile). Blocking: run
    it in a worker thread."""
    if not data:
        raise ApiError(422, "file", "file: the upload is empty")
    try:
        image = load_image(data, max_pixels=max_pixels)
    except ImageTooLargeError:
        raise ApiError(413, "file", f"file: the image has more pixels than this server "
                                    f"accepts (max_pixels = {max_pixels})") from None
    except ImageLoadError as exc:
        raise ApiError(415, "file", f"file: not an image this server can read ({exc})") from None
    with engine.lock:
        entry = cache.get(key)
        if entry is not None:
            return entry, True
        try:
            entry = engine.embed(key, data, image)
        except PromptError as err:  # e.g. too thin for the model
            raise ApiError(422, "file", f"file: {err}") from None
        try:
            cache.put(entry)
        except ValueError as exc:
            raise ApiError(413, "file", f"file: {exc}") from None
    return entry, False
