"""Validation of images and prompts given to a predictor (numpy only, torch-free).

Shared by `SamPredictor` and the ONNX runtime so both accept and refuse the same inputs with
the same messages.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def as_rgb_uint8(image: Any, image_format: str = "RGB") -> np.ndarray:
    """Check an image array and return it as H, W, 3 uint8 RGB.

    Grayscale (H, W) or (H, W, 1) becomes three equal channels; RGBA (H, W, 4) drops its
    alpha channel; `image_format="BGR"` reverses the channel order.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8 (0-255), got {image.dtype}; "
                        "scale and convert it, e.g. (img * 255).astype(np.uint8)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def finite_array(value: Any, name: str, shape_hint: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric with shape {shape_hint}: {exc}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values: {arr.tolist()}")
    return arr


def check_points(point_coords: Any, point_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if point_coords is None or point_labels is None:
        raise ValueError("point_coords and point_labels must be given together "
                         f"(got point_coords={'None' if point_coords is None else 'array'}, "
                         f"point_labels={'None' if point_labels is None else 'array'})")
    coords = finite_array(point_coords, "point_coords", "(N, 2)")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must have shape (N, 2) with N >= 1, got {coords.shape}")
    labels = np.asarray(point_labels)
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise ValueError(f"point_labels must have shape ({coords.shape[0]},) to match "
                         f"point_coords {coords.shape}, got {labels.shape}")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 "
                         f"(ignored), got {labels.tolist()}")
    return coords, labels.astype(np.int64)

def check_boxes(boxes: Any, name: str) -> np.ndarray:
    arr = finite_array(boxes, name, "(4,) XYXY")
    if arr.shape[-1:] != (4,) or arr.ndim > 2:
        raise ValueError(f"{name} must be XYXY with shape (4,) or (N, 4), got {arr.shape}")
    arr = arr.reshape(-1, 4)
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        raise ValueError(f"{name} must be XYXY with x1 >= x0 and y1 >= y0, got {arr[bad][0].tolist()}")
    return arr


def check_mask_input(mask_input: Any, size: tuple[int, int]) -> np.ndarray:
    """A (1, h, w) low-res logits array from an earlier prediction, as float64."""
    want = (1, *size)
    mask = finite_array(mask_input, "mask_input", str(want))
    if mask.shape != want:
        raise ValueError(f"mask_input must have shape {want} (low-res logits of an "
                         f"earlier prediction), got {mask.shape}")
    return mask
