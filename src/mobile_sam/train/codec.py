"""How teacher embeddings are stored in a cache shard (`distill cache --cache-codec`).

- `fp16` (default): float16 (n, C, h, w), 2 bytes per value, 2 MiB per 256×64×64 embedding.
- `int8`: per image and channel, a float32 scale s_c = max|x_c| / 127 and the values
  round(x / s_c) as int8; one uint8 row per image: the C scales (little-endian float32), then
  the C·h·w int8 values. Half the size; every value is within s_c / 2 = max|x_c| / 254 of the
  teacher's float32 output (the bound), computed from the float32 embedding.

Both layouts are plain .npy arrays, memory-mapped one shard at a time.
"""
from __future__ import annotations

import numpy as np

CODECS = ("fp16", "int8")


def check(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"--cache-codec must be one of {', '.join(CODECS)}, got {codec!r}")
    return codec


def stored(codec: str, count: int, shape: tuple[int, int, int]) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a shard of `count` embeddings of `shape`."""
    if codec == "int8":
        c, h, w = shape
        return (count, 4 * c + c * h * w), np.dtype(np.uint8)
    return (count, *shape), np.dtype(np.float16)


def encode(embeddings: np.ndarray, codec: str) -> np.ndarray:
    """(n, C, h, w) float32 -> the shard array."""
    if codec == "fp16":
        return embeddings.astype(np.float16)
    n, c = embeddings.shape[:2]
    x = embeddings.reshape(n, c, -1).astype(np.float32)
    scale = np.abs(x).max(axis=2) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(x / scale[:, :, None]), -127, 127).astype(np.int8)
    scales = scale.astype("<f4").view(np.uint8).reshape(n, 4 * c)
    return np.concatenate([scales, q.reshape(n, -1).view(np.uint8)], axis=1)


def decode(row: np.ndarray, codec: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One stored row -> the (C, h, w) embedding (float16 for fp16, float32 for int8)."""
    if codec == "fp16":
        return np.array(row)
    c = shape[0]
    scale = np.array(row[:4 * c]).view("<f4")
    q = np.array(row[4 * c:]).view(np.int8).reshape(shape)
    return q.astype(np.float32) * scale[:, None, None]
