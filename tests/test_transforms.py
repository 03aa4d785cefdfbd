"""Resize and coordinate transforms: sizes, round trips, numpy/torch agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_sam.transforms import (PIXEL_MEAN, PIXEL_STD, ResizeLongestSide, get_preprocess_shape,
                                   normalize_and_pad, prepare_image)


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
