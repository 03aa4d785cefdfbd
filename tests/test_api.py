"""The one-line API `SAM(...).predict(...)`: prompt formats, parity with SamPredictor and the
automatic generator, result objects, errors. Models are tiny (see conftest) to stay fast."""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from conftest import tiny_sam_config
from mobile_sam import build, weights
from mobile_sam.api import SAM, Masks, Prompts, Result, check_prompts_in_image, normalize_prompts
from mobile_sam.automatic import SamAutomaticMaskGenerator
from mobile_sam.masks import masks_to_boxes
from mobile_sam.predictor import SamPredictor
from mobile_sam.prompts import PromptError

REPO = Path(__file__).resolve().parents[1]
BUS = REPO / "examples" / "bus_480x640.png"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def coco_decode(rle: dict) -> np.ndarray:
    """pycocotools as an independent decoder of our COCO RLE."""
    with warnings.catch_warnings():
        # pycocotools' decode warns under numpy 2 (its __array__ lacks the copy keyword).
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}) > 0


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    with Image.open(BUS) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def tiny_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `load_sam` recognise tiny-config checkpoints (as it does the built-in variants)."""
    monkeypatch.setitem(build.VARIANTS, "tiny", tiny_sam_config())


@pytest.fixture(scope="module")
def sam(tiny_sam) -> SAM:
    return SAM(tiny_sam)


@pytest.fixture(scope="module")
def reference(tiny_sam, image) -> SamPredictor:
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)
    return predictor


# ----------------------------------------------------------------- prompt formats (no model)


def test_single_point() -> None:
    p = normalize_prompts([10, 20])
    assert p.points.shape == (1, 1, 2) and p.points.tolist() == [[[10.0, 20.0]]]
    assert p.labels.tolist() == [[1]] and p.boxes is None and p.num_objects == 1
    assert normalize_prompts([10, 20], labels=0).labels.tolist() == [[0]]
    assert normalize_prompts([10, 20], labels=[0]).labels.tolist() == [[0]]


def test_several_objects_one_point_each() -> None:
    p = normalize_prompts([[1, 2], [3, 4], [5, 6]], labels=[1, 0, 1])
    assert p.points.shape == (3, 1, 2)
    assert p.points[:, 0].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert p.labels.tolist() == [[1], [0], [1]]
    assert p.num_objects == 3


def test_several_points_on_one_object() -> None:
    p = normalize_prompts([[[1, 2], [3, 4]]], labels=[[1, 0]])
    assert p.points.shape == (1, 2, 2) and p.labels.tolist() == [[1, 0]]
    p = normalize_prompts([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    assert p.points.shape == (2, 2, 2) and p.labels.tolist() == [[1, 1], [1, 1]]
    assert p.labels.dtype == np.int64


def test_boxes() -> None:
    p = normalize_prompts(bboxes=[1, 2, 30, 40])
    assert p.boxes.tolist() == [[1, 2, 30, 40]] and p.points is None and p.num_objects == 1
    p = normalize_prompts(bboxes=np.array([[1, 2, 30, 40], [5, 5, 6, 6]]))
    assert p.boxes.shape == (2, 4) and p.num_objects == 2
    p = normalize_prompts([[[10, 10]]], bboxes=[[1, 2, 30, 40]])
    assert p.points.shape == (1, 1, 2) and p.boxes.shape == (1, 4)
    assert normalize_prompts() == Prompts(None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": [1, 2, 3]}, r"points must be .* got shape \(3,\)"),
        ({"points": [[[1, 2, 3]]]}, r"got shape \(1, 1, 3\)"),
        ({"points": []}, r"got shape \(0,\)"),
        ({"points": [[[1, 2]], [[1, 2], [3, 4]]]}, "same number of points"),
        ({"points": [[1, float("nan")]]}, "finite"),
        ({"points": [[1, 2], [3, 4]], "labels": [1, 1, 1]},
         (r"labels must mirror points: points of shape \(2, 2\) need labels of shape \(2,\), "
          r"got \(3,\)")),
        ({"points": [[[1, 2], [3, 4]]], "labels": [1, 1]}, r"shape \(1, 2\), got \(2,\)"),
        ({"points": [1, 2], "labels": [1, 1]}, r"\(\) or \(1,\), got \(2,\)"),
        ({"points": [1, 2], "labels": [2]},
         r"labels must be 1 \(foreground\), 0 \(background\) or -1 \(ignored\), got \[2\]"),
        ({"points": [1, 2], "labels": [True]}, r"got \[True\]"),
        ({"points": [1, 2], "labels": ["a"]}, r"labels must be 1 .* got \['a'\]"),
        ({"labels": [1]}, "labels were given without points"),
        ({"bboxes": [1, 2, 3]}, r"bboxes must be .* got shape \(3,\)"),
        ({"bboxes": [[30, 2, 10, 40]]}, r"x1 >= x0 and y1 >= y0 .* got \[30.0, 2.0, 10.0, 40.0\]"),
        ({"bboxes": [10, 40, 30, 39]}, "x1 >= x0 and y1 >= y0"),
        ({"bboxes": []}, r"got shape \(0,\)"),
        ({"points": [[1, 2], [3, 4]], "bboxes": [0, 0, 5, 5]},
         r"points describe 2 object\(s\) but bboxes 1"),
    ],
)
def test_bad_prompts(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_prompts(**kwargs)


def test_prompts_must_lie_in_the_image() -> None:
    size = (20, 30)  # h, w
    check_prompts_in_image(normalize_prompts([[0, 0], [30, 20]]), size)  # edges included
    check_prompts_in_image(normalize_prompts(bboxes=[-5, -5, 1, 1]), size)  # overlaps: fine
    check_prompts_in_image(normalize_prompts(bboxes=[30, 20, 40, 30]), size)  # meets a corner
    with pytest.raises(PromptError, match=r"points\[1\]\[0\] = \(30.5, 5\) is outside x.png "
                                          r"of size 30x20") as err:
        check_prompts_in_image(normalize_prompts([[1, 1], [30.5, 5]]), size, name="x.png")
    assert err.value.field == "points"
    with pytest.raises(ValueError, match=r"points\[0\]\[0\] = \(-1, 5\) is outside"):
        check_prompts_in_image(normalize_prompts([-1, 5]), size)
    with pytest.raises(PromptError, match=r"bboxes\[0\] = \(31, 0, 40, 10\) does not overlap") as err:
        check_prompts_in_image(normalize_prompts(bboxes=[31, 0, 40, 10]), size)
    assert err.value.field == "bboxes"


# ----------------------------------------------------------------- prompted prediction


def test_one_point_matches_predictor(sam, reference, image) -> None:
    (result,) = sam.predict(image, points=[240, 400], labels=[1])
    masks, scores, _ = reference.predict(np.array([[240, 400]]), np.array([1]),
                                         multimask_output=False)
    assert result.masks.dtype == bool and result.masks.shape == (1, 640, 480)
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_allclose(result.scores, scores, atol=1e-6)
    assert result.masks.any() and not result.masks.all()
    np.testing.assert_array_equal(result.boxes, masks_to_boxes(masks).astype(np.float32))
    assert result.boxes.dtype == np.float32
    assert result.orig_img.shape == image.shape and result.path is None


def test_several_objects_match_single_predictions(sam, reference, image) -> None:
    points = [[100, 100], [240, 400], [400, 600]]
    (result,) = sam.predict(image, points=points, labels=[1, 1, 0])
    assert len(result) == 3
    for i, (pt, label) in enumerate(zip(points, [1, 1, 0], strict=True)):
        masks, scores, _ = reference.predict(np.array([pt]), np.array([label]),
                                             multimask_output=False)
        assert iou(result.masks[i], masks[0]) > 0.99
        assert abs(result.scores[i] - scores[0]) < 1e-4


def test_boxes_and_points_on_one_object(sam, reference, image) -> None:
    (result,) = sam.predict(image, points=[[[200, 300], [50, 50]]], labels=[[1, 0]],
                            bboxes=[100, 150, 400, 500])
    masks, scores, _ = reference.predict(np.array([[200, 300], [50, 50]]), np.array([1, 0]),
                                         box=np.array([100, 150, 400, 500]),
                                         multimask_output=False)
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_allclose(result.scores, scores, atol=1e-6)

    boxes = [[100, 150, 400, 500], [10, 10, 200, 200]]
    (result,) = sam.predict(image, bboxes=boxes)
    for i, box in enumerate(boxes):
        masks, _, _ = reference.predict(box=np.array(box), multimask_output=False)
        assert iou(result.masks[i], masks[0]) > 0.99


def test_multimask_keeps_three_per_object(sam, reference, image) -> None:
    (result,) = sam.predict(image, points=[[240, 400], [100, 100]], multimask_output=True)
    assert result.masks.shape == (6, 640, 480) and result.masks_per_object == 3
    masks, scores, _ = reference.predict(np.array([[100, 100]]), np.array([1]))
    for k in range(3):
        assert iou(result.masks[3 + k], masks[k]) > 0.99
    np.testing.assert_allclose(result.scores[3:], scores, atol=1e-4)
    grouped = result.scores.reshape(2, 3)
    assert result.best.tolist() == [int(grouped[0].argmax()), 3 + int(grouped[1].argmax())]
    assert result.mask_names("im")[:4] == ["im_mask_0_0.png", "im_mask_0_1.png",
                                           "im_mask_0_2.png", "im_mask_1_0.png"]


def test_sources_path_pil_list(sam, image) -> None:
    pil = Image.fromarray(image)
    results = sam.predict([str(BUS), pil, image], points=[240, 400])
    assert isinstance(results, list) and len(results) == 3
    assert results[0].path == str(BUS) and results[1].path is None
    for r in results[1:]:
        np.testing.assert_array_equal(r.masks, results[0].masks)
    assert sam.predict(BUS, points=[240, 400])[0].path == str(BUS)
    assert sam(image, points=[240, 400])[0].masks.shape == (1, 640, 480)


def test_embedding_is_cached_for_the_same_pixels(tiny_sam, image) -> None:
    calls = []
    hook = tiny_sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        sam = SAM(tiny_sam)
        sam.predict(image, points=[10, 10])
        sam.predict(image, points=[20, 20])
        sam.predict(image.copy(), bboxes=[0, 0, 50, 50])
        assert len(calls) == 1
        changed = image.copy()
        changed[0, 0, 0] ^= 1
        sam.predict(changed, points=[10, 10])
        assert len(calls) == 2
    finally:
        hook.remove()


def test_result_outputs(sam, image, tmp_path: Path) -> None:
    (result,) = sam.predict(BUS, points=[[240, 400], [100, 100]], bboxes=[[150, 300, 350, 600],
                                                                          [0, 0, 300, 300]])
    records = result.to_coco()
    assert [r["id"] for r in records] == [0, 1] and [r["object"] for r in records] == [0, 1]
    for rec, mask, box in zip(records, result.masks, result.boxes, strict=True):
        assert isinstance(rec["segmentation"]["counts"], str)
        np.testing.assert_array_equal(coco_decode(rec["segmentation"]), mask)
        assert rec["area"] == int(mask.sum())
        x0, y0, x1, y1 = box.tolist()
        assert rec["bbox"] == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]  # the pixels' extent
    paths = result.save_masks(tmp_path / "m")
    assert [p.name for p in paths] == ["bus_480x640_mask_0.png", "bus_480x640_mask_1.png"]
    for path, mask in zip(paths, result.masks, strict=True):
        np.testing.assert_array_equal(read_image(path) > 127, mask)
    plot = result.plot()
    assert plot.shape == image.shape and plot.dtype == np.uint8
    # Pixels away from every mask and prompt are untouched; mask pixels are tinted.
    ys, xs = np.mgrid[:640, :480]
    drawn = np.zeros((640, 480), dtype=bool)
    for x, y in [(240, 400), (100, 100)]:
        drawn |= (xs - x) ** 2 + (ys - y) ** 2 <= 8**2
    for x0, y0, x1, y1 in [(150, 300, 350, 600), (0, 0, 300, 300)]:
        near_x = (np.abs(xs - x0) <= 3) | (np.abs(xs - x1) <= 3)
        near_y = (np.abs(ys - y0) <= 3) | (np.abs(ys - y1) <= 3)
        in_x, in_y = (xs >= x0 - 3) & (xs <= x1 + 3), (ys >= y0 - 3) & (ys <= y1 + 3)
        drawn |= (near_x & in_y) | (near_y & in_x)
    untouched = ~result.masks.any(axis=0) & ~drawn
    assert untouched.sum() > 1000
    assert (plot[untouched] == image[untouched]).all()
    prompt_only = drawn & ~result.masks.any(axis=0)
    assert (plot[prompt_only] != image[prompt_only]).any()
    inside = result.masks[0] & ~result.masks[1]
    assert (plot[inside] != image[inside]).any()
    saved = result.save(tmp_path / "overlay.png")
    np.testing.assert_array_equal(read_image(saved), plot)


def test_point_outside_image_is_refused(sam, image) -> None:
    with pytest.raises(ValueError, match=r"points\[0\]\[0\] = \(481, 10\) is outside the image "
                                         "of size 480x640"):
        sam.predict(image, points=[481, 10])
    with pytest.raises(ValueError, match=rf"outside {BUS} of size"):
        sam.predict(str(BUS), points=[-3, 10])


def test_url_sources_are_refused(sam, image) -> None:
    with pytest.raises(ValueError, match="URL: images are not fetched from the network"):
        sam.predict("https://ultralytics.com/images/bus.jpg", points=[1, 1])
    with pytest.raises(ValueError, match="'HTTP://x/y.png' is a URL"):
        sam.predict([image, "HTTP://x/y.png"])  # refused before any work


def test_bad_sources_and_options(sam, image) -> None:
    with pytest.raises(FileNotFoundError, match="image file not found"):
        sam.predict("/nonexistent/x.png", points=[1, 1])
    with pytest.raises(TypeError, match="source must be a file path"):
        sam.predict(42, points=[1, 1])
    with pytest.raises(ValueError, match="empty list"):
        sam.predict([], points=[1, 1])
    with pytest.raises(TypeError, match="uint8"):
        sam.predict(image.astype(np.float32), points=[1, 1])
    with pytest.raises(ValueError, match=r"generator options \['points_per_side'\] apply only"):
        sam.predict(image, points=[1, 1], points_per_side=4)
    with pytest.raises(ValueError, match="labels must mirror points"):
        sam.predict(image, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(TypeError, match="model must be a name, a checkpoint path or a Sam"):
        SAM(3)


# ----------------------------------------------------------------- everything mode


def test_everything_mode_matches_the_generator(sam, tiny_sam, image) -> None:
    # No filtering, no NMS: the random tiny model's masks overlap a lot.
    options = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
               "box_nms_thresh": 1.0}
    (result,) = sam.predict(image, **options)
    generator = SamAutomaticMaskGenerator(tiny_sam, output_mode="coco_rle", **options)
    expected = generator.generate(image)
    assert len(expected) > 1 and result.masks_per_object == 0
    records = result.to_coco()
    assert len(records) == len(expected) == len(result)
    for i, (rec, exp) in enumerate(zip(records, expected, strict=True)):
        assert rec == {"id": i, **exp}
        np.testing.assert_array_equal(coco_decode(rec["segmentation"]), result.masks[i])
        assert result.scores[i] == pytest.approx(exp["predicted_iou"])
    assert result.plot().shape == image.shape
    assert result.best.tolist() == list(range(len(result)))


def test_everything_generator_options_are_checked(sam, image) -> None:
    with pytest.raises(ValueError, match="points_per_side"):
        sam.predict(image, points_per_side=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'points_per_sid'"):
        sam.predict(image, points_per_sid=4)
    with pytest.raises(ValueError, match="output_mode is chosen by SAM.predict"):
        sam.predict(image, output_mode="binary_mask")


def test_everything_with_no_masks(sam, image) -> None:
    (result,) = sam.predict(image[:40, :40], points_per_side=2, pred_iou_thresh=1.0)
    assert result.masks.shape == (0, 40, 40) and result.boxes.shape == (0, 4)
    assert result.to_coco() == []
    np.testing.assert_array_equal(result.plot(), image[:40, :40])


# ----------------------------------------------------------------- loading models


def test_sam_from_path_matches_predictor(tiny_checkpoint, tiny_variant, image) -> None:
    sam = SAM(tiny_checkpoint)
    assert sam.model.device == torch.device("cpu")
    predictor = SamPredictor(build.load_sam(tiny_checkpoint))
    predictor.set_image(image)
    (result,) = sam.predict(image, points=[[[240, 400], [300, 100]]], labels=[[1, 0]])
    masks, scores, _ = predictor.predict(np.array([[240, 400], [300, 100]]), np.array([1, 0]),
                                         multimask_output=False)
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_allclose(result.scores, scores, atol=1e-6)


def test_sam_from_name_uses_the_cache(tiny_checkpoint, tiny_variant, tmp_path, monkeypatch,
                                      image) -> None:
    import hashlib

    data = tiny_checkpoint.read_bytes()
    spec = dataclasses.replace(weights.CHECKPOINTS["vit_t"], size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(),
                               urls=("http://127.0.0.1:9/never",))
    monkeypatch.setitem(weights.CHECKPOINTS, "vit_t", spec)
    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path))
    (tmp_path / "mobile_sam.pt").write_bytes(data)
    sam = SAM("vit_t", device="cpu")
    reference = SAM(tiny_checkpoint)
    np.testing.assert_array_equal(sam.predict(image, points=[240, 400])[0].masks,
                                  reference.predict(image, points=[240, 400])[0].masks)


def test_unknown_model_name() -> None:
    with pytest.raises(FileNotFoundError, match="not a known checkpoint name; known names"):
        SAM("vit_q")


def test_result_is_a_plain_dataclass(image) -> None:
    masks = np.zeros((1, 4, 5), dtype=bool)
    masks[0, 1:3, 2:4] = True
    result = Result(orig_img=image[:4, :5], masks=masks, scores=np.array([0.5], np.float32))
    assert result.boxes.tolist() == [[2.0, 1.0, 3.0, 2.0]]
    assert result.to_coco()[0]["bbox"] == [2, 1, 2, 2]


def test_backend_and_precision_reach_the_predictor(tiny_sam):
    assert SAM(tiny_sam, backend="torch").predictor.backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        SAM(tiny_sam, backend="tensorrt")
    with pytest.raises(RuntimeError, match="precision 'bf16' is not available on backend 'torch'"):
        SAM(tiny_sam, backend="torch", precision="bf16")


# ----------------------------------------------------------------- Ultralytics-shaped results


def shapes_result(image: np.ndarray, **kwargs) -> Result:
    """A result holding known masks: a disk, a disk plus a separate square, an empty mask."""
    h, w = 120, 160
    ys, xs = np.mgrid[:h, :w]
    disk = (ys - 50) ** 2 + (xs - 60) ** 2 < 30**2
    two = disk.copy()
    two[90:110, 120:150] = True
    masks = np.stack([disk, two, np.zeros((h, w), bool)])
    return Result(orig_img=image[:h, :w], masks=masks,
                  scores=np.array([0.9, 0.8, 0.1], np.float32), **kwargs)


def test_masks_have_data_xy_xyn_and_stay_an_array(image) -> None:
    import cv2

    result = shapes_result(image)
    masks = result.masks
    data = masks.data
    assert isinstance(data, np.ndarray) and data.dtype == bool and data.shape == (3, 120, 160)
    assert masks.shape == (3, 120, 160) and len(masks) == 3 and result.orig_shape == (120, 160)
    # Still the bool array it was: numpy conversion, methods, operators, indexing.
    assert np.asarray(masks) is data or np.array_equal(np.asarray(masks), data)
    assert masks.dtype == bool and int(masks.sum()) == int(data.sum())
    np.testing.assert_array_equal(masks[0] & ~masks[1], data[0] & ~data[1])
    assert isinstance(masks[1:], Masks) and np.array_equal(masks[1].data, data[1])
    assert [m.shape for m in masks] == [(120, 160)] * 3
    xy, xyn = masks.xy, masks.xyn
    assert len(xy) == 3 and all(p.dtype == np.float32 and p.shape[1] == 2 for p in xy)
    assert xy[2].shape == (0, 2)  # empty mask
    for outline, mask in zip(xy[:2], data[:2], strict=True):
        cols, rows = outline.astype(int).T
        assert mask[rows, cols].all()  # every vertex is a pixel of the mask
        filled = np.zeros(mask.shape, np.uint8)
        cv2.fillPoly(filled, [outline.astype(np.int32)], 1)
        assert iou(filled > 0, mask) > 0.97  # the square joined to the disk by a thin link
    np.testing.assert_array_equal(xyn[1], xy[1] / np.array([160, 120], np.float32))


def test_boxes_have_xyxy_xywh_conf_cls_and_stay_an_array(image) -> None:
    result = shapes_result(image)
    boxes = result.boxes
    expected = masks_to_boxes(result.masks.data).astype(np.float32)
    np.testing.assert_array_equal(boxes.xyxy, expected)
    np.testing.assert_array_equal(np.asarray(boxes), expected)
    assert boxes.shape == (3, 4) and boxes.dtype == np.float32 and boxes.data.shape == (3, 6)
    x0, y0, x1, y1 = expected[0]
    np.testing.assert_allclose(boxes.xywh[0], [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    np.testing.assert_allclose(boxes.xyxyn[0], expected[0] / [160, 120, 160, 120])
    np.testing.assert_array_equal(boxes.conf, result.scores)
    assert boxes.cls.tolist() == [0, 0, 0] and result.names == {0: "object"}
    assert boxes[1].xyxy.tolist() == expected[1].tolist()


def test_summary_to_json_repr_and_labels(image) -> None:
    import json

    result = shapes_result(image, names={0: "cat", 1: "dog"}, classes=[1, 0, 1])
    rows = result.summary()
    assert [r["name"] for r in rows] == ["dog", "cat", "dog"]
    assert [r["class"] for r in rows] == [1, 0, 1]
    assert rows[0]["confidence"] == pytest.approx(0.9)
    assert rows[0]["box"] == dict(zip(["x1", "y1", "x2", "y2"], result.boxes.xyxy[0].tolist()))
    np.testing.assert_allclose(rows[1]["segments"]["x"], result.masks.xy[1][:, 0], atol=1e-5)
    assert rows[2]["segments"] == {"x": [], "y": []}
    assert json.loads(result.to_json()) == rows
    normalized = result.summary(normalize=True)
    assert normalized[0]["box"]["x2"] == pytest.approx(rows[0]["box"]["x2"] / 160, abs=1e-5)
    assert max(normalized[1]["segments"]["y"]) <= 1.0
    text = repr(result)
    assert text.startswith("Result(") and "orig_shape=(120, 160)" in text and len(text) < 200
    annotated = result.to_annotated_image("x.png")
    assert [a.label for a in annotated.annotations] == ["dog", "cat", "dog"]
    assert (annotated.height, annotated.width, annotated.file_name) == (120, 160, "x.png")
    with pytest.raises(ValueError, match=r"classes \[2\] have no entry in names"):
        shapes_result(image, names={0: "cat"}, classes=[0, 2, 0])


def test_annotated_image_keeps_the_best_mask_per_object(sam, image) -> None:
    (result,) = sam.predict(image, points=[[240, 400], [100, 100]], multimask_output=True)
    annotated = result.to_annotated_image()
    assert annotated.file_name == "image.png" and len(annotated.annotations) == 2
    for ann, best in zip(annotated.annotations, result.best, strict=True):
        np.testing.assert_array_equal(ann.mask, result.masks.data[best])
        assert ann.score == pytest.approx(float(result.scores[best]))
    assert len(result.to_annotated_image(best_only=False).annotations) == 6


def test_ultralytics_predict_options(sam, image, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (result,) = sam.predict(str(BUS), points=[240, 400], imgsz=1024, device="cpu",
                            verbose=True, save=True)
    saved = tmp_path / "runs" / "segment" / "predict" / "bus_480x640.png"
    assert result.save_dir == str(Path("runs/segment/predict"))
    np.testing.assert_array_equal(read_image(saved), result.plot())
    out = capsys.readouterr().out
    assert f"image 1/1 {BUS}: 480x640 1 mask(s)" in out and "Results saved to" in out
    (again,) = sam(image, points=[240, 400], save=True, imgsz=[1024, 1024])
    assert (tmp_path / "runs" / "segment" / "predict2" / "image0.png").is_file()
    assert capsys.readouterr().out == ""  # verbose is off by default
    assert again.save().name == "results_image.png" and (tmp_path / "results_image.png").is_file()
    for bad in (640, [1024, 640], True):
        with pytest.raises(ValueError, match=r"imgsz must be 1024 .* got " + re.escape(repr(bad))):
            sam.predict(image, points=[240, 400], imgsz=bad)
    with pytest.raises(ValueError, match="'nonsense' is not a torch device"):
        sam.predict(image, points=[240, 400], device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            sam.predict(image, points=[240, 400], device="cuda:0")


@pytest.mark.parametrize(("name", "variant"), [("mobile_sam.pt", "vit_t"), ("sam_b.pt", "vit_b"),
                                               ("sam_l.pt", "vit_l"), ("sam_h.pt", "vit_h")])
def test_ultralytics_model_names(name, variant, tiny_checkpoint, tiny_variant, tmp_path,
                                 monkeypatch, image) -> None:
    import hashlib

    assert weights.find_checkpoint(name).variant == variant
    data = tiny_checkpoint.read_bytes()
    spec = dataclasses.replace(weights.CHECKPOINTS[variant], size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(),
                               urls=("http://127.0.0.1:9/never",))
    monkeypatch.setitem(weights.CHECKPOINTS, variant, spec)
    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path))
    (tmp_path / spec.file_name).write_bytes(data)  # the variant's own file in the cache
    assert weights.resolve_checkpoint(name) == tmp_path / spec.file_name
    assert SAM(name).predict(image, points=[240, 400])[0].masks.shape == (1, 640, 480)
