"""SamPredictor: invariants (batched == single, dtype casts, eval/loading order) and clear
errors for every bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mobile_sam import SamPredictor, sam_model_registry


@pytest.fixture(scope="module")
def fixture_predictor(fixture_model, photo):
    predictor = SamPredictor(fixture_model)
    predictor.set_image(photo)
    return predictor


@pytest.fixture
def tiny_predictor(tiny_sam, rng):
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    return predictor


def test_batched_boxes_equal_single_boxes(fixture_predictor):
    p = fixture_predictor
    boxes = np.array([[50, 40, 300, 250], [200, 100, 500, 330], [10, 10, 60, 90]], dtype=np.float64)
    boxes_t = p.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), p.original_size)
    masks_b, iou_b, low_b = p.predict_torch(None, None, boxes=boxes_t, multimask_output=False,
                                            return_logits=True)
    for i, box in enumerate(boxes):
        masks, iou, low = p.predict(box=box, multimask_output=False, return_logits=True)
        np.testing.assert_allclose(low, low_b[i].numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(iou, iou_b[i].numpy(), atol=1e-5)
        np.testing.assert_allclose(masks, masks_b[i].numpy(), atol=1e-3, rtol=0)


def test_batched_points_equal_single_points(fixture_predictor):
    p = fixture_predictor
    pts = np.array([[100.0, 120.0], [300.5, 200.25], [480.0, 30.0]])
    low, iou = p.predict_point_batch(pts)
    assert low.shape == (3, 3, 256, 256) and iou.shape == (3, 3)
    for i, pt in enumerate(pts):
        _, iou_i, low_i = p.predict(pt[None], np.array([1]), multimask_output=True)
        np.testing.assert_allclose(low_i, low[i], atol=1e-3, rtol=0)
        np.testing.assert_allclose(iou_i, iou[i], atol=1e-5)


def test_upscale_logits_matches_predict(fixture_predictor):
    p = fixture_predictor
    logits, _, low = p.predict(np.array([[200.0, 150.0]]), np.array([1]), return_logits=True)
    np.testing.assert_array_equal(p.upscale_logits(low), logits)
    masks, _, _ = p.predict(np.array([[200.0, 150.0]]), np.array([1]))
    np.testing.assert_array_equal(masks, logits > 0)


def test_bgr_gray_and_rgba_inputs(tiny_sam, rng):
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    p = SamPredictor(tiny_sam)
    p.set_image(rgb)
    ref = p.get_image_embedding().clone()
    p.set_image(rgb[:, :, ::-1].copy(), image_format="BGR")
    assert torch.equal(p.get_image_embedding(), ref)
    p.set_image(np.dstack([rgb, np.full((40, 50), 7, np.uint8)]))
    assert torch.equal(p.get_image_embedding(), ref)
    gray = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    p.set_image(gray)
    ref_gray = p.get_image_embedding().clone()
    p.set_image(np.repeat(gray[:, :, None], 3, axis=2))
    assert torch.equal(p.get_image_embedding(), ref_gray)
    p.set_image(gray[:, :, None])
    assert torch.equal(p.get_image_embedding(), ref_gray)


def test_attention_biases_loaded_after_eval_are_used(fixture_checkpoint, fixture_model, photo):
    """The original ignores biases loaded after eval(); ours must not."""
    model = sam_model_registry["vit_t"]()  # builder already called eval()
    sd = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(sd)
    a, b = SamPredictor(model), SamPredictor(fixture_model)
    a.set_image(photo)
    b.set_image(photo)
    assert torch.equal(a.get_image_embedding(), b.get_image_embedding())


def test_dtype_casts_work_and_fp32_is_unchanged(fixture_checkpoint, photo):
    model = sam_model_registry["vit_t"](checkpoint=fixture_checkpoint)
    p = SamPredictor(model)
    p.set_image(photo)
    ref = p.get_image_embedding().clone()
    _, iou_ref, _ = p.predict(np.array([[200.0, 150.0]]), np.array([1]))
    model.half()
    p.set_image(photo)
    masks, iou, low = p.predict(np.array([[200.0, 150.0]]), np.array([1]))
    assert p.get_image_embedding().dtype == torch.float16
    assert masks.shape == (3, 333, 517) and np.all(np.isfinite(low))
    assert np.abs(iou - iou_ref).max() < 0.1
    model.float()
    p.set_image(photo)
    assert torch.equal(p.get_image_embedding(), ref)


def test_predict_before_set_image(tiny_sam):
    p = SamPredictor(tiny_sam)
    with pytest.raises(RuntimeError, match=r"set_image"):
        p.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(RuntimeError, match=r"set_image"):
        p.get_image_embedding()
    p.set_image(np.zeros((10, 10, 3), np.uint8))
    p.reset_image()
    assert not p.is_image_set
    with pytest.raises(RuntimeError, match=r"set_image"):
        p.predict(box=np.array([0, 0, 5, 5]))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(point_coords=np.array([[1.0, 2.0]])), ValueError, "given together"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 0])), ValueError,
     r"point_labels must have shape \(1,\)"),
    (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), ValueError, "NaN or infinite"),
    (dict(point_coords=np.array([[np.inf, 2.0]]), point_labels=np.array([1])), ValueError, "NaN or infinite"),
    (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), ValueError, r"shape \(N, 2\)"),
    (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([2])), ValueError, "point_labels must be 1"),
    (dict(point_coords=[["a", "b"]], point_labels=[1]), TypeError, "point_coords must be numeric"),
    (dict(box=np.array([50, 10, 20, 30])), ValueError, "x1 >= x0"),
    (dict(box=np.array([10, 40, 20, 30])), ValueError, "y1 >= y0"),
    (dict(box=np.array([10, 20, 30])), ValueError, r"shape \(4,\)"),
    (dict(box=np.array([[0, 0, 5, 5], [1, 1, 6, 6]])), ValueError, "predict_torch for several boxes"),
    (dict(box=np.array([0, 0, 5, 5]), mask_input=np.zeros((256, 256))), ValueError, "mask_input must have shape"),
])
def test_bad_prompts(tiny_predictor, kwargs, error, message):
    with pytest.raises(error, match=message):
        tiny_predictor.predict(**kwargs)


@pytest.mark.parametrize("image,error,message", [
    (np.zeros((10, 10, 3), np.float32), TypeError, "dtype uint8"),
    (np.zeros((10, 10, 3, 1), np.uint8), ValueError, "must have shape"),
    (np.zeros((10, 10, 2), np.uint8), ValueError, "must have shape"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
    ([[0, 1], [2, 3]], TypeError, "numpy array"),
])
def test_bad_images(tiny_sam, image, error, message):
    with pytest.raises(error, match=message):
        SamPredictor(tiny_sam).set_image(image)


def test_bad_image_format(tiny_sam):
    with pytest.raises(ValueError, match="image_format must be 'RGB' or 'BGR', got 'HSV'"):
        SamPredictor(tiny_sam).set_image(np.zeros((5, 5, 3), np.uint8), image_format="HSV")


def test_bad_torch_batches(tiny_predictor):
    p = tiny_predictor
    with pytest.raises(ValueError, match="batch sizes differ"):
        p.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="B x N x 2"):
        p.predict_torch(torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="set_torch_image expects"):
        p.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))


def test_set_image_embedding_reuses_an_embedding(fixture_predictor, fixture_model):
    src = fixture_predictor
    other = SamPredictor(fixture_model)
    other.set_image_embedding(src.get_image_embedding().clone(), src.original_size, src.input_size)
    pt, lb = np.array([[120.0, 80.0]]), np.array([1])
    for a, b in zip(src.predict(pt, lb, return_logits=True), other.predict(pt, lb, return_logits=True)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"embedding must have shape \(1, 256, 64, 64\)"):
        other.set_image_embedding(torch.zeros(1, 256, 32, 32), (10, 10), (1024, 1024))


def test_fast_decoder_equals_module_decoder(fixture_predictor, fixture_model):
    """The predictor's rewritten decoder computes the same function as MaskDecoder.forward."""
    p, model = fixture_predictor, fixture_model
    coords = torch.tensor([[[100.0, 200.0], [600.0, 50.0]], [[10.0, 10.0], [900.0, 600.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    mask_input = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    for masks_in, boxes in [(None, None), (mask_input, None), (None, torch.tensor([[50.0, 60.0, 700.0, 500.0]] * 2))]:
        for multimask in (True, False):
            with torch.inference_mode():
                sparse, dense = model.prompt_encoder((coords, labels), boxes, masks_in)
                want_low, want_iou = model.mask_decoder(p.features, model.prompt_encoder.get_dense_pe(),
                                                        sparse, dense, multimask)
            _, got_iou, got_low = p.predict_torch(coords, labels, boxes, masks_in, multimask)
            assert got_low.shape == want_low.shape
            torch.testing.assert_close(got_low, want_low, atol=2e-3, rtol=1e-4)
            torch.testing.assert_close(got_iou, want_iou, atol=1e-5, rtol=1e-5)


def test_min_iou_skips_only_prompts_that_would_be_dropped(fixture_predictor):
    p = fixture_predictor
    pts = np.random.default_rng(3).uniform([0, 0], [517, 333], (12, 2))
    low_all, iou_all = p.predict_point_batch(pts)
    threshold = float(np.median(iou_all.max(axis=1)))
    low, iou = p.predict_point_batch(pts, min_iou=threshold)
    np.testing.assert_array_equal(iou, iou_all)
    kept = (iou > threshold).any(axis=1)
    assert 0 < kept.sum() < len(pts)
    assert not low[~kept].any()
    # Kept prompts: the padding that upscaling never reads is not computed; the rest, and so
    # the masks at the image's size, are the full decoder's.
    h, w = p.input_size
    rows = -(-(h * 256 // 1024 + 1) // 4) * 4  # whole 4x4 cells, down to the last row read
    assert low.shape[2:] == (rows, 256) and rows < 256
    np.testing.assert_allclose(low[kept], low_all[kept][..., :rows, :], atol=1e-3, rtol=0)
    np.testing.assert_allclose(p.upscale_logits(low[kept].reshape(-1, rows, 256)),
                               p.upscale_logits(low_all[kept].reshape(-1, 256, 256)), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="do not cover"):
        p.upscale_logits(low[kept].reshape(-1, rows, 256)[:, :-4])
    # Every prompt kept (each batch written whole into the output array).
    low_every, _ = p.predict_point_batch(pts, min_iou=float(iou_all.min()) - 1.0)
    np.testing.assert_allclose(low_every, low_all[..., :rows, :], atol=1e-3, rtol=0)


def test_set_image_embedding_refuses_a_bad_size_and_keeps_the_image(tiny_sam):
    p = SamPredictor(tiny_sam)
    p.set_image(np.zeros((48, 64, 3), np.uint8))
    embedding = p.get_image_embedding().clone()
    with pytest.raises(ValueError, match="original_size must be"):
        p.set_image_embedding(embedding, (48, 64, 3), p.input_size)
    assert p.is_image_set and p.original_size == (48, 64)


@pytest.mark.parametrize("model", [None, "vit_t", torch.nn.Linear(2, 2)])
def test_predictor_refuses_what_is_not_a_model(model):
    with pytest.raises(TypeError, match=r"sam_model must be a mobile_sam Sam model, e\.g\. "
                                        r"sam_model_registry\['vit_t'\]\(checkpoint=.*\), got "
                                        + type(model).__name__):
        SamPredictor(model)
