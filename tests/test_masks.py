"""Mask utilities: grids, crops, boxes, NMS, stability, RLE (vs pycocotools), small regions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from mobile_sam import masks as M

# ----------------------------------------------------------------------------- grids and crops


def test_point_grid_values_and_order():
    grid = M.build_point_grid(2)
    np.testing.assert_array_equal(grid, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    grid3 = M.build_point_grid(3)
    assert grid3.shape == (9, 2) and grid3.dtype == np.float64
    side = np.array([1 / 6, 0.5, 5 / 6])
    np.testing.assert_allclose(grid3[:3, 0], side)  # x varies fastest
    np.testing.assert_allclose(grid3[:3, 1], [1 / 6] * 3)
    np.testing.assert_allclose(grid3[::3, 1], side)


def test_all_layer_point_grids():
    sizes = [len(g) for g in M.build_all_layer_point_grids(7, 2, 2)]
    assert sizes == [49, 9, 1]  # int(7 / 2) = 3, int(7 / 4) = 1
    assert [len(g) for g in M.build_all_layer_point_grids(32, 1, 1)] == [1024, 1024]


def test_crop_boxes_by_hand():
    # h=400, w=600, one layer: overlap = int(512/1500 * 400 * 2/2) = 136,
    # crop_w = ceil((136 + 600) / 2) = 368, crop_h = ceil((136 + 400) / 2) = 268,
    # x0s = [0, 368 - 136], y0s = [0, 268 - 136]; x0 outer loop.
    boxes, layers = M.generate_crop_boxes((400, 600), 1, 512 / 1500)
    assert boxes == [
        [0, 0, 600, 400],
        [0, 0, 368, 268],
        [0, 132, 368, 400],
        [232, 0, 600, 268],
        [232, 132, 600, 400],
    ]
    assert layers == [0, 1, 1, 1, 1]


def test_crop_boxes_two_layers():
    boxes, layers = M.generate_crop_boxes((333, 517), 2, 512 / 1500)
    assert layers == [0] + [1] * 4 + [2] * 16
    # Layer 2: n=4, overlap = int(512/1500*333*0.5) = 56, crop_w = ceil((3*56+517)/4) = 172,
    # crop_h = ceil((3*56+333)/4) = 126; the last crops are clipped to the image.
    assert boxes[5] == [0, 0, 172, 126]
    assert boxes[6] == [0, 70, 172, 196]
    assert boxes[-1] == [348, 210, 517, 333]
    assert all(0 <= b[0] < b[2] <= 517 and 0 <= b[1] < b[3] <= 333 for b in boxes)


def test_crop_boxes_no_layers():
    assert M.generate_crop_boxes((10, 20), 0, 0.3) == ([[0, 0, 20, 10]], [0])


def test_uncrop():
    boxes = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(M.uncrop_boxes_xyxy(boxes, [10, 20, 50, 60]), [[11, 22, 13, 24]])
    np.testing.assert_array_equal(M.uncrop_points(np.array([[1.5, 2.0]]), [10, 20, 50, 60]),
                                  [[11.5, 22.0]])
    masks = np.ones((2, 3, 4), dtype=bool)
    full = M.uncrop_masks(masks, [1, 2, 5, 5], 6, 7)
    assert full.shape == (2, 6, 7) and full.sum() == 24
    assert full[:, 2:5, 1:5].all()
    assert M.uncrop_masks(masks, [0, 0, 4, 3], 3, 4) is masks


# ----------------------------------------------------------------------------- boxes and scores


def test_stability_score_matches_direct_count(rng):
    logits = rng.normal(0, 3, size=(6, 17, 23)).astype(np.float32)
    logits[5] = -5  # empty union: 0 / 0
    got = M.stability_score(logits, 0.0, 1.0)
    assert got.dtype == np.float32 and got.shape == (6,)
    for i in range(5):
        expected = np.float32(int((logits[i] > 1).sum())) / np.float32(int((logits[i] > -1).sum()))
        assert got[i] == expected
    assert np.isnan(got[5])
    # Both comparisons are strict: logits exactly at t + o and t - o are left out.
    edge = np.array([[[1.0, 2.0, -0.5, -1.0]]], dtype=np.float32)
    assert M.stability_score(edge, 0.0, 1.0)[0] == np.float32(1) / np.float32(3)


def _boxes_brute(masks):
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([0, 0, 0, 0] if len(xs) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()])
    return np.array(out, dtype=np.int64)


def test_masks_to_boxes_vs_brute_force(rng):
    masks = rng.random((20, 13, 19)) > 0.97
    masks[0] = False
    masks[1] = False
    masks[1, 12, 18] = True
    masks[2] = True
    got = M.masks_to_boxes(masks)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, _boxes_brute(masks))
    np.testing.assert_array_equal(got[1], [18, 12, 18, 12])  # inclusive max
    np.testing.assert_array_equal(got[2], [0, 0, 18, 12])
    assert M.masks_to_boxes(np.zeros((0, 5, 5), bool)).shape == (0, 4)


def test_box_area_iou_xywh():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 20, 25]])
    np.testing.assert_array_equal(M.box_area(boxes), [100, 100, 0])
    iou = M.box_iou(boxes[:2], boxes[:2])
    np.testing.assert_allclose(iou, [[1, 25 / 175], [25 / 175, 1]])
    np.testing.assert_array_equal(M.box_xyxy_to_xywh(boxes[1]), [5, 5, 10, 10])


def _nms_brute(boxes, scores, thresh):
    boxes = boxes.astype(np.float32)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    keep = []
    for i in order:
        ok = True
        for k in keep:
            a, b = boxes[i], boxes[k]
            w = max(np.float32(0), min(a[2], b[2]) - max(a[0], b[0]))
            h = max(np.float32(0), min(a[3], b[3]) - max(a[1], b[1]))
            inter = np.float32(w * h)
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7])
def test_nms_vs_brute_force(rng, thresh):
    n = 300
    xy = rng.integers(0, 100, size=(n, 2))
    wh = rng.integers(0, 40, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.integers(0, 20, size=n).astype(np.float32)  # many ties
    got = M.nms(boxes, scores, thresh)
    np.testing.assert_array_equal(got, _nms_brute(boxes, scores, thresh))


def test_nms_semantics():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 50, 50], [50, 50, 50, 50]])
    scores = np.array([0.5, 0.9, 0.1, 0.1], dtype=np.float32)
    # IoU of the first two is exactly 0.5: suppressed only when strictly above the threshold.
    np.testing.assert_array_equal(M.nms(boxes, scores, 0.5), [1, 0, 2, 3])
    np.testing.assert_array_equal(M.nms(boxes, scores, 0.49), [1, 2, 3])
    # Ties keep input order; zero-area boxes (0/0 IoU) never suppress each other.
    np.testing.assert_array_equal(M.nms(boxes, np.ones(4, np.float32), 0.4), [0, 2, 3])
    assert M.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        M.nms(boxes[:3], scores[:2], 0.5)


def test_nms_is_fast_enough(rng):
    import time

    n = 3000
    xy = rng.uniform(0, 1000, size=(n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 200, size=(n, 2))], axis=1)
    t = time.perf_counter()
    M.nms(boxes, rng.random(n), 0.7)
    assert time.perf_counter() - t < 2.0


def test_is_box_near_crop_edge():
    crop = [100, 100, 300, 300]
    orig = [0, 0, 300, 400]
    boxes = np.array(
        [
            [50, 50, 150, 150],  # well inside the crop
            [0, 50, 100, 150],  # on the crop's left edge (x=100), which is not an image edge
            [20, 50, 100, 150],  # 20 px from it: still near (atol inclusive)
            [21, 50, 100, 150],  # 21 px: not near
            [50, 50, 200, 150],  # on the crop's right edge x=300, which is the image's edge
            [50, 120, 150, 200],  # on the bottom crop edge y=300 (image goes to 400)
        ]
    )
    np.testing.assert_array_equal(
        M.is_box_near_crop_edge(boxes, crop, orig), [False, True, True, False, False, True]
    )
    full = [0, 0, 300, 400]
    assert not M.is_box_near_crop_edge(np.array([[0, 0, 300, 400]]), full, full).any()


# ----------------------------------------------------------------------------- RLE


def _edge_masks(rng):
    cases = [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
    ]
    single = np.zeros((6, 4), bool)
    single[0, 0] = True  # first pixel on
    cases.append(single)
    last = np.zeros((6, 4), bool)
    last[-1, -1] = True
    cases.append(last)
    big = np.zeros((300, 400), bool)  # counts far beyond one 5-bit group, negative deltas
    big[150, 200] = True
    big[299, 399] = True
    cases.append(big)
    stripes = np.zeros((64, 50), bool)
    stripes[:, ::2] = True
    cases.append(stripes)
    blob = np.zeros((200, 300), bool)
    blob[30:170, 40:260] = True
    blob[60:80, 100:120] = False
    cases.append(blob)
    for p in (0.01, 0.5, 0.99):
        cases.append(rng.random((37, 29)) < p)
    return cases


def test_rle_round_trip_and_area(rng):
    batch = rng.random((8, 21, 16)) < 0.4
    batch[0] = False
    batch[1] = True
    rles = M.mask_to_rle(batch)
    for m, rle in zip(batch, rles):
        assert rle["size"] == [21, 16]
        assert all(isinstance(c, int) for c in rle["counts"])
        assert sum(rle["counts"]) == 21 * 16
        np.testing.assert_array_equal(M.rle_to_mask(rle), m)
        assert M.area_from_rle(rle) == int(m.sum())
    assert rles[0]["counts"] == [21 * 16]
    assert rles[1]["counts"] == [0, 21 * 16]


def test_rle_is_column_major():
    m = np.array([[1, 0], [1, 1]], dtype=bool)
    assert M.mask_to_rle(m[None])[0]["counts"] == [0, 2, 1, 1]


@pytest.mark.parametrize(
    "crop_box", [[0, 0, 9, 8], [3, 2, 9, 8], [0, 0, 4, 5], [2, 1, 6, 7], [5, 0, 9, 8], [0, 3, 9, 8]]
)
def test_rle_of_crop_equals_rle_of_uncropped(rng, crop_box):
    x0, y0, x1, y1 = crop_box
    crops = rng.random((6, y1 - y0, x1 - x0)) < 0.5
    crops[0] = True
    crops[1] = False
    crops[2, 0, 0] = True
    crops[3, -1, -1] = True
    crops[4] = False
    crops[4, -1, -1] = True
    expected = M.mask_to_rle(M.uncrop_masks(crops, crop_box, 8, 9))
    assert M.mask_to_rle(crops, crop_box=crop_box, orig_size=(8, 9)) == expected


# pycocotools' decode warns under numpy 2 (its __array__ lacks the copy keyword).
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_coco_rle_bytes_match_pycocotools(rng):
    for m in _edge_masks(rng):
        h, w = m.shape
        rle = M.mask_to_rle(m[None])[0]
        ours = M.rle_to_coco(rle)
        assert ours["size"] == [h, w]
        assert isinstance(ours["counts"], str)
        theirs = coco_mask.frPyObjects(rle, h, w)
        assert ours["counts"] == theirs["counts"].decode("ascii")
        encoded = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == encoded["counts"].decode("ascii")
        np.testing.assert_array_equal(M.coco_to_mask(ours), m)
        np.testing.assert_array_equal(M.coco_to_mask(encoded), coco_mask.decode(encoded) > 0)
        assert M.coco_to_rle(ours)["counts"] == rle["counts"]


def test_coco_rle_random_counts_match_pycocotools(rng):
    # Arbitrary run lengths, including very long ones and runs that shrink and grow.
    for _ in range(50):
        counts = rng.integers(1, 5000, size=rng.integers(1, 30)).tolist()
        if rng.random() < 0.5:
            counts = [0, *counts]
        total = sum(counts)
        rle = {"size": [1, total], "counts": counts}
        theirs = coco_mask.frPyObjects(rle, 1, total)["counts"].decode("ascii")
        assert M.rle_to_coco(rle)["counts"] == theirs
        assert M.coco_to_rle({"size": [1, total], "counts": theirs})["counts"] == counts


def test_rle_to_mask_rejects_bad_counts():
    with pytest.raises(ValueError, match="sum to 5"):
        M.rle_to_mask({"size": [2, 3], "counts": [2, 3]})


# ----------------------------------------------------------------------------- small regions


def test_small_hole_is_filled():
    mask = np.zeros((20, 20), bool)
    mask[2:18, 2:18] = True
    mask[8:10, 8:10] = False  # hole of 4 px
    mask[12:17, 3:8] = False  # hole of 25 px
    out, changed = M.remove_small_regions(mask, 10, "holes")
    assert changed
    expected = mask.copy()
    expected[8:10, 8:10] = True
    np.testing.assert_array_equal(out, expected)
    # Nothing small: unchanged and the same object.
    out2, changed2 = M.remove_small_regions(expected, 10, "holes")
    assert not changed2 and out2 is expected


def test_small_island_is_removed():
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True  # 64 px
    mask[15:17, 15:17] = True  # 4 px
    out, changed = M.remove_small_regions(mask, 10, "islands")
    assert changed
    expected = np.zeros_like(mask)
    expected[2:10, 2:10] = True
    np.testing.assert_array_equal(out, expected)


def test_small_regions_use_8_connectivity():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True  # 9 px
    mask[5, 5] = True  # touches the block only diagonally: one 10-px island with 8-connectivity
    out, changed = M.remove_small_regions(mask, 10, "islands")
    assert not changed and out is mask  # with 4-connectivity the corner pixel would go
    out, changed = M.remove_small_regions(mask, 11, "islands")
    assert changed  # the only island is small: kept as the largest, but reported as changed
    np.testing.assert_array_equal(out, mask)

    # A diagonal chain of 4 background pixels is one 8-connected region of 4 px.
    diag = np.ones((7, 7), bool)
    for i in range(4):
        diag[i, i] = False
    out, changed = M.remove_small_regions(diag, 4, "holes")
    assert not changed
    out, changed = M.remove_small_regions(diag, 5, "holes")
    assert changed and out.all()


def test_all_islands_small_keeps_largest():
    mask = np.zeros((12, 12), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[5:8, 5:8] = True  # 9 px
    mask[10, 10] = True  # 1 px
    out, changed = M.remove_small_regions(mask, 50, "islands")
    assert changed
    expected = np.zeros_like(mask)
    expected[5:8, 5:8] = True
    np.testing.assert_array_equal(out, expected)


def test_remove_small_regions_bad_mode():
    with pytest.raises(ValueError, match="'both'"):
        M.remove_small_regions(np.zeros((2, 2), bool), 1, "both")


# ----------------------------------------------------------------------------- packaging


def test_masks_and_automatic_import_without_torch():
    # Bypass the package __init__ (which may import torch): only these two modules are checked.
    package_dir = Path(M.__file__).parent
    code = (
        "import sys, types\n"
        "sys.modules['torch'] = None; sys.modules['pycocotools'] = None\n"
        "pkg = types.ModuleType('mobile_sam'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['mobile_sam'] = pkg\n"
        "import mobile_sam.masks, mobile_sam.automatic\n"
        "assert 'scipy.ndimage' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(package_dir)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
