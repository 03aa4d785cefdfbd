"""Student-vs-teacher evaluation: self gives 1.0, a random student clearly less, seeded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_sam_config
from test_train_support import make_images, save_tiny, tiny_teacher_config

PROMPTS = "point,point2@40,box"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mobile_sam.train.models import load_any

    root = tmp_path_factory.mktemp("eval")
    make_images(root / "images", 3, seed=4, broken=True)
    teacher_path = save_tiny(root / "teacher.pt", tiny_teacher_config(), seed=1)
    teacher = load_any(teacher_path)
    # An undistilled student: random TinyViT encoder, the teacher's prompt encoder and decoder.
    student_path = save_tiny(root / "student.pt", tiny_sam_config(), seed=2,
                             decoder_from=teacher.model)
    return {"root": root, "teacher": teacher, "teacher_path": teacher_path,
            "student": load_any(student_path), "student_path": student_path}


def _settings(**kw):
    from mobile_sam.train.evaluate import EvalSettings, parse_prompts

    # The random tiny teacher's masks barely depend on the seed point: keep near-duplicates.
    return EvalSettings(**{"prompts": tuple(parse_prompts(PROMPTS)), "grid": 3, "max_masks": 3,
                           "dedupe_iou": 0.99, **kw})


def _items(setup):
    from mobile_sam.train.data import list_images

    return list_images(setup["root"] / "images")


def test_teacher_against_itself_scores_one_and_random_student_less(setup):
    from mobile_sam.train.evaluate import evaluate
    from mobile_sam.train.models import load_any

    items = _items(setup)
    skipped: list[str] = []
    again = load_any(setup["teacher_path"]).model  # a second copy, not the same object
    same = evaluate(again, setup["teacher"].model, items, _settings(), progress=False,
                    warn=skipped.append)
    assert [s["image"] for s in same.skipped] == ["broken.png"] and "broken.png" in skipped[0]
    summary = same.summary()
    assert all(s["pairs"] == 9 and s["miou"] == 1.0 for s in summary.values()), summary

    rand = evaluate(setup["student"].model, setup["teacher"].model, items, _settings(),
                    progress=False, warn=skipped.append).summary()
    assert [r["pairs"] for r in rand.values()] == [s["pairs"] for s in summary.values()]
    assert all(r["miou"] < 0.75 for r in rand.values()), rand


def test_cli_eval_writes_reproducible_reports(setup, tmp_path, capsys):
    from mobile_sam.cli import main

    def run(out, seed):
        args = ["eval", "--student", str(setup["student_path"]), "--teacher",
                str(setup["teacher_path"]), "--images", str(setup["root"] / "images"),
                "--prompts", PROMPTS, "--grid", "2", "--max-masks", "3", "--seed", str(seed),
                "--device", "cpu", "--no-progress", "--out", str(out)]
        assert main(args) == 0
        return capsys.readouterr()

    first = run(tmp_path / "a", 0)
    assert "point2@40" in first.out and "mIoU" in first.out and "broken.png" in first.err
    run(tmp_path / "b", 0)
    a = (tmp_path / "a" / "per_mask.csv").read_text()
    assert a == (tmp_path / "b" / "per_mask.csv").read_text()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert list(summary["summary"]) == ["point", "point2@40", "box"]
    assert summary["skipped"][0]["image"] == "broken.png"
    assert summary["teacher"]["sha256"] == setup["teacher"].sha256
    rows = (tmp_path / "a" / "per_image.csv").read_text().splitlines()
    assert rows[0] == "image,height,width,masks,miou_point,miou_point2@40,miou_box"
    assert len(rows) == 1 + 3
    # The printed table and the CSV agree.
    lines = a.splitlines()[1:]
    ious = [float(line.split(",")[4]) for line in lines if ",point," in line]
    assert f"{np.mean(ious):.4f}" in first.out
    assert (tmp_path / "a" / "iou_histogram.png").stat().st_size > 1000


def test_sa1b_annotations_as_reference(setup, tmp_path):
    from PIL import Image

    from mobile_sam.masks import mask_to_rle, rle_to_coco
    from mobile_sam.train.data import list_images
    from mobile_sam.train.evaluate import evaluate

    folder = tmp_path / "sa1b"
    make_images(folder, 2, seed=7)
    for item in list_images(folder):
        h, w = np.asarray(Image.open(item.path)).shape[:2]
        masks = np.zeros((2, h, w), bool)
        masks[0, 10:60, 20:90] = True
        masks[1, h // 2:, w // 2:] = True
        anns = [{"segmentation": rle_to_coco(r)} for r in mask_to_rle(masks)]
        item.path.with_suffix(".json").write_text(json.dumps({"annotations": anns}))
    report = evaluate(setup["teacher"].model, setup["teacher"].model, list_images(folder),
                      _settings(reference="annotations", grid=1), progress=False)
    assert [i["masks"] for i in report.images] == [2, 2]
    assert all(s["pairs"] == 4 and s["miou"] == 1.0 for s in report.summary().values())
    with pytest.raises(ValueError, match="has no SA-1B JSON"):
        evaluate(setup["teacher"].model, setup["teacher"].model, _items(setup),
                 _settings(reference="annotations"), progress=False, warn=lambda m: None)


def test_sample_prompt_geometry():
    from mobile_sam.train.evaluate import PromptSpec, mask_iou, sample_prompt

    mask = np.zeros((200, 300), bool)
    mask[20:180, 30:250] = True
    for i in range(20):
        key = (0, 3, i)
        one = sample_prompt(mask, PromptSpec("point"), key)
        x, y = one["point_coords"][0].astype(int)
        assert mask[y, x] and one["multimask_output"]
        p = sample_prompt(mask, PromptSpec("point2", 100.0), key)
        (x0, y0), (x1, y1) = p["point_coords"].astype(int)
        # The two-point prompt starts from the one-point prompt's point.
        assert (x0, y0) == (x, y)
        assert mask[y0, x0] and mask[y1, x1] and not p["multimask_output"]
        assert 95 <= p["distance"] <= 105
        assert p["distance"] == pytest.approx(np.hypot(x1 - x0, y1 - y0))
        assert sample_prompt(mask, PromptSpec("point2", 50.0), key)["point_coords"][0].tolist() \
            == [x, y]
    firsts = {tuple(sample_prompt(mask, PromptSpec("point"), (0, 3, i))["point_coords"][0])
              for i in range(20)}
    assert len(firsts) > 15  # the key changes the draw
    assert sample_prompt(mask, PromptSpec("box"), (0,))["box"].tolist() == [30, 20, 249, 179]
    # No pixel at the asked distance: the farthest one available.
    small = np.zeros((50, 50), bool)
    small[10:14, 10:14] = True
    p = sample_prompt(small, PromptSpec("point2", 500.0), (1,))
    assert p["distance"] == pytest.approx(np.hypot(3, 3), abs=1.5)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert mask_iou(mask, ~mask) == 0.0


def test_center_point_is_farthest_from_the_boundary():
    from mobile_sam.train.evaluate import PromptSpec, center_point, sample_prompt

    mask = np.zeros((200, 300), bool)
    mask[20:181, 30:251] = True  # 161 x 221: centre (140, 100)
    assert center_point(mask) == (140, 100)
    # An L shape: the thick arm wins, away from the corner where the arms meet.
    ell = np.zeros((100, 100), bool)
    ell[0:100, 0:40] = True
    ell[60:100, 0:100] = True
    x, y = center_point(ell)
    assert ell[y, x] and min(x, 39 - x) >= 15 and 40 <= y <= 80
    # A mask touching the image border: the border counts as boundary.
    edge = np.zeros((50, 50), bool)
    edge[:, :21] = True
    assert center_point(edge)[0] == 10
    p = sample_prompt(mask, PromptSpec("center"), (0,))
    assert p["point_coords"].tolist() == [[140, 100]] and p["multimask_output"]


def test_parse_prompts():
    from mobile_sam.train.evaluate import parse_prompts

    assert [p.name for p in parse_prompts("point, point2@100,center,box")] == [
        "point", "point2@100", "center", "box"]
    with pytest.raises(ValueError, match="unknown prompt type 'mask'"):
        parse_prompts("point,mask")
    with pytest.raises(ValueError, match="positive pixel distance"):
        parse_prompts("point2@-3")
    with pytest.raises(ValueError, match="twice"):
        parse_prompts("box,box")
