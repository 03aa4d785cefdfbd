"""Mask utilities for automatic mask generation: grids, crops, boxes, NMS, RLE, small regions.

Pure numpy (scipy is imported lazily by :func:`remove_small_regions`), so the torch path and
the torch-free ONNX runtime share this module. Conventions: masks are ``(N, H, W)`` bool, boxes
are XYXY in pixels with *inclusive* max coordinates when they come from masks, points are XY.
The numerics follow the original SAM code (float32 where it used float32 tensors), so that
thresholds and ties decide the same way.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MaskData",
    "area_from_rle",
    "batch_iterator",
    "box_area",
    "box_iou",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "coco_to_mask",
    "coco_to_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "masks_to_boxes",
    "nms",
    "remove_small_regions",
    "rle_to_coco",
    "rle_to_mask",
    "stability_score",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]

RLE = dict[str, Any]


# --------------------------------------------------------------------------- per-mask data


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "cpu")  # a torch tensor, duck-typed


class MaskData:
    """Columns of per-mask values (numpy arrays, torch tensors or lists; the mask on axis 0),
    filtered and concatenated together. ``None`` columns stay ``None``."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            self._check(key, value)
        self._stats: dict[str, Any] = dict(kwargs)

    @staticmethod
    def _check(key: str, value: Any) -> None:
        if value is not None and not isinstance(value, (list, np.ndarray)) and not _is_tensor(value):
            raise TypeError(f"MaskData column {key!r} must be a list, numpy array or torch "
                            f"tensor, got {type(value).__name__}")

    def __setitem__(self, key: str, value: Any) -> None:
        self._check(key, value)
        self._stats[key] = value

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: object) -> bool:
        return key in self._stats

    def __len__(self) -> int:
        for value in self._stats.values():
            if value is not None:
                return len(value)
        return 0

    def items(self) -> Any:
        return self._stats.items()

    def filter(self, keep: Any) -> None:
        """Keep rows by a bool mask or by indices (numpy or torch), in that order."""
        keep = np.asarray(keep.detach().cpu() if _is_tensor(keep) else keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        keep = keep.astype(np.int64, copy=False)
        for key, value in self._stats.items():
            if value is None:
                continue
            if isinstance(value, list):
                self._stats[key] = [value[i] for i in keep]
            elif _is_tensor(value):
                import torch

                self._stats[key] = value[torch.as_tensor(keep, device=value.device)]
            else:
                self._stats[key] = value[keep]

    def cat(self, new_stats: MaskData) -> None:
        """Append the rows of `new_stats`, column by column."""
        for key, value in new_stats.items():
            mine = self._stats.get(key)
            if mine is None:
                self._stats[key] = copy.deepcopy(value)
            elif isinstance(mine, list):
                self._stats[key] = mine + copy.deepcopy(value)
            elif _is_tensor(mine):
                import torch

                self._stats[key] = torch.cat([mine, value], dim=0)
            else:
                self._stats[key] = np.concatenate([mine, value], axis=0)

    @classmethod
    def concat(cls, parts: Sequence[MaskData]) -> MaskData:
        """The rows of every part, in order, in one pass (no copies of the first part)."""
        if not parts:
            return cls()
        out = cls(**{key: value for key, value in parts[0].items()})
        rest = parts[1:]
        for key, value in out.items():
            if not rest or value is None:
                continue
            values = [value] + [p[key] for p in rest]
            if isinstance(value, list):
                out._stats[key] = [item for v in values for item in v]
            elif _is_tensor(value):
                import torch

                out._stats[key] = torch.cat(values, dim=0)
            else:
                out._stats[key] = np.concatenate(values, axis=0)
        return out

    def to_numpy(self) -> None:
        """Turn tensor columns into numpy arrays."""
        for key, value in self._stats.items():
            if _is_tensor(value):
                self._stats[key] = value.detach().cpu().numpy()


def batch_iterator(batch_size: int, *args: Sequence[Any]) -> Iterator[list[Any]]:
    """Slices of `batch_size` rows of each argument (all of one length), batch by batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not args:
        return
    n = len(args[0])
    if any(len(a) != n for a in args):
        raise ValueError(f"batched arguments must have one length, got {[len(a) for a in args]}")
    for start in range(0, n, batch_size):
        yield [a[start:start + batch_size] for a in args]


# --------------------------------------------------------------------------- grids and crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """A regular grid of ``n_per_side**2`` points in [0, 1]², returned as (n², 2) XY float64.

    Offsets are 1/(2n), 3/(2n), …, 1 − 1/(2n) on each axis; x varies fastest.
    """
    if n_per_side < 1:
        raise ValueError(f"n_per_side must be >= 1, got {n_per_side}")
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """Point grids for crop layers 0..n_layers; layer i has int(n / scale**i) points per side."""
    return [
        build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)
    ]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY ints) and their layer indices for an image of size (h, w).

    Layer 0 is the whole image; layer i ≥ 1 tiles the image with 2**i × 2**i overlapping crops.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layer_idxs: list[int] = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in itertools.product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """Shift (..., 4) XYXY boxes from crop coordinates to image coordinates."""
    x0, y0 = crop_box[0], crop_box[1]
    out: np.ndarray = np.asarray(boxes) + np.asarray([x0, y0, x0, y0])
    return out


def uncrop_points(points: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """Shift (..., 2) XY points from crop coordinates to image coordinates."""
    out: np.ndarray = np.asarray(points) + np.asarray([crop_box[0], crop_box[1]])
    return out


def uncrop_masks(
    masks: np.ndarray, crop_box: Sequence[int], orig_h: int, orig_w: int
) -> np.ndarray:
    """Zero-pad (N, h, w) crop masks into place in (N, orig_h, orig_w)."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    out = np.zeros((*masks.shape[:-2], orig_h, orig_w), dtype=masks.dtype)
    out[..., y0:y1, x0:x1] = masks
    return out


def is_box_near_crop_edge(
    boxes: np.ndarray,
    crop_box: Sequence[int],
    orig_box: Sequence[int],
    atol: float = 20.0,
) -> np.ndarray:
    """(N,) bool: which (N, 4) XYXY boxes (crop coordinates) lie within ``atol`` px of a crop
    edge that is not also an edge of ``orig_box`` (the image)."""
    crop = np.asarray(crop_box, dtype=np.float32)[None, :]
    orig = np.asarray(orig_box, dtype=np.float32)[None, :]
    full = uncrop_boxes_xyxy(np.asarray(boxes).reshape(-1, 4), crop_box).astype(np.float32)
    tol = np.float32(atol)
    near_crop = np.abs(full - crop) <= tol
    near_image = np.abs(full - orig) <= tol
    near: np.ndarray = np.any(near_crop & ~near_image, axis=1)
    return near


# --------------------------------------------------------------------------- boxes and scores


def box_xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) XYXY → XYWH (w = x1 − x0, h = y1 − y0)."""
    out = np.array(boxes, copy=True)
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas (x1 − x0)·(y1 − y0) of (N, 4) XYXY boxes, in their dtype."""
    boxes = np.asarray(boxes)
    areas: np.ndarray = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return areas


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes; areas without +1. Zero union gives nan, like the original."""
    b1 = np.asarray(boxes1)
    b2 = np.asarray(boxes2)
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(b1)[:, None] + box_area(b2)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou: np.ndarray = inter / union
    return iou


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of (N, 4) XYXY boxes.

    Returns the kept indices (int64) by decreasing score; ties keep their input order. A box is
    suppressed when its IoU with a kept, higher-ranked box is > ``iou_threshold``. Computed in
    float32 like torchvision's CPU kernel; boxes with zero union never suppress each other.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"got {len(boxes)} boxes but {len(scores)} scores")
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Stable descending sort: a stable ascending sort of the reversed array, mapped back,
    # would reverse ties, so sort the negated keys instead.
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    zero = np.float32(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = slice(i + 1, n)
            w = np.maximum(zero, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            h = np.maximum(zero, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = w * h
            iou = inter / ((areas[i] + areas[rest]) - inter)
            suppressed[rest] |= iou > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool → (N, 4) int64 XYXY with inclusive max (x1 is the last column with a
    pixel). An empty mask gives [0, 0, 0, 0]."""
    masks = np.asarray(masks, dtype=bool)
    lead = masks.shape[:-2]
    if masks.size == 0:
        return np.zeros((*lead, 4), dtype=np.int64)
    h, w = masks.shape[-2:]
    masks = masks.reshape(-1, h, w)
    rows = np.any(masks, axis=2)  # N, H
    cols = np.any(masks, axis=1)  # N, W
    top = rows.argmax(axis=1)
    bottom = h - 1 - rows[:, ::-1].argmax(axis=1)
    left = cols.argmax(axis=1)
    right = w - 1 - cols[:, ::-1].argmax(axis=1)
    out = np.stack([left, top, right, bottom], axis=1).astype(np.int64)
    out[~np.any(rows, axis=1)] = 0
    return out.reshape(*lead, 4)


def stability_score(logits: np.ndarray, mask_threshold: float, offset: float) -> np.ndarray:
    """(N, H, W) logits → (N,) float32: count(> t + o) / count(> t − o). 0/0 gives nan."""
    logits = np.asarray(logits)
    # Compare in the logits' dtype, as torch does with a Python scalar.
    hi = np.asarray(mask_threshold + offset, dtype=logits.dtype)
    lo = np.asarray(mask_threshold - offset, dtype=logits.dtype)
    flat = logits.reshape(-1, logits.shape[-2] * logits.shape[-1])
    # Per-mask count_nonzero is several times faster than one count over axes.
    inter = np.array([np.count_nonzero(row > hi) for row in flat], dtype=np.int64)
    union = np.array([np.count_nonzero(row > lo) for row in flat], dtype=np.int64)
    inter = inter.reshape(logits.shape[:-2])
    union = union.reshape(logits.shape[:-2])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter.astype(np.float32) / union.astype(np.float32)


# --------------------------------------------------------------------------- RLE


def mask_to_rle(
    masks: np.ndarray,
    crop_box: Sequence[int] | None = None,
    orig_size: tuple[int, int] | None = None,
) -> list[RLE]:
    """Encode (N, H, W) bool masks as uncompressed RLE dicts ``{"size": [H, W], "counts": [...]}``.

    Runs are in column-major (Fortran) order and start with a run of zeros (0 if the first
    pixel is on). With ``crop_box`` (XYXY) and ``orig_size`` (h, w), the masks are crops that
    sit at ``crop_box`` in an otherwise empty image of that size, and the RLE is of the full
    image: the same as ``mask_to_rle(uncrop_masks(masks, crop_box, *orig_size))`` without
    building the full-size masks.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    n, h, w = masks.shape
    if crop_box is None:
        x0, y0, full_h, full_w = 0, 0, h, w
    else:
        if orig_size is None:
            raise ValueError("orig_size is required with crop_box")
        x0, y0, x1, y1 = (int(v) for v in crop_box)
        full_h, full_w = (int(v) for v in orig_size)
        if (y1 - y0, x1 - x0) != (h, w):
            raise ValueError(f"crop_box {list(crop_box)} does not match mask size {(h, w)}")
    total = full_h * full_w
    start = x0 * full_h  # full-image (Fortran) index of the crop's first column
    # N, w, full_h: each crop column padded to a whole image column, with a virtual zero pixel
    # before the first and after the last one (the image around the crop is empty).
    length = w * full_h
    padded = np.zeros((n, length + 2), dtype=bool)
    # Splitting only the last axis of a row slice, so this reshape is a view we can write into.
    padded[:, 1 : length + 1].reshape(n, w, full_h)[:, :, y0 : y0 + h] = masks.transpose(0, 2, 1)
    # flatnonzero is much faster than a 2-D nonzero; split the flat index into (mask, position).
    flat_idx = np.flatnonzero(padded[:, 1:] != padded[:, :-1])
    which, pos = np.divmod(flat_idx, length + 1)
    pos = pos + start  # full-image index of the first pixel of each new run
    # A change at the image's end starts no run; a change at index 0 gives a 0-long zero run.
    inside = pos < total
    which, pos = which[inside], pos[inside]
    splits = np.searchsorted(which, np.arange(n + 1))
    out = []
    for i in range(n):
        bounds = np.concatenate([[0], pos[splits[i] : splits[i + 1]], [total]])
        out.append({"size": [full_h, full_w], "counts": np.diff(bounds).tolist()})
    return out


def rle_to_mask(rle: RLE) -> np.ndarray:
    """Decode an uncompressed RLE dict to an (H, W) bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h}*{w}={h * w}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    mask: np.ndarray = flat.reshape(w, h).T
    return mask


def area_from_rle(rle: RLE) -> int:
    """Number of on pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def rle_to_coco(rle: RLE) -> RLE:
    """Uncompressed RLE → COCO compressed RLE ``{"size": [H, W], "counts": str}``.

    The same bytes as ``pycocotools.mask.frPyObjects(rle, H, W)["counts"].decode()``: each
    count (minus the count two places back, from the fourth on) is written as 5-bit groups,
    least significant first, in characters 48 + (group | 0x20 if more follow).
    """
    counts = [int(c) for c in rle["counts"]]
    chars: list[str] = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as on the C long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(v) for v in rle["size"]], "counts": "".join(chars)}


def coco_to_rle(coco: RLE) -> RLE:
    """COCO compressed RLE (counts as str or bytes) → uncompressed RLE dict."""
    s = coco["counts"]
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return {"size": [int(v) for v in coco["size"]], "counts": counts}


def coco_to_mask(coco: RLE) -> np.ndarray:
    """Decode a COCO compressed RLE to an (H, W) bool mask."""
    return rle_to_mask(coco_to_rle(coco))


# --------------------------------------------------------------------------- small regions


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or remove islands (``"islands"``) smaller than
    ``area_thresh`` pixels in an (H, W) bool mask, with 8-connectivity.

    Returns (mask, changed). If every island is small, the largest one is kept (and ``changed``
    is still True, as in the original).
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    correct_holes = mode == "holes"
    working = mask ^ correct_holes
    labels, n_labels = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
    small = sizes < area_thresh  # for labels 1..n
    if not small.any():
        return mask, False
    # A lookup table over labels 0..n (0 is the background of `working`) instead of isin.
    if correct_holes:
        fill = np.concatenate([[True], small])  # the mask itself and its small holes
    else:
        fill = np.concatenate([[False], ~small])  # the big islands
        if not fill.any():  # every island is small: keep the largest
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[labels], True
