"""Limits of the server: defaults and valid ranges (no FastAPI import, so `mobile-sam serve
--help` works without the serve extra).

:data:`SERVE_BOUNDS` holds the range of every limit, as :class:`mobile_sam.prompts.Bound`
(the rule the generator options use too); `create_app` and `mobile-sam serve` check their
values with :func:`check_serve_limit`, so both refuse the same values with the same message.
"""
from __future__ import annotations

from typing import Any

from ..prompts import Bound

DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20
"""Largest accepted image file (50 MiB)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Largest accepted width * height, read from the image header before decoding (40 MP)."""
DEFAULT_CACHE_ITEMS = 32
"""Embeddings kept in the LRU cache."""
DEFAULT_CACHE_BYTES = 1024 * 2**20
"""Memory for cached embeddings plus their uploaded bytes (1 GiB; vit_t: 4 MiB per embedding)."""
DEFAULT_EVERYTHING_WORKERS = 1
""""Everything" jobs run at the same time (each yields to interactive calls per batch)."""
DEFAULT_EVERYTHING_QUEUE = 4
""""Everything" jobs that may wait for a worker; more are refused with 503 and Retry-After."""
DEFAULT_EVERYTHING_TIMEOUT = 300.0
"""Seconds an "everything" request may take, waiting included, before it is stopped (504)."""

SERVE_BOUNDS: dict[str, Bound] = {
    # Sizes in bytes. An upload is held in memory whole, with its decoded pixels.
    "max_upload_bytes": Bound(int, 1, 2**31),
    # 1 GP of RGB is 3 GB decoded; far beyond any photo, short of a decompression bomb.
    "max_pixels": Bound(int, 1, 10**9),
    "cache_items": Bound(int, 1, 100_000),
    "cache_bytes": Bound(int, 1, 2**40),
    # uvicorn worker processes: each holds its own model and embedding cache.
    "workers": Bound(int, 1, 64),
    "everything_workers": Bound(int, 1, 16),
    "everything_queue": Bound(int, 0, 1000),
    "everything_timeout": Bound(float, 1, 86_400),
    "port": Bound(int, 0, 65_535),
}
"""The valid range of each server limit (sizes in bytes; the CLI takes MiB)."""


def check_serve_limit(name: str, value: Any) -> Any:
    """``value`` checked against ``SERVE_BOUNDS[name]``: converted to its kind, or a
    :class:`mobile_sam.prompts.PromptError` naming ``name``, the range and the value."""
    return SERVE_BOUNDS[name].check(name, value)
