"""Image and coordinate transforms into the model's 1024² input frame.

One implementation, shared by the torch predictor and the torch-free ONNX runtime: this
module imports numpy and Pillow only; the `*_torch` methods work on whatever tensor they get.

- Resize: the longest side goes to `target_length`; new size = (int(h·s + 0.5), int(w·s + 0.5))
  with s = target_length / max(h, w); Pillow's bilinear filter on the uint8 RGB image.
- Coordinates (XY pixels of the original image) scale by (new_w / w, new_h / h).
- Normalise with SAM's mean/std on the 0-255 scale, zero-pad bottom and right to a square.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side equal to `long_side_length`."""
    scale = long_side_length * 1.0 / max(oldh, oldw)
    return int(oldh * scale + 0.5), int(oldw * scale + 0.5)


class ResizeLongestSide:
    """Resizes images (H, W, 3 uint8) and rescales XY coordinates and XYXY boxes to match."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    get_preprocess_shape = staticmethod(get_preprocess_shape)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """H, W, 3 uint8 -> h', w', 3 uint8 with the longest side at target_length."""
        new_h, new_w = get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))

    def _scale_coords(self, coords: Any, original_size: tuple[int, int]) -> Any:
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.astype(float) if isinstance(coords, np.ndarray) else coords.clone().float()
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) XY pixels of the original image -> the same points in the resized frame."""
        return self._scale_coords(np.asarray(coords), original_size)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) XYXY boxes -> (N, 4) in the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords: Any, original_size: tuple[int, int]) -> Any:
        """Tensor version of `apply_coords` (float32, same device)."""
        return self._scale_coords(coords, original_size)

    def apply_boxes_torch(self, boxes: Any, original_size: tuple[int, int]) -> Any:
        """Tensor version of `apply_boxes`."""
        return self._scale_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


def normalize_and_pad(image: Any, size: int) -> Any:
    """(..., 3, h, w) image on the 0-255 scale (numpy array or torch tensor) -> float32
    (..., 3, size, size): normalised with SAM's mean/std, zeros at the bottom and right."""
    h, w = image.shape[-2:]
    if isinstance(image, np.ndarray):
        x = image.astype(np.float32)
        mean = np.asarray(PIXEL_MEAN, np.float32)[:, None, None]
        std = np.asarray(PIXEL_STD, np.float32)[:, None, None]
        out = np.zeros(x.shape[:-2] + (size, size), np.float32)
    else:
        x = image.float()
        mean = x.new_tensor(PIXEL_MEAN)[:, None, None]
        std = x.new_tensor(PIXEL_STD)[:, None, None]
        out = x.new_zeros(x.shape[:-2] + (size, size))
    out[..., :h, :w] = (x - mean) / std
    return out


def prepare_image(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """H, W, 3 uint8 RGB -> (1, 3, size, size float32 model input, (h', w') resized size)."""
    resized = ResizeLongestSide(size).apply_image(image)
    chw = np.ascontiguousarray(resized.transpose(2, 0, 1))[None]
    return normalize_and_pad(chw, size), resized.shape[:2]
