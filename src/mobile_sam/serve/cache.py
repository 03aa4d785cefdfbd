"""The server's per-image store: one embedding per uploaded image, least recently used first out.

An entry is immutable once made, so a request that holds one keeps working even if the entry
is evicted or deleted meanwhile; the cache only decides what later requests can find.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CachedImage:
    """One uploaded image and its embedding.

    ``features``: the encoder output, 1, C, h, w (a torch tensor on the model's device, or a
    numpy array for an exported ONNX model);
    ``original_size``: (H, W) of the decoded image; ``input_size``: (h', w') after resizing the
    longest side to the model's input size; ``data``: the uploaded (encoded) bytes, kept to
    re-decode the pixels for "everything" mode instead of holding the much larger RGB array.
    """

    id: str
    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    data: bytes

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes) + len(self.data)

    def features_array(self) -> np.ndarray:
        """The embedding as a float32 numpy array, whatever the model (torch or ONNX)."""
        features = self.features
        if not isinstance(features, np.ndarray):
            features = features.detach().float().cpu().numpy()
        return np.asarray(features, dtype=np.float32)


class EmbeddingCache:
    """A thread-safe LRU of :class:`CachedImage`, bounded by entry count and total bytes."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1:
            raise ValueError(f"cache_items must be >= 1, got {max_items}")
        if max_bytes < 1:
            raise ValueError(f"cache_bytes must be >= 1, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedImage | None:
        """The entry for ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, entry: CachedImage) -> None:
        """Add or replace an entry, then evict the least recently used ones until both bounds
        hold again. An entry larger than ``max_bytes`` on its own is refused (ValueError)."""
        size = entry.nbytes
        if size > self.max_bytes:
            raise ValueError(
                f"image needs {size} bytes of cache, more than the server's cache_bytes "
                f"({self.max_bytes})"
            )
        with self._lock:
            old = self._entries.pop(entry.id, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[entry.id] = entry
            self._bytes += size
            while len(self._entries) > self.max_items or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry.nbytes
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._bytes
