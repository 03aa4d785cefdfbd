"""`mobile-sam export --format anylabeling|samexporter`: the pair those tools load.

The files are run in onnxruntime the way the tools' loaders feed them (learned from their
interfaces, re-written here with numpy and Pillow): X-AnyLabeling reads the model YAML, fits
the image into max_height × max_width, pads it to that size, feeds it as H×W×3 float32,
appends SAM's padding point and takes the first mask of the decoder's output; samexporter
resizes the longest side to the input size (Pillow, bilinear) and asks for masks at the
original size. Both must match `SamPredictor` on the tiny model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ort = pytest.importorskip("onnxruntime")

from mobile_sam.cli import main
from mobile_sam.onnx import export as E
from mobile_sam.predictor import SamPredictor
from mobile_sam.transforms import ResizeLongestSide, get_preprocess_shape


def read_yaml(path: Path) -> dict[str, object]:
    """The flat `key: value` YAML the exporter writes (ints as ints)."""
    config: dict[str, object] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(": ")
        config[key] = int(value) if value.isdigit() else value
    return config


class AnyLabelingStyleLoader:
    """X-AnyLabeling's `segment_anything` model: config -> sessions; image -> masks."""

    def __init__(self, config_path: Path) -> None:
        self.config = read_yaml(config_path)
        folder = config_path.parent  # model paths are relative to the config's folder
        self.encoder = ort.InferenceSession(str(folder / self.config["encoder_model_path"]))
        self.decoder = ort.InferenceSession(str(folder / self.config["decoder_model_path"]))
        self.target = int(self.config["input_size"])
        self.input_size = (int(self.config["max_height"]), int(self.config["max_width"]))

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Scale to fit input_size, pad bottom/right with black to exactly that size."""
        h, w = image.shape[:2]
        scale = min(self.input_size[0] / h, self.input_size[1] / w)
        size = (round(w * scale), round(h * scale))
        fitted = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        canvas = np.zeros((*self.input_size, 3), np.uint8)
        canvas[:size[1], :size[0]] = fitted
        name = self.encoder.get_inputs()[0].name
        return self.encoder.run(None, {name: canvas.astype(np.float32)})[0], scale

    def predict(self, embedding: np.ndarray, scale: float, points: list[list[float]],
                labels: list[int]) -> np.ndarray:
        coords = np.concatenate([np.array(points, float), [[0.0, 0.0]]])[None]
        onnx_labels = np.array([[*labels, -1]], np.float32)
        new_h, new_w = get_preprocess_shape(*self.input_size, self.target)
        coords = coords * scale * [new_w / self.input_size[1], new_h / self.input_size[0]]
        mask_side = 4 * embedding.shape[2]  # 256 for SAM's 64² embedding
        masks = self.decoder.run(None, {
            "image_embeddings": embedding, "point_coords": coords.astype(np.float32),
            "point_labels": onnx_labels,
            "mask_input": np.zeros((1, 1, mask_side, mask_side), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(self.input_size, np.float32)})[0]
        return masks[0][0]  # the loader's choice: first prompt, first mask


@pytest.fixture(scope="module")
def anylabeling(tiny_sam, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anylabeling")
    names = E.export_tool_format(tiny_sam, out, "anylabeling")
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    return out / names["config"]


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(5)
    small = Image.fromarray(rng.integers(0, 255, (9, 13, 3), dtype=np.uint8))
    return np.asarray(small.resize((256, 170), Image.BILINEAR))


def test_config_names_the_files_and_sizes(anylabeling, tiny_sam):
    config = read_yaml(anylabeling)
    assert config["type"] == "segment_anything"
    # vit_t exports are named mobile_sam.*; other variants sam_<variant>.*, here "tiny"
    assert config["encoder_model_path"] == "sam_tiny.encoder.onnx"
    assert config["decoder_model_path"] == "sam_tiny.decoder.onnx"
    assert (config["input_size"], config["max_width"], config["max_height"]) == (256, 256, 170)
    assert {"name", "display_name"} <= set(config)
    encoder = ort.InferenceSession(str(anylabeling.parent / "sam_tiny.encoder.onnx"))
    (image_input,) = encoder.get_inputs()
    assert image_input.name == "input_image" and image_input.type == "tensor(float)"
    assert image_input.shape == ["image_height", "image_width", 3]
    decoder = ort.InferenceSession(str(anylabeling.parent / "sam_tiny.decoder.onnx"))
    assert [i.name for i in decoder.get_inputs()] == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
        "orig_im_size"]
    assert [o.name for o in decoder.get_outputs()] == ["masks", "iou_predictions",
                                                       "low_res_masks"]


@pytest.mark.parametrize("points, labels", [
    ([[60.0, 50.0]], [1]),  # 2 tokens with the padding: SAM's ONNX choice = best of 3
    ([[60.0, 50.0], [200.0, 120.0], [30.0, 150.0]], [1, 0, 1]),  # 4 tokens: the single mask
])
def test_anylabeling_loader_matches_sam_predictor(anylabeling, tiny_sam, picture, points,
                                                  labels):
    loader = AnyLabelingStyleLoader(anylabeling)
    embedding, scale = loader.encode(picture)
    assert scale == 1.0  # the picture has the config's size: no resampling on either side
    got = loader.predict(embedding, scale, points, labels)
    predictor = SamPredictor(tiny_sam, backend="torch")
    predictor.set_image(picture)
    np.testing.assert_allclose(embedding, predictor.get_image_embedding().numpy(), atol=1e-4)
    multimask = len(points) == 1
    logits, scores, _ = predictor.predict(np.array(points), np.array(labels),
                                          multimask_output=multimask, return_logits=True)
    want = logits[int(np.argmax(scores))]
    assert got.shape == want.shape == picture.shape[:2]
    sure = np.abs(want) >= 2e-2  # pixels whose sign float rounding cannot flip
    np.testing.assert_array_equal((got > 0)[sure], (want > 0)[sure])
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_samexporter_feed_any_size(tmp_path, tiny_sam, picture):
    """samexporter resizes the longest side to the input size and asks for masks at the
    original size: a 97×150 image gives SamPredictor's embedding and masks."""
    assert main(["export", "--model", "unused", "--out", str(tmp_path), "--format",
                 "samexporter", "--single-mask"]) == 1  # options of the other format refused
    names = E.export_tool_format(tiny_sam, tmp_path, "samexporter")
    tiny_image = np.asarray(Image.fromarray(picture).resize((150, 97), Image.BILINEAR))
    assert sorted(names) == ["decoder", "encoder"]
    encoder = ort.InferenceSession(str(tmp_path / names["encoder"]))
    decoder = ort.InferenceSession(str(tmp_path / names["decoder"]))
    resized = ResizeLongestSide(256).apply_image(tiny_image)
    embedding = encoder.run(None, {"input_image": resized.astype(np.float32)})[0]
    predictor = SamPredictor(tiny_sam, backend="torch")
    predictor.set_image(tiny_image)
    np.testing.assert_allclose(embedding, predictor.get_image_embedding().numpy(), atol=1e-4)
    point = np.array([[40.0, 30.0]])
    coords = predictor.transform.apply_coords(np.concatenate([point, [[0.0, 0.0]]]),
                                              tiny_image.shape[:2])
    masks, iou, _ = decoder.run(None, {
        "image_embeddings": embedding, "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(tiny_image.shape[:2], np.float32)})
    logits, scores, _ = predictor.predict(point, np.array([1]), return_logits=True)
    best = int(np.argmax(scores))
    assert masks.shape == (1, 1, *tiny_image.shape[:2])
    np.testing.assert_allclose(iou[0, 0], scores[best], atol=2e-4)
    np.testing.assert_allclose(masks[0, 0], logits[best], atol=2e-3)


def test_vit_t_files_are_named_mobile_sam(tiny_sam, monkeypatch):
    import dataclasses

    monkeypatch.setattr(tiny_sam, "config", dataclasses.replace(tiny_sam.config, name="vit_t"))
    assert E.tool_file_names(tiny_sam, "anylabeling") == {
        "encoder": "mobile_sam.encoder.onnx", "decoder": "mobile_sam.decoder.onnx",
        "config": "mobile_sam.yaml"}


def test_cli_writes_the_anylabeling_files(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from mobile_sam.cli import export as export_command

    monkeypatch.setattr(export_command, "load_model", lambda args: _tiny(tiny_checkpoint))
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(tmp_path),
                 "--format", "anylabeling"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sam_tiny.decoder.onnx", "sam_tiny.encoder.onnx", "sam_tiny.yaml"]
    assert "sam_tiny.yaml" in capsys.readouterr().out


def _tiny(checkpoint: Path):
    import torch

    from conftest import tiny_sam_config
    from mobile_sam.build import build_sam

    model = build_sam(tiny_sam_config())
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()
