"""Image and coordinate transforms into the model's 1024² input frame.

One implementation, shared by the torch predictor and the torch-free ONNX runtime: this
module imports numpy and Pillow only; the `*_torch` methods work on whatever tensor they get.

- Resize: the longest side goes to `target_length`; new size = (int(h·s + 0.5), int(w·s + 0.5))
  with s = target_length / max(h, w); Pillow's bilinear filter on the uint8 RGB image.
- Coordinates (XY pixels of the original image) scale by (new_w / w, new_h / h).
- Normalise with SAM's mean/std on the 0-255 scale, zero-pad bottom and right to a square.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
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
        # A writable array, as the original returns: callers wrap it with torch.as_tensor.
        return np.array(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))

    def _scale_coords(self, coords: Any, original_size: tuple[int, int]) -> Any:
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.astype(float) if isinstance(coords, np.ndarray) else coords.clone().float()
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) XY pixels of the original image -> the same points in the resized frame."""
        scaled: np.ndarray = self._scale_coords(np.asarray(coords), original_size)
        return scaled

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) XYXY boxes -> (N, 4) in the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords: Any, original_size: tuple[int, int]) -> Any:
        """Tensor version of `apply_coords` (float32, same device)."""
        return self._scale_coords(coords, original_size)

    def apply_boxes_torch(self, boxes: Any, original_size: tuple[int, int]) -> Any:
        """Tensor version of `apply_boxes`."""
        return self._scale_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: Any) -> Any:
        """B, C, H, W float tensor -> B, C, h', w' with the longest side at target_length.

        Antialiased bilinear interpolation in torch: close to, but not the same numbers as,
        `apply_image` (Pillow on uint8), which the predictor uses.
        """
        import torch.nn.functional as F

        new_h, new_w = get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False,
                             antialias=True)


def normalize_and_pad(image: Any, size: int, pixel_mean: Sequence[float] = PIXEL_MEAN,
                      pixel_std: Sequence[float] = PIXEL_STD) -> Any:
    """(..., 3, h, w) image on the 0-255 scale (numpy array or torch tensor) -> float32
    (..., 3, size, size): normalised with the mean/std (SAM's by default), zeros at the
    bottom and right."""
    h, w = image.shape[-2:]
    if isinstance(image, np.ndarray):
        out = np.zeros(image.shape[:-2] + (size, size), np.float32)
        for c, (mean, std) in enumerate(zip(pixel_mean, pixel_std)):
            # In place, channel by channel: the same float32 values as (x - mean) / std
            # without the full-size temporaries (half the time).
            dst = out[..., c, :h, :w]
            np.subtract(image[..., c, :, :], np.float32(mean), out=dst, dtype=np.float32)
            np.divide(dst, np.float32(std), out=dst)
        return out
    x = image.float()
    mean = x.new_tensor(pixel_mean)[:, None, None]
    std = x.new_tensor(pixel_std)[:, None, None]
    out = x.new_zeros(x.shape[:-2] + (size, size))
    out[..., :h, :w] = (x - mean) / std
    return out


def prepare_image(image: np.ndarray, size: int, pixel_mean: Sequence[float] = PIXEL_MEAN,
                  pixel_std: Sequence[float] = PIXEL_STD) -> tuple[np.ndarray, tuple[int, int]]:
    """H, W, 3 uint8 RGB -> (1, 3, size, size float32 model input, (h', w') resized size)."""
    resized = ResizeLongestSide(size).apply_image(image)
    chw = np.ascontiguousarray(resized.transpose(2, 0, 1))[None]
    return normalize_and_pad(chw, size, pixel_mean, pixel_std), resized.shape[:2]


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2 source indices and weights of each output pixel of a bilinear resize along one
    axis (align_corners=False, as torch's F.interpolate): (out, 2) int64 and float64."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = src.astype(np.int64)
    frac = src - i0
    i1 = np.minimum(i0 + 1, in_size - 1)
    return np.stack([i0, i1], axis=1), np.stack([1.0 - frac, frac], axis=1)


class MaskUpscaler:
    """Low-res mask logits -> logits at the original image size in one pass.

    SAM upsamples 256² logits to the padded 1024² input, crops the padding and upsamples again
    to the image size. Both steps are bilinear, so along each axis their composition is one
    linear map in which every output pixel mixes at most 4 consecutive low-res pixels. This
    class applies the two maps (columns, then rows) as sparse matrices, without the 1024²
    intermediate: the same values up to float rounding, several times faster. Used by the
    torch predictor and the ONNX runtime alike.

    Only low-res rows up to `row_stop` and columns up to `col_stop` are read (the rest is the
    padding): the input may be that top-left part of the low-res logits or any larger one.
    """

    def __init__(self, low_size: int, padded_size: int, input_size: tuple[int, int],
                 original_size: tuple[int, int]) -> None:
        from scipy import sparse

        self.original_size = tuple(int(v) for v in original_size)
        row_idx, row_w = _composed_taps(low_size, padded_size, input_size[0], self.original_size[0])
        col_idx, col_w = _composed_taps(low_size, padded_size, input_size[1], self.original_size[1])
        # Only the low-res rows that some output row reads take part in the column pass.
        self.row_start, self.row_stop = int(row_idx.min()), int(row_idx.max()) + 1
        self.col_stop = int(col_idx.max()) + 1  # low-res columns from here on are never read

        def matrix(idx: np.ndarray, weights: np.ndarray, width: int) -> Any:
            n = len(idx)
            return sparse.csr_matrix((weights.ravel(), idx.ravel(), np.arange(0, 4 * n + 1, 4)),
                                     shape=(n, width))

        self.rows = matrix(row_idx - self.row_start, row_w, self.row_stop - self.row_start)  # H, r
        self.cols = matrix(col_idx, col_w, self.col_stop)  # W, c
        self._row_blocks: dict[int, Any] = {}  # K -> K copies of `rows` on the diagonal

    def __call__(self, low_res: Any) -> Any:
        """(..., r, c) low-res logits (numpy or torch; r >= row_stop, c >= col_stop, e.g.
        low × low) -> (..., H, W) float32 logits, same type."""
        if low_res.shape[-2] < self.row_stop or low_res.shape[-1] < self.col_stop:
            raise ValueError(f"low-res logits of {tuple(low_res.shape[-2:])} pixels do not cover "
                             f"the {self.row_stop} rows and {self.col_stop} columns upscaling reads")
        if isinstance(low_res, np.ndarray):
            return self._apply(low_res)
        import torch

        out = self._apply(low_res.detach().float().cpu().numpy())
        return torch.from_numpy(out).to(low_res.device)

    def _apply(self, low_res: np.ndarray) -> np.ndarray:
        lead = low_res.shape[:-2]
        x = np.asarray(low_res, np.float32).reshape(-1, *low_res.shape[-2:])
        size = (self.rows.shape[0], self.cols.shape[0])
        if len(x) <= _UPSCALE_GROUP:
            return self._apply_group(x).reshape(*lead, *size)
        out = np.empty((len(x), *size), np.float32)
        for start in range(0, len(x), _UPSCALE_GROUP):
            group = x[start : start + _UPSCALE_GROUP]
            out[start : start + len(group)] = self._apply_group(group).reshape(-1, *size)
        return out.reshape(*lead, *size)

    def _apply_group(self, x: np.ndarray) -> np.ndarray:
        """(K, r, c) low-res logits -> (K·H, W)."""
        x = x[:, self.row_start:self.row_stop, :self.col_stop]
        k, r, c = x.shape
        x = np.ascontiguousarray(x.reshape(-1, c).T)  # c, K·r
        y = np.ascontiguousarray((self.cols @ x).T)  # column pass: K·r, W
        if k not in self._row_blocks:
            self._row_blocks[k] = _block_diagonal(self.rows, k)
        out: np.ndarray = self._row_blocks[k] @ y  # row pass, the K masks in one product: K·H, W
        return out


# Masks upscaled per pass: their intermediates stay in the CPU caches. Measured on 109
# masks of 480x640: 1-4 per pass ~1 ms per mask, 8 ~2.5 ms, all at once 1.5-2.7 ms.
_UPSCALE_GROUP = 4


def _block_diagonal(matrix: Any, k: int) -> Any:
    """The CSR matrix with `k` copies of `matrix` on its diagonal: one sparse product then
    applies it to k stacked blocks (a quarter faster than k products for 3 masks). Built from
    the CSR arrays directly: `scipy.sparse.block_diag` gives the same matrix 6× slower (0.6 ms,
    a third of what the single product saves)."""
    from scipy import sparse

    n_rows, n_cols = matrix.shape
    copies = np.arange(k)
    indptr = (matrix.indptr[:-1][None, :] + matrix.nnz * copies[:, None]).ravel()
    indices = (matrix.indices[None, :] + n_cols * copies[:, None]).ravel()
    return sparse.csr_matrix((np.tile(matrix.data, k), indices, np.append(indptr, k * matrix.nnz)),
                             shape=(k * n_rows, k * n_cols))


@functools.lru_cache(maxsize=8)
def mask_upscaler(low_size: int, padded_size: int, input_size: tuple[int, int],
                  original_size: tuple[int, int]) -> MaskUpscaler:
    """A `MaskUpscaler`, reused for repeated sizes (one per image, or per crop)."""
    h, w = input_size
    out_h, out_w = original_size
    return MaskUpscaler(low_size, padded_size, (int(h), int(w)), (int(out_h), int(out_w)))


def _composed_taps(low: int, padded: int, valid: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """(out, 4) low-res indices and float32 weights, along one axis, of resizing low -> padded,
    keeping the first `valid` pixels and resizing those to `out` (indices may repeat)."""
    up_idx, up_w = _bilinear_taps(low, padded)  # padded <- low
    down_idx, down_w = _bilinear_taps(valid, out)  # out <- the first `valid` of padded
    idx = up_idx[down_idx].reshape(out, 4)  # (out, 2 down taps, 2 up taps)
    weights = (down_w[:, :, None] * up_w[down_idx]).reshape(out, 4)
    return idx, weights.astype(np.float32)
