"""Default limits of the server (no FastAPI import, so `mobile-sam serve --help` works without
the serve extra)."""
from __future__ import annotations

DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20
"""Largest accepted image file (50 MiB)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Largest accepted width * height, read from the image header before decoding (40 MP)."""
DEFAULT_CACHE_ITEMS = 32
"""Embeddings kept in the LRU cache."""
DEFAULT_CACHE_BYTES = 1024 * 2**20
"""Memory for cached embeddings plus their uploaded bytes (1 GiB; vit_t: 4 MiB per embedding)."""
