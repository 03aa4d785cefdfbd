"""COCO annotations: decoding (polygons, RLE, crowd), and ground-truth evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_train_support import make_coco, save_tiny, tiny_teacher_config


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from mobile_sam.train.models import load_any

    root = tmp_path_factory.mktemp("coco")
    path, truth = make_coco(root, 3, seed=1)
    teacher_path = save_tiny(root / "teacher.pt", tiny_teacher_config(), seed=1)
    return {"root": root, "json": path, "truth": truth, "teacher_path": teacher_path,
            "teacher": load_any(teacher_path)}


def test_objects_decode_polygons_and_rle_and_skip_crowds(coco):
    from mobile_sam.train.coco import CocoDataset

    data = CocoDataset(coco["json"], coco["root"] / "images")
    assert [it.rel for it in data.items] == sorted(coco["truth"]) and data.crowd == 3
    for item in data.items:
        objects = data.objects(item)
        assert len(objects) == 2
        rect, ellipse = coco["truth"][item.rel]
        # The rectangle polygon's corners are pixel centres: Pillow fills them inclusively.
        assert np.array_equal(objects[0].mask, rect)
        assert np.array_equal(objects[1].mask, ellipse)  # RLE is exact
        ys, xs = np.nonzero(rect)
        assert objects[0].box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_polygon_rasterising_agrees_with_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    from mobile_sam.masks import coco_to_mask
    from mobile_sam.train.coco import decode_segmentation
    from mobile_sam.train.evaluate import mask_iou

    h, w = 120, 160
    polys = [[[10.5, 12.2, 90.3, 20.0, 70.0, 100.7, 15.0, 80.0]],  # a quadrilateral
             [[100, 10, 150, 60, 125, 110, 100, 60, 110, 40]]]  # a concave pentagon
    for poly in polys:
        ours = decode_segmentation(poly, h, w)
        theirs = coco_to_mask(mask_api.merge(mask_api.frPyObjects(poly, h, w)))
        # Edge pixels may go either way; the interiors agree.
        assert mask_iou(ours, theirs) > 0.93, mask_iou(ours, theirs)


def test_bad_coco_files_are_named(coco, tmp_path):
    from mobile_sam.train.coco import CocoDataset, decode_segmentation

    doc = json.loads(coco["json"].read_text())
    images = coco["root"] / "images"
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDataset(tmp_path / "nope.json", images)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json is not a COCO annotation file"):
        CocoDataset(tmp_path / "list.json", images)
    bad = {**doc, "annotations": doc["annotations"] + [{"image_id": 99, "segmentation": []}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="refers to image_id 99"):
        CocoDataset(tmp_path / "bad.json", images)
    with pytest.raises(FileNotFoundError, match="3 of the 3 annotated images are missing"):
        CocoDataset(coco["json"], tmp_path)
    data = CocoDataset(coco["json"], images)
    with pytest.raises(ValueError, match="is 10x10 but .* says"):
        data.objects(data.items[0], (10, 10))
    with pytest.raises(ValueError, match="RLE size"):
        decode_segmentation({"size": [3, 3], "counts": [9]}, 4, 4)
    with pytest.raises(ValueError, match=">= 3 .x, y. pairs"):
        decode_segmentation([[1, 2, 3, 4]], 4, 4)


def _settings(prompts="box,center,point"):
    from mobile_sam.train.evaluate import EvalSettings, parse_prompts

    return EvalSettings(prompts=tuple(parse_prompts(prompts)), reference="annotations",
                        max_masks=None)


def test_ground_truth_scores_match_an_independent_computation(coco):
    """gt_iou is the IoU of the model's own prediction (SamPredictor, same prompt) with the
    drawn mask; box prompts are the annotation's bbox; center prompts the shapes' centres."""
    from mobile_sam.predictor import SamPredictor
    from mobile_sam.train.coco import CocoDataset
    from mobile_sam.train.data import read_image
    from mobile_sam.train.evaluate import evaluate, mask_iou

    data = CocoDataset(coco["json"], coco["root"] / "images")
    model = coco["teacher"].model
    report = evaluate(model, model, data.items, _settings(), annotations=data, progress=False)
    assert len(report.rows) == 3 * 2 * 3
    predictor = SamPredictor(model, backend="torch")
    for row in report.rows[:12]:
        rgb, _ = read_image(coco["root"] / "images" / row["image"])
        predictor.set_image(rgb)
        gt = coco["truth"][row["image"]][row["mask"]]
        if row["prompt"] == "box":
            box = np.array([float(v) for v in row["box"].split(",")])
            ys, xs = np.nonzero(gt)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            masks, _, _ = predictor.predict(box=box, multimask_output=False)
            mask = masks[0]
        else:
            x, y = (float(v) for v in row["points"].split(","))
            assert gt[int(y), int(x)]
            if row["prompt"] == "center" and row["mask"] == 0:  # the rectangle's centre
                assert abs(x - (xs.min() + xs.max()) / 2) <= 0.5
                assert abs(y - (ys.min() + ys.max()) / 2) <= 0.5
            masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]]),
                                                 point_labels=np.array([1]))
            mask = masks[int(np.argmax(scores))]
        assert row["gt_iou"] == pytest.approx(mask_iou(mask, gt))
        assert row["iou"] == 1.0 and row["teacher_gt_iou"] == row["gt_iou"]
    summary = report.summary()
    for name, s in summary.items():
        rows = [r["gt_iou"] for r in report.rows if r["prompt"] == name]
        assert s["gt_miou"] == pytest.approx(np.mean(rows)) and s["miou"] == 1.0

    alone = evaluate(model, None, data.items, _settings("box"), annotations=data,
                     progress=False).summary()["box"]
    assert alone["gt_miou"] == pytest.approx(summary["box"]["gt_miou"])
    assert alone["miou"] is None and alone["teacher_gt_miou"] is None


def test_cli_eval_against_annotations(coco, tmp_path, capsys):
    from mobile_sam.cli import main

    args = ["eval", "--student", str(coco["teacher_path"]), "--teacher", "none",
            "--images", str(coco["root"] / "images"), "--annotations", str(coco["json"]),
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "GT mIoU" in out and "6 reference masks" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["summary"]) == ["box", "center"]
    assert summary["annotations"] == str(coco["json"]) and "teacher" not in summary
    gt = summary["summary"]["box"]["gt_miou"]
    assert f"{gt:.4f}" in out and summary["summary"]["box"]["miou"] is None
    assert main(["eval", "--student", str(coco["teacher_path"]), "--teacher", "none",
                 "--images", str(coco["root"] / "images")]) == 1
    assert "--teacher none needs ground-truth references" in capsys.readouterr().err
