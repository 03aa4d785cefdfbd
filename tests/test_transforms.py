"""Resize and coordinate transforms: sizes, round trips, numpy/torch agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mobile_sam.transforms import (
    PIXEL_MEAN,
    PIXEL_STD,
    MaskUpscaler,
    ResizeLongestSide,
    get_preprocess_shape,
    mask_upscaler,
    normalize_and_pad,
    prepare_image,
)


@pytest.mark.parametrize("h,w,expected", [(427, 640, (683, 1024)), (333, 517, (660, 1024)),
                                          (640, 480, (1024, 768)), (1024, 1024, (1024, 1024)),
                                          (1, 3000, (0, 1024)), (7, 5, (1024, 731))])
def test_preprocess_shape_rounds_half_up(h, w, expected):
    assert get_preprocess_shape(h, w, 1024) == expected


def test_apply_image_is_pillow_bilinear(rng):
    image = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    out = ResizeLongestSide(1024).apply_image(image)
    want = np.asarray(Image.fromarray(image).resize((1024, 640), Image.BILINEAR))
    assert out.shape == (640, 1024, 3) and np.array_equal(out, want)


def test_coords_round_trip_and_torch_agrees(rng):
    t = ResizeLongestSide(1024)
    size = (427, 640)
    coords = rng.uniform(0, 427, (5, 2))
    out = t.apply_coords(coords, size)
    new_h, new_w = get_preprocess_shape(*size, 1024)
    back = out / np.array([new_w / size[1], new_h / size[0]])
    np.testing.assert_allclose(back, coords, rtol=1e-12)
    torch_out = t.apply_coords_torch(torch.as_tensor(coords, dtype=torch.float32), size)
    assert torch_out.dtype == torch.float32
    np.testing.assert_allclose(torch_out.numpy(), out, rtol=1e-6)
    assert not np.shares_memory(out, coords)


def test_boxes_transform_like_their_corners(rng):
    t = ResizeLongestSide(1024)
    boxes = np.array([[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 639.0, 426.0]])
    out = t.apply_boxes(boxes, (427, 640))
    corners = t.apply_coords(boxes.reshape(-1, 2), (427, 640)).reshape(-1, 4)
    np.testing.assert_array_equal(out, corners)
    out_t = t.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), (427, 640))
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-6)


def test_normalize_and_pad_numpy_equals_torch(rng):
    image = rng.integers(0, 256, (1, 3, 20, 30)).astype(np.uint8)
    out_np = normalize_and_pad(image, 32)
    out_t = normalize_and_pad(torch.as_tensor(image), 32).numpy()
    assert out_np.dtype == np.float32 and out_np.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(out_np, out_t)
    assert np.all(out_np[..., 20:, :] == 0) and np.all(out_np[..., :, 30:] == 0)
    expected = (image[0, 1, 3, 4] - PIXEL_MEAN[1]) / PIXEL_STD[1]
    assert out_np[0, 1, 3, 4] == pytest.approx(expected, rel=1e-6)


def test_prepare_image_shapes(rng):
    image = rng.integers(0, 256, (427, 640, 3), dtype=np.uint8)
    x, input_size = prepare_image(image, 1024)
    assert x.shape == (1, 3, 1024, 1024) and input_size == (683, 1024)
    assert np.all(x[:, :, 683:] == 0)


def _two_step_float64(low: np.ndarray, input_size, original_size) -> np.ndarray:
    """SAM's postprocessing (resize to 1024², crop, resize to the image) in float64 torch."""
    x = torch.from_numpy(low.astype(np.float64))[None]
    x = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)[0].numpy()


@pytest.mark.parametrize("size", [(480, 640), (427, 640), (1024, 1024), (1, 1), (7, 1500),
                                  (3000, 2000), (100, 37)])
def test_mask_upscaler_is_the_two_step_resize(size):
    low = np.random.default_rng(0).normal(0, 10, (2, 256, 256)).astype(np.float32)
    input_size = get_preprocess_shape(*size, 1024)
    want = _two_step_float64(low, input_size, size)
    upscaler = MaskUpscaler(256, 1024, input_size, size)
    got = upscaler(low)
    assert got.shape == (2, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # float32 rounding only
    got_torch = upscaler(torch.from_numpy(low))
    assert isinstance(got_torch, torch.Tensor)
    np.testing.assert_array_equal(got_torch.numpy(), got)


def test_mask_upscaler_keeps_leading_dimensions():
    low = np.random.default_rng(1).normal(0, 10, (2, 3, 256, 256)).astype(np.float32)
    upscaler = mask_upscaler(256, 1024, (768, 1024), (480, 640))
    assert upscaler is mask_upscaler(256, 1024, (768, 1024), (480, 640))
    got = upscaler(low)
    assert got.shape == (2, 3, 480, 640)
    np.testing.assert_array_equal(got[1, 2], upscaler(low[1, 2]))
