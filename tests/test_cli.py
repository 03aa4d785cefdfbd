"""The `mobile-sam` command: segment, everything and download, end to end.

In-process runs use a tiny-config checkpoint (registered as a variant for the test) so that
they take a fraction of a second; one subprocess run uses a real vit_t checkpoint. Expected
masks come from SamPredictor / SamAutomaticMaskGenerator directly, COCO RLE is decoded with
pycocotools, and nothing touches the network (downloads come from a 127.0.0.1 server).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from conftest import tiny_sam_config
from mobile_sam import build, weights
from mobile_sam.automatic import SamAutomaticMaskGenerator
from mobile_sam.cli import main
from mobile_sam.masks import masks_to_boxes
from mobile_sam.predictor import SamPredictor

REPO = Path(__file__).resolve().parents[1]
BUS = REPO / "examples" / "bus_480x640.png"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def coco_decode(rle: dict) -> np.ndarray:
    with warnings.catch_warnings():
        # pycocotools' decode warns under numpy 2 (its __array__ lacks the copy keyword).
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}) > 0


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def read_mask(path: Path) -> np.ndarray:
    return read_image(path) > 127


def bus() -> Image.Image:
    with Image.open(BUS) as im:
        return im.convert("RGB")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def tiny_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_sam` recognises tiny-config checkpoints, as it does the built-in variants."""
    monkeypatch.setitem(build.VARIANTS, "tiny", tiny_sam_config())
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.asarray(bus())


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint, image) -> SamPredictor:
    """The reference: SamPredictor on the same checkpoint and image."""
    build.VARIANTS["tiny"] = tiny_sam_config()
    try:
        model = build.load_sam(tiny_checkpoint)
    finally:
        del build.VARIANTS["tiny"]
    p = SamPredictor(model)
    p.set_image(image)
    return p


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr); argparse's exits count as codes."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ segment


def test_segment_point(capsys, tiny_checkpoint, predictor, image, tmp_path) -> None:
    code, out, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--model",
                             tiny_checkpoint, "--out", tmp_path)
    assert (code, err) == (0, "")
    assert str(tmp_path / "bus_480x640.json") in out
    expected, scores, _ = predictor.predict(np.array([[240, 400]]), np.array([1]),
                                            multimask_output=False)
    assert expected[0].any() and not expected[0].all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bus_480x640.json", "bus_480x640_mask_0.png", "bus_480x640_overlay.png"]
    np.testing.assert_array_equal(read_mask(tmp_path / "bus_480x640_mask_0.png"), expected[0])

    doc = json.loads((tmp_path / "bus_480x640.json").read_text())
    assert doc["image"] == {"file_name": "bus_480x640.png", "height": 640, "width": 480}
    assert doc["multimask"] is False
    (obj,) = doc["objects"]
    assert obj["prompt"] == {"points": [[240.0, 400.0]], "labels": [1], "box": None}
    assert obj["best"] == 0
    (mask,) = obj["masks"]
    assert mask["file"] == "bus_480x640_mask_0.png"
    np.testing.assert_array_equal(coco_decode(mask["segmentation"]), expected[0])
    assert mask["score"] == pytest.approx(float(scores[0]), abs=1e-6)
    assert mask["box"] == masks_to_boxes(expected)[0].tolist()
    assert mask["area"] == int(expected[0].sum())

    overlay = read_image(tmp_path / "bus_480x640_overlay.png")
    assert overlay.shape == image.shape
    far = ~expected[0]
    far[380:421, 220:261] = False  # the point marker
    np.testing.assert_array_equal(overlay[far], image[far])
    assert (overlay[expected[0]] != image[expected[0]]).any()


def test_segment_several_boxes_in_one_decoder_call(capsys, tiny_checkpoint, predictor, tmp_path,
                                                   monkeypatch) -> None:
    boxes = [(100, 150, 400, 500), (10, 10, 200, 200), (250, 40, 470, 300)]
    calls = []
    predict_torch = SamPredictor.predict_torch

    def counting(self, point_coords, point_labels, boxes=None, *args, **kwargs):
        calls.append(None if boxes is None else boxes.shape[0])
        return predict_torch(self, point_coords, point_labels, boxes, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict_torch", counting)
    argv = ["segment", BUS, "--model", tiny_checkpoint, "--out", tmp_path]
    for box in boxes:
        argv += ["--box", ",".join(map(str, box))]
    code, _, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    assert calls == [3]  # one batched predict_torch call with B = 3 boxes
    doc = json.loads((tmp_path / "bus_480x640.json").read_text())
    assert len(doc["objects"]) == 3
    for i, box in enumerate(boxes):
        expected, score, _ = predictor.predict(box=np.array(box), multimask_output=False)
        written = read_mask(tmp_path / f"bus_480x640_mask_{i}.png")
        assert iou(written, expected[0]) > 0.99
        obj = doc["objects"][i]
        assert obj["prompt"]["box"] == list(map(float, box))
        np.testing.assert_array_equal(coco_decode(obj["masks"][0]["segmentation"]), written)
        assert obj["masks"][0]["score"] == pytest.approx(float(score[0]), abs=1e-4)


def test_segment_multimask_points_and_box(capsys, tiny_checkpoint, predictor, tmp_path) -> None:
    code, _, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--point", "50,60,0",
                           "--box", "100,150,400,500", "--multimask", "--model",
                           tiny_checkpoint, "--out", tmp_path)
    assert (code, err) == (0, "")
    expected, scores, _ = predictor.predict(np.array([[240, 400], [50, 60]]), np.array([1, 0]),
                                            box=np.array([100, 150, 400, 500]))
    doc = json.loads((tmp_path / "bus_480x640.json").read_text())
    assert doc["multimask"] is True
    (obj,) = doc["objects"]
    assert obj["prompt"] == {"points": [[240.0, 400.0], [50.0, 60.0]], "labels": [1, 0],
                             "box": [100.0, 150.0, 400.0, 500.0]}
    assert obj["best"] == int(np.argmax(scores))
    assert len(obj["masks"]) == 3
    for k in range(3):
        written = read_mask(tmp_path / f"bus_480x640_mask_0_{k}.png")
        np.testing.assert_array_equal(written, expected[k])
        assert obj["masks"][k]["file"] == f"bus_480x640_mask_0_{k}.png"
        assert obj["masks"][k]["score"] == pytest.approx(float(scores[k]), abs=1e-6)
        np.testing.assert_array_equal(coco_decode(obj["masks"][k]["segmentation"]), written)


def test_segment_continues_after_a_bad_image(capsys, tiny_checkpoint, tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(BUS, tmp_path / "a" / "bus.png")
    bus().crop((0, 0, 300, 300)).save(tmp_path / "b" / "bus.png")
    missing = tmp_path / "nope.png"
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "a" / "bus.png", missing,
                                tmp_path / "b" / "bus.png", "--point", "100,100", "--model",
                                tiny_checkpoint, "--out", out)
    assert code == 1
    assert error_lines(err) == [f"mobile-sam segment: error: image file not found: {missing}"]
    # Same stem in two folders: the folders are mirrored under --out.
    for sub, size in (("a", (480, 640)), ("b", (300, 300))):
        doc = json.loads((out / sub / "bus.json").read_text())
        assert doc["image"] == {"file_name": f"{sub}/bus.png", "height": size[1], "width": size[0]}
        assert read_image(out / sub / "bus_overlay.png").shape == (*size[::-1], 3)
        assert read_mask(out / sub / "bus_mask_0.png").shape == size[::-1]
    assert stdout.count("mask(s) ->") == 2


def test_output_names_do_not_collide(tmp_path) -> None:
    from mobile_sam.cli._common import output_bases

    images = [tmp_path / "x" / "a.png", tmp_path / "x" / "a.JPG", tmp_path / "x" / "y" / "a.png"]
    assert output_bases(images, tmp_path / "out") == [
        tmp_path / "out" / "a_png", tmp_path / "out" / "a_jpg", tmp_path / "out" / "y" / "a"]
    assert output_bases([Path("rel/img.png")], tmp_path) == [tmp_path / "img"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "12"], ("argument --point: expected X,Y or X,Y,LABEL (pixel coordinates, "
                             "LABEL 1, 0 or -1), got '12'")),
        (["--point", "a,b"], "argument --point: expected X,Y or X,Y,LABEL"),
        (["--point", "1,2,3,4"], "got '1,2,3,4'"),
        (["--point", "1,nan"], ("argument --point: point must be finite numbers (no NaN or "
                                "infinite values), got [[1.0, nan]] (in '1,nan')")),
        (["--point", "10,10,2"], ("argument --point: LABEL must be 1 (foreground), 0 "
                                  "(background) or -1 (ignored), got [2] (in '10,10,2')")),
        (["--point", "10,10,0.5"], "expected X,Y or X,Y,LABEL"),
        (["--box", "1,2,3"], ("argument --box: expected X0,Y0,X1,Y1 (four pixel coordinates), "
                              "got '1,2,3'")),
        (["--box", "50,10,20,40"], ("argument --box: box must be XYXY with x1 >= x0 and "
                                    "y1 >= y0 (top-left corner, then bottom-right), got "
                                    "[50.0, 10.0, 20.0, 40.0] (in '50,10,20,40')")),
        (["--box", "10,40,20,39"], "(in '10,40,20,39')"),
        ([], "give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1"),
        (["--point", "5,5", "--box", "0,0,9,9", "--box", "1,1,8,8"],
         "--point can be combined with one --box only (one object), got 2 boxes"),
    ],
)
def test_segment_usage_errors(capsys, tmp_path, args, message) -> None:
    code, _out, err = run_cli(capsys, "segment", BUS, *args, "--out", tmp_path / "o")
    assert code == 2
    assert message in err
    assert err.splitlines()[-1].startswith("mobile-sam segment: error: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing image", "image file not found: {tmp}/none.png"),
        ("not an image", "cannot read image {tmp}/notes.png: not a recognised image format"),
        ("point outside", ("--point[0] = (481, 10) is outside {bus} of size 480x640 (width x "
                           "height): points must have 0 <= x <= 480 and 0 <= y <= 640")),
        ("box outside", "--box[0] = (500, 0, 600, 100) does not overlap {bus} of size 480x640"),
        ("output parent is a file", ("cannot create output folder {tmp}/file/out: {tmp}/file "
                                     "is a file, not a folder")),
        ("unknown model", "checkpoint 'vit_q' not found"),
        ("not a checkpoint", "{tmp}/notes.png is not a readable PyTorch checkpoint"),
        ("unknown variant", "its keys match none of the known variants"),
        ("incomplete checkpoint", "does not fit model 'tiny': 1 missing keys"),
    ],
)
def test_segment_errors(capsys, tiny_checkpoint, tmp_path, case, message) -> None:
    (tmp_path / "notes.png").write_text("not an image\n")
    (tmp_path / "file").write_text("x")
    image, point, model, out = BUS, ["--point", "10,10"], tiny_checkpoint, tmp_path / "out"
    if case == "missing image":
        image = tmp_path / "none.png"
    elif case == "not an image":
        image = tmp_path / "notes.png"
    elif case == "point outside":
        point = ["--point", "481,10"]
    elif case == "box outside":
        point = ["--box", "500,0,600,100"]
    elif case == "output parent is a file":
        out = tmp_path / "file" / "out"
    elif case == "unknown model":
        model = "vit_q"
    elif case == "not a checkpoint":
        model = tmp_path / "notes.png"
    elif case == "unknown variant":
        model = tmp_path / "other.pt"
        torch.save({"backbone.weight": torch.zeros(3)}, model)
    elif case == "incomplete checkpoint":
        model = tmp_path / "cut.pt"
        state = torch.load(tiny_checkpoint, weights_only=True)
        del state["mask_decoder.iou_token.weight"]
        torch.save(state, model)
    code, stdout, err = run_cli(capsys, "segment", image, *point, "--model", model,
                                "--out", out)
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("mobile-sam segment: error: ")
    assert message.format(tmp=tmp_path, bus=BUS) in lines[0]
    assert "Traceback" not in err and stdout == ""
    if out.is_dir():
        assert list(out.iterdir()) == []


def test_segment_with_a_training_output(capsys, tiny_sam, predictor, tmp_path,
                                        monkeypatch) -> None:
    """--model takes what `mobile_sam.train` writes: the model is built from the file's own
    config, with no variant registered for it."""
    from mobile_sam.train.models import save_model

    monkeypatch.delitem(build.VARIANTS, "tiny")
    path = save_model(tmp_path / "student.pt", tiny_sam, tiny_sam_config())
    assert "config" in torch.load(path, weights_only=True)
    code, _, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--model", path,
                           "--out", tmp_path / "out")
    assert (code, err) == (0, "")
    expected, _, _ = predictor.predict(np.array([[240, 400]]), np.array([1]),
                                       multimask_output=False)
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "bus_480x640_mask_0.png"),
                                  expected[0])


def test_threads_must_be_positive(capsys, tiny_checkpoint, tmp_path) -> None:
    code, out, err = run_cli(capsys, "segment", BUS, "--point", "1,1", "--model", tiny_checkpoint,
                             "--threads", "0", "--out", tmp_path)
    assert (code, out) == (1, "")
    assert error_lines(err) == ["mobile-sam segment: error: --threads must be >= 1, got 0"]


def test_version(capsys) -> None:
    import mobile_sam

    code, out, err = run_cli(capsys, "--version")
    assert (code, out, err) == (0, f"mobile-sam {mobile_sam.__version__}\n", "")


def test_debug_shows_the_traceback(capsys, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint 'vit_q' not found"):
        main(["--debug", "segment", str(BUS), "--point", "1,1", "--model", "vit_q",
              "--out", str(tmp_path)])


@pytest.fixture
def closed_port_urls(monkeypatch, tmp_path) -> tuple[str, Path]:
    """vit_t's URLs point at a 127.0.0.1 port nobody listens on; the cache is empty."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mobile_sam.pt"
    spec = dataclasses.replace(weights.CHECKPOINTS["vit_t"], urls=(url,))
    monkeypatch.setitem(weights.CHECKPOINTS, "vit_t", spec)
    home = tmp_path / "home"
    monkeypatch.setenv("MOBILE_SAM_HOME", str(home))
    return url, home


def test_main_job_offline_is_one_line(capsys, closed_port_urls, tmp_path) -> None:
    """`mobile-sam segment examples/bus_480x640.png --point 240,400 --out out/` offline."""
    url, home = closed_port_urls
    code, out, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--out",
                             tmp_path / "out")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1, err  # no progress bar, no traceback
    assert err.startswith("mobile-sam segment: error: could not download mobile_sam.pt: ")
    assert f"{url}: " in err and "Connection refused" in err
    assert f"save it as {home / 'mobile_sam.pt'}" in err
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("precision, converted", [("fp32", False), ("bf16", True)])
def test_one_image_converts_only_for_a_precision_asked_by_name(
        capsys, tiny_checkpoint, monkeypatch, tmp_path, precision, converted) -> None:
    """One image at fp32 is answered by eager torch without converting (faster than the
    conversion); bf16 or int8 asked for by name is converted first, so the masks written are
    in that precision (eager would give fp32 masks)."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    from mobile_sam.cli._common import conversion_mode

    monkeypatch.delenv("MOBILE_SAM_CONVERSION", raising=False)
    assert conversion_mode("int8", one_shot=True) == conversion_mode("bf16", one_shot=False) == "wait"
    assert conversion_mode("fp32", one_shot=False) is None  # background
    home = tmp_path / "home"
    monkeypatch.setenv("MOBILE_SAM_HOME", str(home))
    code, _, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--model", tiny_checkpoint,
                           "--backend", "openvino", "--precision", precision, "--out", tmp_path / "o")
    assert code == 0, err
    assert any(home.rglob("encoder.onnx")) is converted
    monkeypatch.setenv("MOBILE_SAM_CONVERSION", "background")
    assert conversion_mode("int8", one_shot=True) is None  # the environment decides


# ------------------------------------------------------------------------------ everything


def test_everything_folder_skip_and_overwrite(capsys, tiny_checkpoint, tmp_path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    bus().crop((0, 0, 200, 160)).save(data / "a.png")
    bus().crop((100, 200, 260, 400)).save(data / "sub" / "a.png")
    bus().crop((200, 300, 380, 420)).convert("L").save(data / "sub" / "b.jpg")
    (data / "notes.txt").write_text("ignored: not an image extension")
    out = data / "masks"  # inside the walked folder: must not be read back as input
    options = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
               "0", "--box-nms-thresh", "0.9", "--model", tiny_checkpoint, "--out", out]
    code, stdout, err = run_cli(capsys, "everything", data, *options)
    assert (code, err) == (0, "")
    assert "3 image(s) segmented" in stdout
    jsons = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert jsons == ["a.json", "sub/a.json", "sub/b.json"]

    model = build.load_sam(tiny_checkpoint)
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
        box_nms_thresh=0.9, output_mode="coco_rle")
    for rel, source in [("a", "a.png"), ("sub/a", "sub/a.png"), ("sub/b", "sub/b.jpg")]:
        doc = json.loads((out / f"{rel}.json").read_text())
        rgb = read_image(data / source)
        rgb = np.repeat(rgb[:, :, None], 3, axis=2) if rgb.ndim == 2 else rgb
        h, w = rgb.shape[:2]
        assert doc["image"] == {"file_name": source, "height": h, "width": w}
        expected = generator.generate(rgb)
        assert len(doc["annotations"]) == len(expected) > 0
        for i, (ann, exp) in enumerate(zip(doc["annotations"], expected, strict=True)):
            assert set(ann) == {"id", "segmentation", "area", "bbox", "predicted_iou",
                                "stability_score", "point_coords", "crop_box"}
            assert ann["id"] == i
            mask = coco_decode(ann["segmentation"])
            np.testing.assert_array_equal(mask, coco_decode(exp["segmentation"]))
            assert ann["area"] == int(mask.sum()) == exp["area"]
            assert ann["bbox"] == exp["bbox"] and ann["crop_box"] == [0, 0, w, h]
            assert ann["predicted_iou"] == pytest.approx(exp["predicted_iou"])
            assert ann["point_coords"] == exp["point_coords"]
        assert read_image(out / f"{rel}_overlay.png").shape == (h, w, 3)

    # Second run: everything is done, nothing is rewritten (and the model is not even loaded).
    outputs = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(outputs) == 6
    past = 1_000_000_000
    for p in outputs:
        os.utime(p, ns=(past, past))
    code, stdout, err = run_cli(capsys, "everything", data, *options[:-4], "--model", "vit_q",
                                "--out", out)
    assert (code, err) == (0, "")
    assert "0 image(s) segmented, 3 skipped (outputs exist; --overwrite to redo them)" in stdout
    assert all(p.stat().st_mtime_ns == past for p in outputs)

    # A missing overlay makes its image count as not done.
    (out / "sub" / "b_overlay.png").unlink()
    code, stdout, _ = run_cli(capsys, "everything", data, *options)
    assert code == 0 and "1 image(s) segmented, 2 skipped" in stdout
    assert (out / "sub" / "b_overlay.png").is_file()
    assert (out / "a.json").stat().st_mtime_ns == past

    code, stdout, _ = run_cli(capsys, "everything", data, *options, "--overwrite")
    assert code == 0 and "3 image(s) segmented" in stdout and "skipped" not in stdout
    assert all(p.stat().st_mtime_ns != past for p in outputs)


def test_everything_reports_bad_files_and_continues(capsys, tiny_checkpoint, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bus().crop((0, 0, 64, 64)).save(data / "good.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stdout, err = run_cli(capsys, "everything", data, empty, "--points-per-side", "2",
                                "--model", tiny_checkpoint, "--out", tmp_path / "out")
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 2
    assert lines[0] == (f"mobile-sam everything: error: no images (jpg, jpeg, png, bmp, tif, "
                        f"tiff, webp) found in folder {empty}")
    assert lines[1].startswith(f"mobile-sam everything: error: cannot read image "
                               f"{data / 'broken.jpg'}: ")
    assert "1 image(s) segmented, 2 failed" in stdout
    assert (tmp_path / "out" / "good.json").is_file()  # the empty folder adds no level


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points-per-side", "0"],
         "argument --points-per-side: must be an integer in [1, 256], got '0'"),
        (["--crop-n-layers", "5"], "argument --crop-n-layers: must be an integer in [0, 4]"),
        (["--points-per-side", "4.5"],
         "argument --points-per-side: expected an integer, got '4.5'"),
        (["--pred-iou-thresh", "1.5"],
         "argument --pred-iou-thresh: must be a number in [0, 1], got '1.5'"),
        (["--stability-score-offset", "-1"], "must be a finite number >= 0, got '-1'"),
        (["--min-mask-region-area", "-1"],
         "argument --min-mask-region-area: must be a finite number >= 0"),
        (["--points-per-side", "3", "--crop-n-layers", "2", "--crop-n-points-downscale-factor",
          "2"], "--points-per-side: points_per_side=3 leaves no points in crop layer 2"),
    ],
)
def test_everything_usage_errors(capsys, tmp_path, args, message) -> None:
    code, _, err = run_cli(capsys, "everything", BUS, *args, "--out", tmp_path)
    assert code == 2 and message in err


def test_everything_refuses_out_equal_to_input(capsys, tmp_path) -> None:
    shutil.copy(BUS, tmp_path / "bus.png")
    code, _, err = run_cli(capsys, "everything", tmp_path, "--out", tmp_path)
    assert code == 1
    assert f"the output folder {tmp_path} is also an input folder" in err


# ------------------------------------------------------------------------------ download


class OneFileServer:
    """Serves `payload` at /<name> on 127.0.0.1 (no range support needed here)."""

    def __init__(self, payload: bytes) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_vit_b(monkeypatch, tmp_path):
    """vit_b served from 127.0.0.1 with a small payload; the cache is an empty tmp folder."""
    payload = np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes()
    server = OneFileServer(payload)
    spec = dataclasses.replace(weights.CHECKPOINTS["vit_b"], size=len(payload),
                               sha256=hashlib.sha256(payload).hexdigest(),
                               urls=(f"{server.url}/sam_vit_b_01ec64.pth",))
    monkeypatch.setitem(weights.CHECKPOINTS, "vit_b", spec)
    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path / "home"))
    yield payload, server, tmp_path / "home"
    server.close()


def test_download_list_and_fetch(capsys, fake_vit_b) -> None:
    payload, server, home = fake_vit_b
    code, out, err = run_cli(capsys, "download", "--list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"cache folder: {home}"
    assert lines[1].split() == ["NAME", "VARIANT", "SIZE", "PATH"]
    assert lines[2].split() == ["mobile_sam.pt", "vit_t", "38.8", "MiB", "not", "cached"]
    assert lines[3].split() == ["sam_vit_b_01ec64.pth", "vit_b", "97.7", "KiB", "not", "cached"]
    assert lines[5].split()[:4] == ["sam_vit_h_4b8939.pth", "vit_h", "2.4", "GiB"]
    assert server.requests == []

    code, out, err = run_cli(capsys, "download", "sam_vit_b_01ec64.pth", "--list")
    assert (code, err) == (0, "")
    path = home / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == payload
    assert out.splitlines()[0] == f"sam_vit_b_01ec64.pth (vit_b): {path}"
    assert out.splitlines()[4].split() == [
        "sam_vit_b_01ec64.pth", "vit_b", "97.7", "KiB", str(path)]
    assert server.requests == ["/sam_vit_b_01ec64.pth"]

    # Cached: verified again, not downloaded again.
    code, out, _ = run_cli(capsys, "download", "vit_b")
    assert code == 0 and out == f"sam_vit_b_01ec64.pth (vit_b): {path}\n"
    assert len(server.requests) == 1


def test_download_failure_is_one_line(capsys, fake_vit_b, closed_port_urls) -> None:
    _payload, _server, home = fake_vit_b
    url, _ = closed_port_urls
    code, out, err = run_cli(capsys, "download", "vit_t", "vit_b")
    assert code == 1  # vit_t fails, vit_b is still fetched
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("mobile-sam download: error: could not "
                                                   "download mobile_sam.pt: ")
    assert url in lines[0] and str(home / "mobile_sam.pt") in lines[0]
    assert out == f"sam_vit_b_01ec64.pth (vit_b): {home / 'sam_vit_b_01ec64.pth'}\n"


def test_download_unknown_name(capsys) -> None:
    code, _, err = run_cli(capsys, "download", "vit_q")
    assert code == 2
    assert "argument NAME: unknown checkpoint 'vit_q'; known names: vit_t, mobile_sam.pt" in err


# ------------------------------------------------------------------------------ subprocess


@pytest.mark.slow
def test_python_m_and_console_script(tmp_path) -> None:
    """`python -m mobile_sam segment` with a real vit_t checkpoint, and the installed
    `mobile-sam` script: exit codes and outputs as in-process."""
    torch.manual_seed(0)
    model = build.build_sam("vit_t")
    checkpoint = tmp_path / "vit_t_random.pt"
    torch.save(model.state_dict(), checkpoint)
    env = {**os.environ, "MOBILE_SAM_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "mobile_sam", "segment", str(BUS), "--point", "240,400",
         "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--threads", "2"],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    predictor = SamPredictor(model)
    predictor.set_image(np.asarray(bus()))
    expected, _, _ = predictor.predict(np.array([[240, 400]]), np.array([1]),
                                       multimask_output=False)
    assert expected[0].any() and not expected[0].all()
    # The same mask up to float rounding: with random weights many logits sit next to the
    # threshold, and two processes may round the last bit differently (seen once in CI: 4 of
    # 307200 pixels). A wrong prompt or frame would differ in thousands.
    got = read_mask(tmp_path / "out" / "bus_480x640_mask_0.png")
    assert got.shape == expected[0].shape
    assert (got != expected[0]).sum() <= 1e-4 * got.size

    script = Path(sys.executable).with_name("mobile-sam")
    assert script.is_file(), f"console script not installed at {script}"
    listed = subprocess.run([str(script), "download", "--list"], check=False,
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and listed.stderr == ""
    assert f"cache folder: {tmp_path / 'home'}" in listed.stdout
    usage = subprocess.run([str(script), "segment", str(BUS), "--point", "1"], check=False,
                           capture_output=True, text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "argument --point" in usage.stderr
    missing = subprocess.run([str(script), "segment", str(tmp_path / "no.png"), "--point", "1,1",
                              "--out", str(tmp_path / "o2")], check=False,
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr == (
        f"mobile-sam segment: error: image file not found: {tmp_path / 'no.png'}\n")


def test_backend_switch_reaches_the_predictor(capsys, tiny_checkpoint, predictor, tmp_path) -> None:
    """--backend/--precision choose where the model runs; the masks agree with torch."""
    backend = "openvino" if importlib.util.find_spec("openvino") else "torch"
    code, _, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--model",
                           tiny_checkpoint, "--out", tmp_path, "--backend", backend)
    assert code == 0, err
    assert all("once (cached in" in line for line in err.splitlines())  # one-time conversion notes
    expected, _, _ = predictor.predict(np.array([[240, 400]]), np.array([1]), multimask_output=False)
    got = read_mask(tmp_path / "bus_480x640_mask_0.png")
    assert (got & expected[0]).sum() / max((got | expected[0]).sum(), 1) >= 0.99
    code, stdout, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--model",
                                tiny_checkpoint, "--out", tmp_path / "b", "--backend", "torch",
                                "--precision", "int8")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and stdout == ""
    assert "precision 'int8' is not available on backend 'torch'" in lines[0]
    code, _, err = run_cli(capsys, "everything", BUS, "--backend", "tensorrt")
    assert code == 2 and "invalid choice: 'tensorrt'" in err


# ------------------------------------------------------------------------------ datasets


def decode_annotations(doc: dict) -> list[np.ndarray]:
    return [coco_decode(a["segmentation"]) for a in doc["annotations"]]


def yolo_masks(path: Path, h: int, w: int) -> list[np.ndarray]:
    import cv2

    masks = []
    for line in path.read_text().splitlines():
        cls, *values = line.split()
        assert cls == "0" and all(0 <= float(v) <= 1 for v in values)
        xy = np.asarray(values, dtype=np.float64).reshape(-1, 2) * [w, h]
        filled = np.zeros((h, w), np.uint8)
        cv2.fillPoly(filled, [np.round(xy).astype(np.int32)], 1)
        masks.append(filled > 0)
    return masks


@pytest.fixture
def folder(tmp_path) -> Path:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    bus().crop((0, 0, 200, 160)).save(data / "a.png")
    bus().crop((200, 300, 380, 420)).save(data / "sub" / "b.png")
    return data


EVERYTHING_FAST = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
                   "0", "--box-nms-thresh", "0.9"]


def test_everything_coco_dataset_loads_in_pycocotools(capsys, tiny_checkpoint, folder,
                                                      tmp_path) -> None:
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    argv = ["everything", folder, *EVERYTHING_FAST, "--model", tiny_checkpoint, "--out", out,
            "--format", "coco", "--label", "thing"]
    code, stdout, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    path = out / "coco" / "annotations.json"
    assert f"coco dataset -> {path}" in stdout
    first = json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        coco = COCO(str(path))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["thing"]
        images = coco.loadImgs(coco.getImgIds())
        assert [(i["file_name"], i["height"], i["width"]) for i in images] == [
            ("a.png", 160, 200), ("sub/b.png", 120, 180)]
        for image, rel in zip(images, ["a", "sub/b"], strict=True):
            per_image = json.loads((out / f"{rel}.json").read_text())  # the run's own output
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert len(anns) == len(per_image["annotations"]) > 0
            for ann, mask in zip(anns, decode_annotations(per_image), strict=True):
                np.testing.assert_array_equal(coco.annToMask(ann) > 0, mask)
                assert ann["area"] == mask.sum() and ann["category_id"] == 1
    # A second run skips the done images but its dataset still holds them (read back).
    code, stdout, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "") and "2 skipped" in stdout
    second = json.loads(path.read_text())
    for ann in first["annotations"] + second["annotations"]:
        ann.pop("score")
    assert second == first


def test_everything_yolo_and_labelme_datasets(capsys, tiny_checkpoint, folder, tmp_path) -> None:
    out = tmp_path / "out"
    for fmt in ("yolo", "labelme"):
        code, _, err = run_cli(capsys, "everything", folder, *EVERYTHING_FAST, "--model",
                               tiny_checkpoint, "--out", out, "--format", fmt, "--tolerance", "0")
        assert (code, err) == (0, "")
    assert (out / "yolo" / "classes.txt").read_text() == "object\n"
    for rel, source in [("a", "a.png"), ("sub/b", "sub/b.png")]:
        per_image = json.loads((out / f"{rel}.json").read_text())
        masks = decode_annotations(per_image)
        h, w = masks[0].shape
        yolo = yolo_masks(out / "yolo" / f"{rel}.txt", h, w)
        assert len(yolo) == len(masks)
        for got, mask in zip(yolo, masks, strict=True):
            assert got[mask].mean() > 0.95  # the polygon covers the mask (holes filled)
        labelme = json.loads((out / "labelme" / f"{rel}.json").read_text())
        image_path = (out / "labelme" / rel).parent / labelme["imagePath"]
        assert image_path.resolve() == (folder / source).resolve()
        assert (labelme["imageHeight"], labelme["imageWidth"]) == (h, w)
        assert {s["label"] for s in labelme["shapes"]} == {"object"}
        assert len(labelme["shapes"]) >= len(masks)  # one shape per part


def test_segment_dataset_keeps_the_best_mask_per_object(capsys, tiny_checkpoint, predictor,
                                                         tmp_path) -> None:
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "segment", BUS, "--box", "100,150,400,500", "--box",
                                "10,10,200,200", "--multimask", "--label", "car", "--format",
                                "coco", "--model", tiny_checkpoint, "--out", out)
    assert (code, err) == (0, "")
    doc = json.loads((out / "bus_480x640.json").read_text())
    dataset = json.loads((out / "coco" / "annotations.json").read_text())
    assert dataset["categories"] == [{"id": 1, "name": "car", "supercategory": ""}]
    assert dataset["images"] == [{"id": 1, "file_name": "bus_480x640.png", "height": 640,
                                  "width": 480}]
    assert len(dataset["annotations"]) == 2  # one per object, not 3 candidates each
    for ann, obj in zip(dataset["annotations"], doc["objects"], strict=True):
        best = read_mask(out / obj["masks"][obj["best"]]["file"])
        np.testing.assert_array_equal(coco_decode(ann["segmentation"]), best)
        assert ann["score"] == pytest.approx(obj["masks"][obj["best"]]["score"], abs=1e-6)

    code, _, err = run_cli(capsys, "segment", BUS, "--point", "240,400", "--format", "yolo",
                           "--model", tiny_checkpoint, "--out", out)
    assert (code, err) == (0, "")
    assert (out / "yolo" / "classes.txt").read_text() == "object\n"
    (line,) = (out / "yolo" / "bus_480x640.txt").read_text().splitlines()
    assert line.startswith("0 ")


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "voc"], "argument --format: invalid choice: 'voc'"),
    (["--format", "yolo", "--segmentation", "polygon"], "--segmentation applies to --format coco only"),
    (["--format", "coco", "--tolerance", "-1"], "argument --tolerance: expected a number of pixels >= 0, got '-1'"),
    (["--format", "coco", "--label", ""], "argument --label: expected a non-empty one-line name"),
])
def test_dataset_usage_errors(capsys, tmp_path, args, message) -> None:
    for command in (["segment", BUS, "--point", "1,1"], ["everything", BUS]):
        code, _, err = run_cli(capsys, *command, *args, "--out", tmp_path / "out")
        assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_everything_removes_temporaries_of_a_killed_run(capsys, tiny_checkpoint,
                                                       tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that no longer runs
    stale = out / f".a.json.{dead_pid}-0123456789ab.tmp"
    stale.write_text('{"annotations": [')
    bus().crop((0, 0, 64, 48)).save(tmp_path / "a.png")
    code, stdout, err = run_cli(capsys, "everything", tmp_path / "a.png", "--out", out,
                                "--points-per-side", "2", "--model", tiny_checkpoint)
    assert (code, err) == (0, "")
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_overlay.png"]
