"""ONNX export and the torch-free runtime.

The fixture checkpoint is exported once per session through the CLI (with int8); the runtime
replays every recorded call of the golden fixture (tests/data/fixture_a) and the automatic
generator's run against the golden outputs. A tiny-config model (exported in a second) covers prompt
combinations against SamPredictor, the decoder options, other opsets and the error paths.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import BLOCK_TORCH
from mobile_sam import masks as M
from mobile_sam.automatic import SamAutomaticMaskGenerator
from mobile_sam.cli import main
from mobile_sam.io import OutputWriteError
from mobile_sam.onnx import OnnxDecoder, OnnxModelError, OnnxPredictor, load_model_info
from mobile_sam.onnx import export as E
from mobile_sam.onnx import runtime as R
from mobile_sam.predictor import SamPredictor
from mobile_sam.transforms import get_preprocess_shape

IMAGES = ["truck_640x427", "dog_517x333", "groceries_gray_600x400"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def exported(fixture_checkpoint, reference_dir, tmp_path_factory) -> Path:
    """The fixture checkpoint exported once, through `mobile-sam export` with int8."""
    out = tmp_path_factory.mktemp("onnx") / "vit_t"
    photos = [reference_dir / "fixture_a" / f"{name}.png" for name in IMAGES]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", "--model", str(fixture_checkpoint), "--out", str(out),
                     "--quantize", "int8", "--eval-images", *map(str, photos), "--threads", "2"])
    assert code == 0
    (out.parent / "export_stdout.txt").write_text(printed.getvalue())
    return out


@pytest.fixture(scope="session")
def fixture_data(reference_dir, golden_arrays):
    root = reference_dir / "fixture_a"
    prompts = json.loads((root / "prompts.json").read_text())
    images = {info["name"]: np.asarray(Image.open(root / info["file"]).convert("RGB"))
              for info in prompts["images"]}
    return prompts, golden_arrays, images


@pytest.fixture(scope="session")
def onnx_predictor(exported) -> OnnxPredictor:
    return OnnxPredictor(exported, threads=2)


@pytest.fixture(scope="session")
def tiny_exported(tiny_sam, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    E.export_onnx(tiny_sam, out)
    return out


@pytest.fixture(scope="session")
def tiny_image() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8))
                        .resize((150, 97), Image.BILINEAR))
    return smooth


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(-1, -2))
    union = (a | b).sum(axis=(-1, -2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def care_iou(got: np.ndarray, want: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """IoU per mask ignoring pixels whose reference logit is within 2e-2 of 0 (FACTS.md)."""
    care = np.abs(logits) >= 2e-2
    return mask_iou(got & care, want & care)


def without(folder: Path, dest: Path, **changes) -> Path:
    """A copy of an export folder (files symlinked) with model.json's "files" changed."""
    dest.mkdir()
    for item in folder.iterdir():
        if item.suffix == ".onnx":
            (dest / item.name).symlink_to(item)
    info = load_model_info(folder)
    info["files"].update(changes)
    (dest / "model.json").write_text(json.dumps(info))
    return dest


# ----------------------------------------------------------------------------- export


@pytest.mark.slow
def test_export_writes_checked_files_and_description(exported, fixture_checkpoint):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["decoder.onnx", "decoder_lowres.onnx", "encoder.onnx",
                     "encoder_int8.onnx", "model.json", "upscale.onnx"]  # no temp leftovers
    for name in names:
        if name.endswith(".onnx"):
            onnx.checker.check_model(str(exported / name), full_check=True)
    info = load_model_info(exported)
    sha = hashlib.sha256(fixture_checkpoint.read_bytes()).hexdigest()
    assert info["source_checkpoint"] == {"file": "checkpoint.pt", "sha256": sha}
    assert info["variant"] == "vit_t" and info["image_size"] == 1024 and info["opset"] == 17
    assert info["pixel_mean"] == [123.675, 116.28, 103.53]
    assert info["pixel_std"] == [58.395, 57.12, 57.375]
    assert info["embedding_shape"] == [256, 64, 64] and info["mask_input_size"] == [256, 256]
    assert info["decoder_options"] == {"single_mask": False, "stability_score": False}

    def interface(name):
        graph = onnx.load(str(exported / name), load_external_data=False).graph
        return ([(v.name, v.type.tensor_type.elem_type) for v in graph.input],
                [v.name for v in graph.output])

    f32 = onnx.TensorProto.FLOAT
    assert interface("encoder.onnx") == ([("image", f32)], ["image_embeddings"])
    assert interface("decoder.onnx") == (
        [(n, f32) for n in ("image_embeddings", "point_coords", "point_labels", "mask_input",
                            "has_mask_input", "orig_im_size")],
        ["masks", "iou_predictions", "low_res_masks"])
    # The int8 report: measured on the three photos, printed and recorded.
    report = info["int8"]
    assert report["images"] == 3 and report["num_masks"] == 3 * 16 * 3
    assert 0.9 <= report["mask_iou_mean"] <= 1.0 and report["mask_iou_min"] <= report["mask_iou_mean"]
    assert report["encoder_speedup"] == pytest.approx(
        report["encoder_fp32_s"] / report["encoder_int8_s"])
    printed = (exported.parent / "export_stdout.txt").read_text()
    assert (f"int8 encoder: mask IoU vs fp32 mean {report['mask_iou_mean']:.4f}, min "
            f"{report['mask_iou_min']:.4f} over 144 masks") in printed
    assert f"(x{report['encoder_speedup']:.2f}, 2 threads)" in printed


@pytest.mark.slow
def test_int8_encoder_is_close_to_fp32(exported, onnx_predictor, fixture_data):
    _, golden, images = fixture_data
    int8 = OnnxPredictor(exported, precision="int8", threads=2)
    int8.set_image(images["dog_517x333"])
    want = golden["dog_517x333/embedding"]
    got = int8.get_image_embedding()
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 1e-4 < rel < 0.15  # quantized (not the fp32 file), yet close
    masks, _, _ = int8.predict(np.array([[217.25, 183.25]]), np.array([1]))
    assert mask_iou(masks, golden["dog_517x333/point_multi/masks"]).mean() > 0.8


def test_preprocess_shape_graph_matches_transforms():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([
        np.stack(np.meshgrid(np.arange(1, 400), np.arange(1, 400)), -1).reshape(-1, 2),
        rng.integers(1, 8193, (20000, 2)),
    ])
    got = E.preprocess_shape(torch.as_tensor(sizes, dtype=torch.float32), 1024).numpy()
    want = np.array([get_preprocess_shape(int(h), int(w), 1024) for h, w in sizes])
    np.testing.assert_array_equal(got, want)


def test_stability_graph_matches_masks_module(rng):
    logits = rng.normal(0, 2, (5, 40, 30)).astype(np.float32)
    logits[0] = 3.0  # all stable
    got = E.stability_score_graph(torch.from_numpy(logits), 0.0, 1.0).numpy()
    np.testing.assert_array_equal(got, M.stability_score(logits, 0.0, 1.0))


@pytest.mark.slow
def test_upscale_graph_is_postprocess_masks(onnx_predictor, fixture_model, rng):
    """upscale.onnx (exported for other tools) computes Sam.postprocess_masks."""
    session = R.create_session(onnx_predictor.folder / "upscale.onnx", 2)
    low = rng.normal(0, 5, (3, 256, 256)).astype(np.float32)
    for size in [(333, 517), (1, 1), (1500, 7)]:
        got = session.run(["masks"], {"low_res_masks": low[None],
                                      "orig_im_size": np.array(size, np.float32)})[0][0]
        input_size = get_preprocess_shape(*size, 1024)
        want = fixture_model.postprocess_masks(torch.from_numpy(low)[None], input_size, size)[0]
        np.testing.assert_allclose(got, want.numpy(), atol=2e-3, rtol=0)  # float rounding


def test_runtime_upscales_as_the_torch_predictor(onnx_predictor, fixture_model, rng):
    low = rng.normal(0, 5, (3, 256, 256)).astype(np.float32)
    image = np.zeros((333, 517, 3), np.uint8)
    onnx_predictor.set_image(image)
    torch_predictor = SamPredictor(fixture_model, backend="torch")
    torch_predictor.set_image_embedding(torch.from_numpy(onnx_predictor.get_image_embedding()),
                                        (333, 517), onnx_predictor.input_size)
    np.testing.assert_array_equal(onnx_predictor.upscale_logits(low),
                                  torch_predictor.upscale_logits(low))
    onnx_predictor.reset_image()


# ----------------------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("image_name", IMAGES)
def test_replay_fixture(onnx_predictor, fixture_data, image_name):
    prompts, golden, images = fixture_data
    predictor = onnx_predictor
    predictor.set_image(images[image_name])
    info = next(i for i in prompts["images"] if i["name"] == image_name)
    assert predictor.input_size == tuple(info["input_size"])
    assert predictor.original_size == (info["height"], info["width"])
    for call in (c for c in prompts["calls"] if c["image"] == image_name):
        what = call["id"]
        if call["api"] == "get_image_embedding":
            if golden[what] is not None:  # None: left out of tests/data (see its README)
                diff = np.abs(predictor.get_image_embedding() - golden[what]).max()
                assert diff <= 2e-3, f"{what}: embedding max-abs {diff}"
            continue
        args, out = call["args"], call["outputs"]
        if call["api"] == "predict":
            mask_input = None
            if "mask_input" in args:
                ref = args["mask_input"]
                mask_input = golden[ref["npz_key"]][ref["index"]][None]
            get = lambda key, args=args: np.array(args[key]) if key in args else None
            results = [predictor.predict(get("point_coords"), get("point_labels"), get("box"),
                                         mask_input, args["multimask_output"],
                                         args["return_logits"])]
            wants = [tuple(golden[out[k]] for k in ("masks", "iou_predictions", "low_res_logits"))]
        else:  # predict_torch with several boxes: one box at a time
            results = [predictor.predict(box=np.array(b), multimask_output=args["multimask_output"])
                       for b in args["boxes"]]
            wants = [tuple(golden[out[k]][i] for k in ("masks", "iou_predictions", "low_res_logits"))
                     for i in range(len(args["boxes"]))]
        for (masks, iou, low_res), (want_masks, want_iou, want_low) in zip(results, wants):
            assert np.abs(iou - want_iou).max() <= 1e-3, what
            assert np.abs(low_res - want_low).max() <= 2e-2, what
            reference_logits = predictor.upscale_logits(want_low)
            if args["return_logits"]:
                assert np.abs(masks - golden[out["logits"]]).max() <= 2e-2, what
                masks = masks > 0
            assert masks.dtype == bool and masks.shape == want_masks.shape, what
            ious = care_iou(masks, want_masks, reference_logits)
            assert ious.min() >= 0.99, f"{what}: mask IoU {ious}"


@pytest.mark.slow
def test_sam_interface_decoder(exported, onnx_predictor, fixture_data):
    """decoder.onnx as SAM's tools call it: orig_im_size of any dtype, prompts batched."""
    _, golden, images = fixture_data
    predictor = onnx_predictor
    predictor.set_image(images["dog_517x333"])
    decoder = OnnxDecoder(exported, threads=2)
    emb = predictor.get_image_embedding()
    point = predictor.prompt_arrays(np.array([[217.25, 183.25]]), np.array([1]), None)
    box = predictor.prompt_arrays(None, None, np.array([[77.5, 66.5, 362.0, 283.0]]))
    size = (333, 517)
    runs = [decoder.run(emb, *point, orig_im_size=np.array(size, dtype))
            for dtype in (np.float32, np.int32, np.int64)]
    for run in runs[1:]:
        for key in runs[0]:
            np.testing.assert_array_equal(run[key], runs[0][key])
    masks = runs[0]["masks"][0, 1:] > 0
    assert runs[0]["masks"].shape == (1, 4, *size)
    want_low = golden["dog_517x333/point_multi/low_res_logits"]
    assert care_iou(masks, golden["dog_517x333/point_multi/masks"],
                    predictor.upscale_logits(want_low)).min() >= 0.99
    assert np.abs(runs[0]["iou_predictions"][0, 1:] - golden["dog_517x333/point_multi/iou_predictions"]).max() <= 1e-3
    # Two prompts of the same length in one call equal the single calls.
    both = decoder.run(emb, np.concatenate([point[0], box[0]]), np.concatenate([point[1], box[1]]),
                       orig_im_size=size)
    single_box = decoder.run(emb, *box, orig_im_size=size)
    np.testing.assert_allclose(both["low_res_masks"][1], single_box["low_res_masks"][0], atol=1e-4)
    np.testing.assert_allclose(both["low_res_masks"][0], runs[0]["low_res_masks"][0], atol=1e-4)
    assert np.abs(single_box["iou_predictions"][0, :1] - golden["dog_517x333/box/iou_predictions"]).max() <= 1e-3
    with pytest.raises(ValueError, match="orig_im_size"):
        decoder.run(emb, *point, orig_im_size=(0, 5))


@pytest.mark.slow
def test_automatic_masks_match_golden(onnx_predictor, fixture_data):
    prompts, golden, images = fixture_data
    amg = prompts["amg"]
    records = SamAutomaticMaskGenerator(onnx_predictor, **amg["kwargs"]).generate(
        images[amg["image"]])
    h, w = images[amg["image"]].shape[:2]
    want = [np.unpackbits(row)[: h * w].reshape(h, w).astype(bool)
            for row in golden["amg/segmentation_packbits"]]
    assert len(records) == len(want) == amg["num_masks"]
    ious = mask_iou(np.stack([r["segmentation"] for r in records])[:, None], np.stack(want)[None])
    match = ious.argmax(axis=1)
    assert sorted(match.tolist()) == list(range(len(want)))  # one to one
    for i, j in enumerate(match):
        r = records[i]
        assert ious[i, j] >= 0.95
        assert abs(r["predicted_iou"] - golden["amg/predicted_iou"][j]) <= 2e-3
        assert abs(r["stability_score"] - golden["amg/stability_score"][j]) <= 2e-3
        np.testing.assert_allclose(r["bbox"], golden["amg/bbox"][j], atol=2)
        np.testing.assert_array_equal(r["point_coords"][0], golden["amg/point_coords"][j])
        np.testing.assert_array_equal(r["crop_box"], golden["amg/crop_box"][j])


# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny_pair(tiny_sam, tiny_exported, tiny_image):
    torch_p = SamPredictor(tiny_sam)
    torch_p.set_image(tiny_image)
    onnx_p = OnnxPredictor(tiny_exported, threads=2)
    onnx_p.set_image(tiny_image)
    return torch_p, onnx_p


PROMPTS = {
    "one point": dict(point_coords=[[40.0, 30.0]], point_labels=[1]),
    "five points": dict(point_coords=[[40, 30], [100, 80], [5, 90], [149, 0], [70, 50]],
                        point_labels=[1, 0, 1, -1, 0]),
    "box": dict(box=[10, 12, 90, 70]),
    "box and points": dict(point_coords=[[40, 30], [60, 40]], point_labels=[1, 0],
                           box=[10, 12, 90, 70]),
    "mask only": dict(mask_input="previous"),
    "nothing": dict(),
}


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_tiny_matches_torch_predictor(tiny_pair, name, multimask, rng):
    torch_p, onnx_p = tiny_pair
    kwargs = {k: (np.array(v) if k != "mask_input" else v) for k, v in PROMPTS[name].items()}
    if kwargs.get("mask_input") == "previous":
        kwargs["mask_input"] = rng.normal(0, 3, (1, 64, 64)).astype(np.float32)
    want = torch_p.predict(**kwargs, multimask_output=multimask, return_logits=True)
    got = onnx_p.predict(**kwargs, multimask_output=multimask, return_logits=True)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=2e-4, rtol=0)
    masks, _, _ = onnx_p.predict(**kwargs, multimask_output=multimask)
    np.testing.assert_array_equal(masks, got[0] > 0)


def test_tiny_point_batch_matches_torch(tiny_pair):
    torch_p, onnx_p = tiny_pair
    points = np.array([[3.0, 4.0], [149.0, 96.0], [75.5, 40.25]] * 7)  # > one session call
    for g, w in zip(onnx_p.predict_point_batch(points), torch_p.predict_point_batch(points)):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=2e-4, rtol=0)
    low = torch_p.predict_point_batch(points)[0].reshape(-1, 64, 64)
    np.testing.assert_allclose(onnx_p.upscale_logits(low), torch_p.upscale_logits(low),
                               atol=2e-4, rtol=0)


def test_tiny_automatic_matches_torch(tiny_pair, tiny_sam, tiny_exported, tiny_image):
    kwargs = dict(points_per_side=4, crop_n_layers=1, pred_iou_thresh=0.0,
                  stability_score_thresh=0.0, output_mode="uncompressed_rle")
    want = SamAutomaticMaskGenerator(tiny_sam, **kwargs).generate(tiny_image)
    got = SamAutomaticMaskGenerator(OnnxPredictor(tiny_exported), **kwargs).generate(tiny_image)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["point_coords"] == w["point_coords"] and g["crop_box"] == w["crop_box"]
        assert mask_iou(M.rle_to_mask(g["segmentation"]), M.rle_to_mask(w["segmentation"])) >= 0.99


def test_prompt_arrays_feed_the_decoder_graph_as_they_are(tiny_pair, tiny_exported):
    """prompt_arrays gives the dtypes decoder.onnx declares (no cast needed in a plain
    onnxruntime session) and the torch path's prompts: the same masks."""
    import onnxruntime as ort

    torch_p, onnx_p = tiny_pair
    session = ort.InferenceSession(str(tiny_exported / "decoder.onnx"),
                                   providers=["CPUExecutionProvider"])
    declared = {i.name: i.type for i in session.get_inputs()}
    assert declared["point_coords"] == declared["point_labels"] == "tensor(float)"
    points, point_kinds, rect = np.array([[40.0, 30.0], [60, 40]]), np.array([1, 0]), \
        np.array([10, 12, 90, 70])
    for coords, labels, box in [(points, point_kinds, None), (None, None, rect),
                                (points, point_kinds, rect)]:
        point_coords, point_labels = onnx_p.prompt_arrays(coords, labels, box)
        assert point_coords.dtype == point_labels.dtype == np.float32
        out = session.run(["low_res_masks"], {
            "image_embeddings": onnx_p.get_image_embedding(), "point_coords": point_coords,
            "point_labels": point_labels, "mask_input": np.zeros((1, 1, 64, 64), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(onnx_p.original_size, np.float32)})[0]
        _, _, want = torch_p.predict(coords, labels, box, multimask_output=True)
        np.testing.assert_allclose(out[0, 1:], want, atol=2e-4, rtol=0)


def test_export_records_and_runtime_uses_the_models_pixel_statistics(
        tiny_sam, tiny_exported, tiny_image, tmp_path):
    from mobile_sam.modeling import Sam

    mean, std = [10.0, 200.0, 50.0], [30.0, 80.0, 20.0]
    custom = Sam(tiny_sam.image_encoder, tiny_sam.prompt_encoder, tiny_sam.mask_decoder,
                 pixel_mean=mean, pixel_std=std).eval()  # tiny_sam's modules, in eval mode
    E.export_onnx(custom, tmp_path / "custom")
    info = load_model_info(tmp_path / "custom")
    assert (info["pixel_mean"], info["pixel_std"]) == (mean, std)
    want = SamPredictor(custom)
    want.set_image(tiny_image)
    got = OnnxPredictor(tmp_path / "custom")
    got.set_image(tiny_image)
    np.testing.assert_allclose(got.get_image_embedding(), want.get_image_embedding().numpy(),
                               atol=1e-4, rtol=0)
    sam_stats = OnnxPredictor(tiny_exported)
    sam_stats.set_image(tiny_image)  # the same weights with SAM's statistics: another input
    assert np.abs(sam_stats.get_image_embedding() - got.get_image_embedding()).max() > 1e-2
    # A folder that records no statistics (an older export) uses SAM's; bad ones are named.
    older = without(tmp_path / "custom", tmp_path / "older")
    info = load_model_info(older)
    del info["pixel_mean"], info["pixel_std"]
    (older / "model.json").write_text(json.dumps(info))
    assert OnnxPredictor(older).normalization == (R.PIXEL_MEAN, R.PIXEL_STD)
    for key, value in [("pixel_std", [1.0, 0.0, 1.0]), ("pixel_mean", [1.0, 2.0])]:
        (older / "model.json").write_text(json.dumps({**info, key: value}))
        with pytest.raises(OnnxModelError, match=rf"model.json: {key} must be 3 finite numbers"):
            OnnxPredictor(older)


def test_decoder_options_single_mask_and_stability(tiny_sam, tiny_pair, tmp_path):
    """--single-mask picks SAM's ONNX choice; --stability-score returns stability scores."""
    out = tmp_path / "opts"
    E.export_onnx(tiny_sam, out, single_mask=True, stability_score=True, opset=14)
    info = load_model_info(out)
    assert info["decoder_options"] == {"single_mask": True, "stability_score": True}
    assert info["opset"] == 14
    assert onnx.load(str(out / "decoder.onnx")).opset_import[0].version == 14
    _, onnx_p = tiny_pair
    decoder = OnnxDecoder(out)
    emb = onnx_p.get_image_embedding()
    for coords, labels in [([[40.0, 30.0]], [1]), ([[40.0, 30.0], [60, 40]], [1, 0])]:
        prompt = onnx_p.prompt_arrays(np.array(coords), np.array(labels), None)
        got = decoder.run(emb, *prompt, orig_im_size=onnx_p.original_size)
        low, _ = onnx_p._decode(*prompt, None)  # all four masks of the default graphs
        stability = M.stability_score(low[0], 0.0, 1.0)
        # One point (+ padding): the most stable of the multimask outputs; more: token 0.
        k = 1 + int(np.argmax(stability[1:])) if len(coords) == 1 else 0
        assert got["masks"].shape == (1, 1, *onnx_p.original_size)
        np.testing.assert_allclose(got["low_res_masks"][0, 0], low[0, k], atol=1e-4)
        assert got["iou_predictions"][0, 0] == pytest.approx(stability[k], abs=1e-3)
    with pytest.raises(ValueError, match="precision"):
        OnnxPredictor(out, precision="fp16")


def test_opset_range_is_checked(tiny_sam, tmp_path, capsys):
    for bad in (13, E.max_opset() + 1):
        with pytest.raises(E.ExportError, match=rf"opset {bad} is not supported: choose 14\.\."):
            E.export_onnx(tiny_sam, tmp_path / "x", opset=bad)
    assert not (tmp_path / "x").exists()
    assert main(["export", "--out", str(tmp_path / "y"), "--opset", "99"]) == 1
    assert "opset 99 is not supported" in capsys.readouterr().err
    with pytest.raises(E.ExportError, match="quantize"):
        E.export_onnx(tiny_sam, tmp_path / "x", quantize="int4")
    assert main(["export", "--out", str(tmp_path / "y"), "--eval-images", "a.png"]) == 1
    assert "--eval-images is only used with --quantize int8" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_export_to_unwritable_folder(tiny_sam, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputWriteError, match="file.txt"):
        E.export_onnx(tiny_sam, blocker / "out")
    assert main(["export", "--out", str(blocker / "out")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputWriteError, match="locked"):
            E.export_onnx(tiny_sam, locked)


def test_failed_export_leaves_nothing_behind(tiny_sam, tmp_path, monkeypatch):
    real = E._check_onnx

    def failing(path):
        if path.name == E.FILES["decoder_lowres"]:
            raise RuntimeError("simulated failure")
        real(path)

    monkeypatch.setattr(E, "_check_onnx", failing)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(RuntimeError, match="simulated"):
        E.export_onnx(tiny_sam, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------- runtime errors


def test_runtime_refuses_bad_folders_and_files(tiny_exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxPredictor(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json not found"):
        OnnxPredictor(tmp_path / "empty")
    with pytest.raises(OnnxModelError, match="lists no 'encoder_int8' file"):
        OnnxPredictor(tiny_exported, precision="int8")
    swapped = without(tiny_exported, tmp_path / "swapped", encoder="decoder_lowres.onnx")
    with pytest.raises(OnnxModelError, match=r"is not the encoder graph \(it looks like the "
                                             r"decoder_lowres file\).*expected inputs \['image'\]"):
        OnnxPredictor(swapped)
    missing = without(tiny_exported, tmp_path / "missing", decoder_lowres="gone.onnx")
    with pytest.raises(FileNotFoundError, match=r"decoder_lowres file .*gone\.onnx not found"):
        OnnxPredictor(missing)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_exported, corrupt)
    (corrupt / "encoder.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(OnnxModelError, match=r"encoder\.onnx: cannot load the ONNX model"):
        OnnxPredictor(corrupt)
    (corrupt / "model.json").write_text("{not json")
    with pytest.raises(OnnxModelError, match="not valid JSON"):
        OnnxPredictor(corrupt)


def test_runtime_validates_like_sam_predictor(tiny_exported, tiny_image):
    predictor = OnnxPredictor(tiny_exported)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([1]))
    with pytest.raises(TypeError, match="uint8"):
        predictor.set_image(tiny_image.astype(np.float32))
    predictor.set_image(tiny_image[:, :, 0])  # gray: three equal channels
    cases = [
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([2])), "point_labels"),
        (dict(point_coords=np.array([[1.0, 2.0]])), "together"),
        (dict(box=np.array([5.0, 5.0, 1.0, 9.0])), "x1 >= x0"),
        (dict(box=np.zeros((2, 4))), "one XYXY box"),
        (dict(mask_input=np.zeros((1, 256, 256))), r"mask_input must have shape \(1, 64, 64\)"),
        (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), "NaN"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            predictor.predict(**kwargs)
    with pytest.raises(ValueError, match="threads"):
        OnnxPredictor(tiny_exported, threads=0)


# ----------------------------------------------------------------------------- torch-free


@pytest.mark.slow
def test_runtime_runs_without_torch(exported, onnx_predictor, fixture_data, tmp_path):
    """Import and run the runtime and the automatic generator where importing torch fails."""
    _, _, images = fixture_data
    image = images["dog_517x333"]
    np.save(tmp_path / "image.npy", image)
    code = BLOCK_TORCH + (
        "import numpy as np\n"
        "from mobile_sam.onnx import OnnxPredictor\n"
        "from mobile_sam import SamAutomaticMaskGenerator\n"
        f"image = np.load({str(tmp_path / 'image.npy')!r})\n"
        f"p = OnnxPredictor({str(exported)!r}, threads=2)\n"
        "p.set_image(image)\n"
        "masks, iou, low = p.predict(np.array([[217.25, 183.25]]), np.array([1]))\n"
        "records = SamAutomaticMaskGenerator(p, points_per_side=2, pred_iou_thresh=0,\n"
        "                                    stability_score_thresh=0).generate(image)\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, masks=masks, iou=iou, low=low,\n"
        "         amg=np.array([r['predicted_iou'] for r in records]))\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    onnx_predictor.set_image(image)
    masks, iou, low = onnx_predictor.predict(np.array([[217.25, 183.25]]), np.array([1]))
    np.testing.assert_array_equal(out["masks"], masks)
    np.testing.assert_allclose(out["low"], low, atol=1e-5)
    records = SamAutomaticMaskGenerator(onnx_predictor, points_per_side=2, pred_iou_thresh=0,
                                        stability_score_thresh=0).generate(image)
    np.testing.assert_allclose(out["amg"], [r["predicted_iou"] for r in records], atol=1e-5)
