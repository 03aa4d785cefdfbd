"""SamAutomaticMaskGenerator: filtering, NMS, crops, small regions and outputs with a fake
numpy predictor, argument validation, and the golden replay of the original generator."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from mobile_sam import automatic
from mobile_sam import masks as M
from mobile_sam.automatic import SamAutomaticMaskGenerator


@dataclass(frozen=True)
class FakeMask:
    radius: float  # disk radius in pixels of the image last set
    slope: float  # logits = slope * (radius - distance): small slope = unstable mask
    iou: float  # predicted IoU
    island: bool = False  # add a 2x2 island 30 px right of the point
    hole: bool = False  # punch a 2x2 hole at the point


class FakePredictor:
    """Deterministic numpy predictor: mask k of a point is a disk around it (see FakeMask).

    The low-res "logits" only carry (x, y, k) to ``upscale_logits``, which draws the disk at
    the size of the image last set, so expected masks can be computed exactly.
    """

    mask_threshold = 0.0

    def __init__(self, specs: tuple[FakeMask, FakeMask, FakeMask]) -> None:
        self.specs = specs
        self.size: tuple[int, int] | None = None
        self.calls: list[tuple] = []
        self.half_precision: list[bool] = []  # what each predict_point_batch call was allowed
        self.upscaled = 0

    def set_image(self, image: np.ndarray) -> None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.size = image.shape[:2]
        self.calls.append(("set_image", image.shape[:2]))

    def reset_image(self) -> None:
        self.size = None
        self.calls.append(("reset_image",))

    def predict_point_batch(self, points: np.ndarray, min_iou: float | None = None,
                            half_precision: bool = False) -> tuple[np.ndarray, np.ndarray]:
        assert self.size is not None
        self.half_precision.append(half_precision)
        n = len(points)
        low = np.zeros((n, 3, 256, 256), dtype=np.float32)
        low[:, :, 0, 0] = points[:, None, 0]
        low[:, :, 0, 1] = points[:, None, 1]
        low[:, :, 0, 2] = np.arange(3)[None, :]
        iou = np.tile(np.array([s.iou for s in self.specs], dtype=np.float32), (n, 1))
        return low, iou

    def upscale_logits(self, low: np.ndarray) -> np.ndarray:
        assert self.size is not None and low.shape[1:] == (256, 256)
        self.upscaled += len(low)
        h, w = self.size
        out = np.empty((len(low), h, w), dtype=np.float32)
        for i, lr in enumerate(low):
            x, y, k = float(lr[0, 0]), float(lr[0, 1]), int(lr[0, 2])
            out[i] = disk_logits(h, w, x, y, self.specs[k])
        return out


def disk_logits(h: int, w: int, x: float, y: float, spec: FakeMask) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.sqrt((xx - x) ** 2 + (yy - y) ** 2)
    logits = (spec.slope * (spec.radius - dist)).astype(np.float32)
    if spec.island:
        cx, cy = int(x) + 30, int(y)
        logits[cy : cy + 2, cx : cx + 2] = 5.0
    if spec.hole:
        logits[int(y) : int(y) + 2, int(x) : int(x) + 2] = -5.0
    return logits


def disk(h: int, w: int, x: float, y: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - x) ** 2 + (yy - y) ** 2 < r**2


STEEP = 100.0
# Mask 0: high IoU but unstable; mask 1: stable, low IoU; mask 2: stable, good IoU.
DEFAULT_SPECS = (FakeMask(6.5, 0.5, 0.95), FakeMask(8.5, STEEP, 0.5), FakeMask(12.5, STEEP, 0.9))


def make_image(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 3), dtype=np.uint8)


def test_filters_and_record_fields():
    fake = FakePredictor(DEFAULT_SPECS)
    gen = SamAutomaticMaskGenerator(fake, points_per_side=2)
    records = gen.generate(make_image(100, 120))
    # Only mask 2 of each point passes both thresholds; the disks do not overlap.
    assert len(records) == 4
    assert fake.upscaled == 4 * 2  # IoU filtering happens before upscaling
    points = [[30.0, 25.0], [90.0, 25.0], [30.0, 75.0], [90.0, 75.0]]
    for rec, (x, y) in zip(records, points):
        assert set(rec) == {
            "segmentation", "area", "bbox", "predicted_iou", "point_coords",
            "stability_score", "crop_box",
        }
        seg = rec["segmentation"]
        assert isinstance(seg, np.ndarray) and seg.dtype == bool and seg.shape == (100, 120)
        np.testing.assert_array_equal(seg, disk(100, 120, x, y, 12.5))
        assert isinstance(rec["area"], int) and rec["area"] == int(seg.sum())
        x0, y0, x1, y1 = M.masks_to_boxes(seg[None])[0].tolist()
        assert rec["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert all(type(v) is int for v in rec["bbox"] + rec["crop_box"])
        assert isinstance(rec["predicted_iou"], float)
        assert rec["predicted_iou"] == float(np.float32(0.9))
        assert rec["point_coords"] == [[x, y]]
        logits = disk_logits(100, 120, x, y, DEFAULT_SPECS[2])
        assert rec["stability_score"] == float(M.stability_score(logits[None], 0.0, 1.0)[0])
        assert rec["crop_box"] == [0, 0, 120, 100]
    assert fake.calls == [("set_image", (100, 120)), ("reset_image",)]


def test_thresholds_disabled_keep_everything():
    fake = FakePredictor(DEFAULT_SPECS)
    gen = SamAutomaticMaskGenerator(
        fake, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    records = gen.generate(make_image(100, 120))
    assert len(records) == 12
    # Sorted by predicted IoU (NMS order), ties in grid order.
    ious = [r["predicted_iou"] for r in records]
    assert ious == sorted(ious, reverse=True)
    assert [r["point_coords"] for r in records[:4]] == [
        [[30.0, 25.0]], [[90.0, 25.0]], [[30.0, 75.0]], [[90.0, 75.0]]
    ]


def test_stability_threshold_is_inclusive_and_iou_strict():
    fake = FakePredictor(DEFAULT_SPECS)
    logits = disk_logits(100, 120, 30.0, 25.0, DEFAULT_SPECS[0])
    s0 = float(M.stability_score(logits[None], 0.0, 1.0)[0])
    gen = SamAutomaticMaskGenerator(
        fake, points_per_side=1, pred_iou_thresh=0.9, stability_score_thresh=s0,
        box_nms_thresh=1.0,
    )
    # Point (60, 50): mask 0 (IoU 0.95, stability exactly s0 at this position) passes; mask 2
    # has IoU 0.9, not > 0.9.
    logits = disk_logits(100, 120, 60.0, 50.0, DEFAULT_SPECS[0])
    assert float(M.stability_score(logits[None], 0.0, 1.0)[0]) == s0
    records = gen.generate(make_image(100, 120))
    assert [r["predicted_iou"] for r in records] == [float(np.float32(0.95))]


def test_box_nms_within_crop():
    specs = (FakeMask(5.5, STEEP, 0.1), FakeMask(12.5, STEEP, 0.9), FakeMask(13.5, STEEP, 0.95))
    # Box IoU of the two disks: (24 / 26)**2 = 0.85.
    records = SamAutomaticMaskGenerator(
        FakePredictor(specs), points_per_side=2, box_nms_thresh=0.7
    ).generate(make_image(100, 120))
    assert len(records) == 4
    assert all(r["predicted_iou"] == float(np.float32(0.95)) for r in records)
    records = SamAutomaticMaskGenerator(
        FakePredictor(specs), points_per_side=2, box_nms_thresh=0.9
    ).generate(make_image(100, 120))
    assert len(records) == 8


def test_crop_layers():
    h, w = 200, 200
    fake = FakePredictor(DEFAULT_SPECS)
    gen = SamAutomaticMaskGenerator(fake, points_per_side=2, crop_n_layers=1)
    records = gen.generate(make_image(h, w))
    crop_boxes, _ = M.generate_crop_boxes((h, w), 1, 512 / 1500)
    # Crops: [0, 0, 134, 134], [0, 66, 134, 200], [66, 0, 200, 134], [66, 66, 200, 200].
    assert crop_boxes[1:] == [[0, 0, 134, 134], [0, 66, 134, 200], [66, 0, 200, 134],
                              [66, 66, 200, 200]]
    expected_calls = []
    for x0, y0, x1, y1 in crop_boxes:
        expected_calls += [("set_image", (y1 - y0, x1 - x0)), ("reset_image",)]
    assert fake.calls == expected_calls

    xywh = [M.box_xyxy_to_xywh(np.array(b)).tolist() for b in crop_boxes]
    found = {}
    for rec in records:
        assert rec["crop_box"] in xywh
        cx, cy, cw, ch = rec["crop_box"]
        (px, py), = rec["point_coords"]
        # The prompt is a grid point of its crop, and the mask is its disk in image pixels.
        assert ((px - cx) / cw * 2 - 0.5) in (0.0, 1.0) and ((py - cy) / ch * 2 - 0.5) in (0, 1)
        np.testing.assert_array_equal(rec["segmentation"], disk(h, w, px, py, 12.5))
        found.setdefault(tuple(rec["crop_box"]), []).append((px, py))
    # Full image: points (50, 50), (150, 50), (50, 150), (150, 150). Crop [0, 0, 134, 134] has
    # points (33.5, 33.5), (100.5, 33.5), (33.5, 100.5), (100.5, 100.5); its disk at 100.5
    # spans 89..112, 22 px from the inner edge 134: kept, and likewise in every crop. But the
    # crops overlap: the disks at 99.5 / 100.5 from neighbouring crops are duplicates (box IoU
    # (22/24)**2 > 0.7). The crops have equal areas, so the first crop in order wins each tie.
    assert sorted(found[(0, 0, 200, 200)]) == [(50, 50), (50, 150), (150, 50), (150, 150)]
    assert sorted(found[(0, 0, 134, 134)]) == [(33.5, 33.5), (33.5, 100.5), (100.5, 33.5),
                                               (100.5, 100.5)]
    assert sorted(found[(0, 66, 134, 134)]) == [(33.5, 166.5), (100.5, 166.5)]
    assert sorted(found[(66, 0, 134, 134)]) == [(166.5, 33.5), (166.5, 100.5)]
    assert sorted(found[(66, 66, 134, 134)]) == [(166.5, 166.5)]
    assert len(records) == 13
    # Smaller crops first (the cross-crop NMS ranks by 1 / crop area).
    assert records[-1]["crop_box"] == [0, 0, 200, 200]


def test_crop_edge_masks_dropped_and_duplicates_prefer_small_crops():
    h, w = 200, 200
    specs = (FakeMask(5.5, STEEP, 0.1), FakeMask(6.5, STEEP, 0.1), FakeMask(16.5, STEEP, 0.95))
    records = SamAutomaticMaskGenerator(
        FakePredictor(specs), points_per_side=2, crop_n_layers=1
    ).generate(make_image(h, w))
    by_crop = {}
    for rec in records:
        by_crop.setdefault(tuple(rec["crop_box"]), []).append(tuple(rec["point_coords"][0]))
    # Radius 16.5: the disk at crop point 100.5 reaches 116 (crop coords), 18 px from the
    # crop's inner edge 134 (<= 20): dropped. The disk at 33.5 is kept.
    assert by_crop[(0, 0, 134, 134)] == [(33.5, 33.5)]
    assert by_crop[(66, 66, 134, 134)] == [(166.5, 166.5)]
    assert len(by_crop[(0, 0, 200, 200)]) == 4
    for x0, y0, cw, ch in by_crop:
        if (cw, ch) == (200, 200):
            continue
        for rec in records:
            if tuple(rec["crop_box"]) == (x0, y0, cw, ch):
                box = np.array(rec["bbox"]) + [0, 0, rec["bbox"][0], rec["bbox"][1]]
                box_in_crop = box - [x0, y0, x0, y0]
                assert not M.is_box_near_crop_edge(
                    box_in_crop[None], [x0, y0, x0 + cw, y0 + ch], [0, 0, w, h]
                )[0]


def test_duplicate_across_crops_keeps_the_smaller_crop():
    # A mask found by the full image and by a crop with the same box: the crop's one is kept.
    h, w = 200, 200
    specs = (FakeMask(5.5, STEEP, 0.1), FakeMask(6.5, STEEP, 0.1), FakeMask(10.5, STEEP, 0.95))
    grids = [np.array([[0.1675, 0.1675]]), np.array([[0.25, 0.25]])]
    # Full image point: 0.1675 * 200 = 33.5; first crop point: 0.25 * 134 = 33.5. Other crops
    # put their point elsewhere.
    records = SamAutomaticMaskGenerator(
        FakePredictor(specs), points_per_side=None, point_grids=grids, crop_n_layers=1
    ).generate(make_image(h, w))
    at = [r for r in records if r["point_coords"] == [[33.5, 33.5]]]
    assert len(at) == 1 and at[0]["crop_box"] == [0, 0, 134, 134]
    # With crop NMS off (threshold 1.0), both stay.
    records = SamAutomaticMaskGenerator(
        FakePredictor(specs), points_per_side=None, point_grids=grids, crop_n_layers=1,
        crop_nms_thresh=1.0,
    ).generate(make_image(h, w))
    assert len([r for r in records if r["point_coords"] == [[33.5, 33.5]]]) == 2


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_output_modes_agree():
    from pycocotools import mask as coco_mask

    outs = {}
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        gen = SamAutomaticMaskGenerator(
            FakePredictor(DEFAULT_SPECS), points_per_side=3, output_mode=mode
        )
        outs[mode] = gen.generate(make_image(90, 110))
    assert len(outs["binary_mask"]) == 9
    for b, u, c in zip(outs["binary_mask"], outs["uncompressed_rle"], outs["coco_rle"]):
        for key in ("area", "bbox", "predicted_iou", "point_coords", "stability_score"):
            assert b[key] == u[key] == c[key]
        assert u["segmentation"]["size"] == [90, 110]
        np.testing.assert_array_equal(M.rle_to_mask(u["segmentation"]), b["segmentation"])
        assert isinstance(c["segmentation"]["counts"], str)
        np.testing.assert_array_equal(M.coco_to_mask(c["segmentation"]), b["segmentation"])
        as_bytes = {"size": c["segmentation"]["size"],
                    "counts": c["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(as_bytes) > 0, b["segmentation"])
        assert coco_mask.area(as_bytes) == b["area"]
    json.dumps([{k: v for k, v in r.items()} for r in outs["coco_rle"]])  # JSON-ready


def test_small_regions_removed_and_boxes_updated():
    specs = (FakeMask(5.5, 0.5, 0.1), FakeMask(6.5, 0.5, 0.1),
             FakeMask(12.5, STEEP, 0.95, island=True, hole=True))
    h, w = 100, 160
    raw = SamAutomaticMaskGenerator(FakePredictor(specs), points_per_side=1).generate(
        make_image(h, w)
    )
    assert len(raw) == 1
    x, y = 80.0, 50.0
    with_specks = disk(h, w, x, y, 12.5)
    with_specks[50:52, 110:112] = True
    with_specks[50:52, 80:82] = False
    np.testing.assert_array_equal(raw[0]["segmentation"], with_specks)
    assert raw[0]["bbox"] == [68, 38, 43, 24]  # the island widens the box

    cleaned = SamAutomaticMaskGenerator(
        FakePredictor(specs), points_per_side=1, min_mask_region_area=10
    ).generate(make_image(h, w))
    assert len(cleaned) == 1
    np.testing.assert_array_equal(cleaned[0]["segmentation"], disk(h, w, x, y, 12.5))
    assert cleaned[0]["area"] == int(disk(h, w, x, y, 12.5).sum())
    assert cleaned[0]["bbox"] == [68, 38, 24, 24]
    # Scores are not recomputed.
    assert cleaned[0]["predicted_iou"] == raw[0]["predicted_iou"]
    assert cleaned[0]["stability_score"] == raw[0]["stability_score"]


def test_small_region_nms_prefers_unchanged_masks():
    data = M.MaskData(
        rles=M.mask_to_rle(np.stack([np.pad(np.ones((10, 10), bool), 5)] * 2)),
        boxes=np.array([[5, 5, 14, 14]] * 2),
        iou_preds=np.array([0.9, 0.8], np.float32),
        points=np.zeros((2, 2)),
        stability_score=np.ones(2, np.float32),
        crop_boxes=np.array([[0, 0, 20, 20]] * 2),
    )
    speck = np.pad(np.ones((10, 10), bool), 5)
    speck[0, 0] = True
    data["rles"][0] = M.mask_to_rle(speck[None])[0]
    data["boxes"][0] = [0, 0, 14, 14]
    out = SamAutomaticMaskGenerator.postprocess_small_regions(data, 5, 0.7)
    # Mask 0 changed (score 0), mask 1 did not (score 1): after the speck goes they are the
    # same box, and the unchanged one wins.
    assert len(out) == 1
    assert out["iou_preds"].tolist() == [np.float32(0.8)]


def test_chunked_upscaling_gives_the_same_records(monkeypatch):
    def run():
        gen = SamAutomaticMaskGenerator(
            FakePredictor(DEFAULT_SPECS), points_per_side=4, points_per_batch=5,
            pred_iou_thresh=0.0, stability_score_thresh=0.5, output_mode="uncompressed_rle",
        )
        return gen.generate(make_image(64, 80))

    whole = run()
    monkeypatch.setattr(automatic, "_MAX_UPSCALED_ELEMENTS", 64 * 80 * 2)
    assert run() == whole
    assert len(whole) > 0


def test_no_masks_gives_empty_list():
    specs = (FakeMask(5.5, STEEP, 0.1),) * 3
    for layers in (0, 1):
        gen = SamAutomaticMaskGenerator(
            FakePredictor(specs), points_per_side=2, crop_n_layers=layers,
            min_mask_region_area=5,
        )
        assert gen.generate(make_image(50, 60)) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"points_per_side": None}, ValueError, "exactly one of points_per_side and point_grids"),
        ({"point_grids": [np.zeros((1, 2))]}, ValueError, "exactly one of"),
        ({"points_per_side": 0}, ValueError, r"points_per_side must be an integer in \[1, 256\], got 0"),
        ({"points_per_side": 257}, ValueError, r"points_per_side .* got 257"),
        ({"points_per_side": 8.0}, TypeError, "points_per_side must be an integer .* got float 8.0"),
        ({"points_per_side": True}, TypeError, "points_per_side must be an integer"),
        ({"points_per_batch": 0}, ValueError, r"points_per_batch must be an integer in \[1, 1024\]"),
        ({"pred_iou_thresh": 1.5}, ValueError, r"pred_iou_thresh must be a number in \[0, 1\], got 1.5"),
        ({"pred_iou_thresh": "0.8"}, TypeError, "pred_iou_thresh must be a number"),
        ({"stability_score_thresh": -0.1}, ValueError, "stability_score_thresh .* -0.1"),
        ({"stability_score_offset": float("nan")}, ValueError, "stability_score_offset"),
        ({"box_nms_thresh": 2}, ValueError, "box_nms_thresh .* 2.0"),
        ({"crop_nms_thresh": -1}, ValueError, "crop_nms_thresh"),
        ({"crop_n_layers": -1}, ValueError, r"crop_n_layers must be an integer in \[0, 4\], got -1"),
        ({"crop_n_layers": 5}, ValueError, "crop_n_layers .* got 5"),
        ({"crop_overlap_ratio": 1.0}, ValueError, r"crop_overlap_ratio must be a number in \[0, 1\)"),
        ({"crop_n_points_downscale_factor": 0}, ValueError, "crop_n_points_downscale_factor"),
        ({"points_per_side": 3, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2},
         ValueError, "leaves no points in crop layer 2"),
        ({"min_mask_region_area": -5}, ValueError, "min_mask_region_area .* -5"),
        ({"output_mode": "png"}, ValueError, "output_mode must be one of .* 'png'"),
        ({"points_per_side": None, "point_grids": [np.zeros((1, 2))], "crop_n_layers": 1},
         ValueError, "point_grids has 1 grids but crop_n_layers=1 needs 2"),
        ({"points_per_side": None, "point_grids": [np.full((1, 2), 2.0)]}, ValueError,
         r"point_grids\[0\] must lie in \[0, 1\]"),
        ({"points_per_side": None, "point_grids": [np.zeros((3,))]}, ValueError,
         r"point_grids\[0\] must have shape \(n, 2\)"),
        ({"points_per_side": None, "point_grids": np.zeros((1, 2))}, TypeError,
         "point_grids must be a list"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamAutomaticMaskGenerator(FakePredictor(DEFAULT_SPECS), **kwargs)


def test_bad_model_and_image():
    with pytest.raises(TypeError, match="model must be a mobile_sam Sam model .* got object"):
        SamAutomaticMaskGenerator(object())
    gen = SamAutomaticMaskGenerator(FakePredictor(DEFAULT_SPECS), points_per_side=2)
    with pytest.raises(ValueError, match=r"image must have shape .* got \(10, 10, 2\)"):
        gen.generate(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(TypeError, match="must have dtype uint8, got float32"):
        gen.generate(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(TypeError, match="numpy array, got list"):
        gen.generate([[0, 0, 0]])


def test_wraps_a_sam_model():
    from mobile_sam import SamPredictor, sam_model_registry

    gen = SamAutomaticMaskGenerator(sam_model_registry["vit_t"](), points_per_side=2)
    assert isinstance(gen.predictor, SamPredictor)


# ----------------------------------------------------------------------------- golden replay


@pytest.fixture(scope="module")
def golden_amg(reference_dir, golden_arrays, fixture_checkpoint):
    """(model, image, generator kwargs, recorded outputs, recorded masks) of the fixture."""
    from mobile_sam import sam_model_registry

    root = reference_dir / "fixture_a"
    prompts = json.loads((root / "prompts.json").read_text())
    amg = prompts["amg"]
    info = next(i for i in prompts["images"] if i["name"] == amg["image"])
    want = {k: golden_arrays[v] for k, v in amg["outputs"].items()}
    h, w = info["height"], info["width"]
    want_masks = [np.unpackbits(row)[: h * w].reshape(h, w).astype(bool)
                  for row in want["segmentation_packbits"]]
    image = np.asarray(Image.open(root / info["file"]).convert("RGB"))
    model = sam_model_registry[prompts["model_type"]](checkpoint=fixture_checkpoint)
    return model, image, amg, want, want_masks


@pytest.mark.slow
def test_golden_amg(golden_amg):
    model, image, amg, want, want_masks = golden_amg
    records = SamAutomaticMaskGenerator(model, **amg["kwargs"]).generate(image)

    assert len(records) == amg["num_masks"] == len(want_masks)
    got_masks = [r["segmentation"] for r in records]
    iou = np.array([[(g & t).sum() / max((g | t).sum(), 1) for t in want_masks]
                    for g in got_masks])
    # One-to-one matching: every record's best reference mask, all distinct, IoU >= 0.95.
    match = iou.argmax(axis=1)
    assert sorted(match.tolist()) == list(range(len(want_masks))), iou
    for i, j in enumerate(match):
        rec = records[i]
        what = f"record {i} (reference {j})"
        assert iou[i, j] >= 0.95, what
        assert abs(rec["predicted_iou"] - want["predicted_iou"][j]) <= 2e-3, what
        assert abs(rec["stability_score"] - want["stability_score"][j]) <= 2e-3, what
        assert np.abs(np.array(rec["bbox"]) - want["bbox"][j]).max() <= 2, what
        assert abs(rec["area"] - want["area"][j]) <= 0.01 * want["area"][j], what
        assert rec["area"] == int(rec["segmentation"].sum()), what
        assert rec["point_coords"] == [want["point_coords"][j].tolist()], what
        assert rec["crop_box"] == want["crop_box"][j].tolist(), what


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_fast_mode_finds_the_golden_masks(golden_amg, backend):
    """mode="fast" keeps at least 90 % of the exact masks (IoU >= 0.9) on the fixture settings,
    with the float16 decoder where the CPU has one (OpenVINO)."""
    from mobile_sam import SamPredictor
    from mobile_sam.runtime import installed

    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    model, image, amg, _, want_masks = golden_amg
    predictor = SamPredictor(model, backend=backend)
    records = SamAutomaticMaskGenerator(predictor, mode="fast", **amg["kwargs"]).generate(image)
    got = [r["segmentation"] for r in records]
    matched = sum(any((g & t).sum() / max((g | t).sum(), 1) >= 0.9 for g in got) for t in want_masks)
    assert matched >= 0.9 * len(want_masks), (matched, len(want_masks))


def test_fast_mode_skips_points_inside_confident_masks():
    """Every mask covers the whole image, confidently: after the coarse level every remaining
    point is covered, so only the coarse points are decoded; exact mode decodes them all."""
    big = FakeMask(radius=1000.0, slope=10.0, iou=0.99)
    counts = {}
    for mode in ("exact", "fast"):
        predictor = FakePredictor((big, big, big))
        decoded = []
        original = predictor.predict_point_batch
        predictor.predict_point_batch = (
            lambda p, min_iou=None, decoded=decoded, original=original, **kw:
            (decoded.append(len(p)), original(p, min_iou, **kw))[1])
        SamAutomaticMaskGenerator(predictor, points_per_side=8, mode=mode).generate(
            np.zeros((40, 60, 3), np.uint8))
        counts[mode] = sum(decoded)
    assert counts == {"exact": 64, "fast": 16}  # fast: the 4 x 4 coarse points of the 8 x 8 grid
    halves = {}
    for mode in ("exact", "fast"):  # only fast mode lets the predictor decode in float16
        predictor = FakePredictor((big, big, big))
        SamAutomaticMaskGenerator(predictor, points_per_side=4, mode=mode).generate(
            np.zeros((40, 60, 3), np.uint8))
        halves[mode] = set(predictor.half_precision)
    assert halves == {"exact": {False}, "fast": {True}}
    with pytest.raises(ValueError, match="mode must be one of"):
        SamAutomaticMaskGenerator(FakePredictor((big, big, big)), mode="turbo")


# ------------------------------------------------------------------ batch progress


def counting_predictor(specs=DEFAULT_SPECS) -> tuple[FakePredictor, list[int]]:
    """A FakePredictor that records the size of each batch it decodes."""
    predictor = FakePredictor(specs)
    decoded: list[int] = []
    original = predictor.predict_point_batch
    predictor.predict_point_batch = (
        lambda p, min_iou=None, **kw: (decoded.append(len(p)), original(p, min_iou, **kw))[1])
    return predictor, decoded


def test_on_batch_sees_every_batch_in_order_with_the_total():
    """4 x 4 points in batches of 5 are 4 batches per crop; crop_n_layers=1 makes 1 + 4 crops
    with the same grid: 20 batches, each reported once, in order, after it is decoded."""
    predictor, decoded = counting_predictor()
    calls: list[tuple[int, int, int]] = []
    gen = SamAutomaticMaskGenerator(
        predictor, points_per_side=4, points_per_batch=5, crop_n_layers=1,
        on_batch=lambda done, total: calls.append((done, total, len(decoded))))
    gen.generate(make_image(40, 60))
    assert len(decoded) == 20
    assert calls == [(i, 20, i) for i in range(1, 21)]
    calls.clear()
    decoded.clear()
    gen.generate(make_image(40, 60))  # the count starts again with each image
    assert calls == [(i, 20, i) for i in range(1, 21)]


def test_on_batch_can_cancel_the_generation():
    predictor, decoded = counting_predictor()

    class Cancelled(Exception):
        pass

    def cancel_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    gen = SamAutomaticMaskGenerator(predictor, points_per_side=4, points_per_batch=5,
                                    on_batch=cancel_after_two)
    with pytest.raises(Cancelled):
        gen.generate(make_image(40, 60))
    assert decoded == [5, 5]  # no batch after the callback raised
    assert predictor.calls[-1] == ("reset_image",)  # the predictor is left without an image


def test_on_batch_in_fast_mode_lowers_the_total_for_skipped_points():
    """Confident whole-image masks: the coarse level's 16 of 64 points run (2 batches of 10),
    the fine level's 48 (5 batches) are all skipped: the total drops from 7 to 2."""
    big = FakeMask(radius=1000.0, slope=10.0, iou=0.99)
    predictor, decoded = counting_predictor((big, big, big))
    calls: list[tuple[int, int]] = []
    SamAutomaticMaskGenerator(predictor, points_per_side=8, points_per_batch=10, mode="fast",
                              on_batch=lambda *a: calls.append(a)).generate(make_image(40, 60))
    assert decoded == [10, 6]
    assert calls == [(1, 7), (2, 7), (2, 2)]


def test_progress_bar_and_bad_callback(capsys):
    predictor, decoded = counting_predictor()
    SamAutomaticMaskGenerator(predictor, points_per_side=2, progress=True).generate(
        make_image(40, 60))
    assert decoded == [4]
    with pytest.raises(TypeError, match="on_batch must be a callable"):
        SamAutomaticMaskGenerator(FakePredictor(DEFAULT_SPECS), on_batch=3)
