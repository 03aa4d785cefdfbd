"""The validation module: each rule once, then every surface (SamPredictor, the ONNX runtime,
SAM(...).predict, the CLI, the server, the mask generator) applying the same rule alike."""
from __future__ import annotations

import io
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_sam_config
from mobile_sam import build
from mobile_sam.api import SAM
from mobile_sam.automatic import SamAutomaticMaskGenerator
from mobile_sam.cli import main
from mobile_sam.modeling.prompt_encoder import prompt_points
from mobile_sam.onnx.runtime import OnnxPredictor
from mobile_sam.predictor import SamPredictor
from mobile_sam.prompts import (
    GENERATOR_BOUNDS,
    Bound,
    PromptError,
    PromptTypeError,
    check_boxes,
    check_generator_options,
    check_image,
    check_inside_image,
    check_labels,
    check_points,
    pack_prompts,
)
from mobile_sam.transforms import ResizeLongestSide

W, H = 40, 30  # the test image: width x height
TINY_SIZE = 256  # the tiny model's input size: images up to 512:1 fit it


# ------------------------------------------------------------------------------ rules


def test_prompt_errors_are_value_errors_and_type_errors_where_the_type_is_wrong() -> None:
    with pytest.raises(PromptTypeError) as err:
        check_image(np.zeros((4, 4, 3), np.float32))
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)
    assert err.value.field == "image"
    with pytest.raises(PromptError) as err:
        check_boxes([3, 0, 1, 5], "bboxes")
    assert not isinstance(err.value, TypeError) and err.value.field == "bboxes"


def test_image_channels_and_formats() -> None:
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert check_image(rgb) is rgb  # nothing to change: not copied
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(check_image(gray), np.stack([gray] * 3, axis=2))
    np.testing.assert_array_equal(check_image(gray[:, :, None]), np.stack([gray] * 3, axis=2))
    rgba = np.concatenate([rgb, np.full((2, 4, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(check_image(rgba), rgb)
    bgr = check_image(rgb, "BGR")
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    assert bgr.flags.c_contiguous
    for bad, message in [(np.zeros((2, 2, 2), np.uint8), r"got \(2, 2, 2\)"),
                         (np.zeros((0, 3), np.uint8), "empty"),
                         (np.zeros(5, np.uint8), r"got \(5,\)")]:
        with pytest.raises(PromptError, match=message):
            check_image(bad)
    with pytest.raises(PromptError, match="image_format must be 'RGB' or 'BGR'") as err:
        check_image(rgb, "HSV")
    assert err.value.field == "image_format"


@pytest.mark.parametrize("long_side", [16, 256, 1024])
def test_thin_images_are_refused_exactly_where_a_side_would_vanish(long_side) -> None:
    """The bound is where resizing the long side to the model's size leaves a 0-pixel side,
    i.e. where Pillow can no longer make the resized image."""
    widest = 2 * long_side  # 1 pixel high: the longest image that still resizes
    for width, fits in [(widest, True), (widest + 1, False)]:
        image = np.zeros((1, width, 3), np.uint8)
        try:
            ResizeLongestSide(long_side).apply_image(image)
            resized = True
        except ValueError:
            resized = False
        assert resized is fits
        if fits:
            check_image(image, long_side=long_side)
            check_image(image.transpose(1, 0, 2), long_side=long_side)
        else:
            with pytest.raises(PromptError, match=rf"image of {width}x1 pixels .* too thin .* "
                                                  rf"at most {widest} times") as err:
                check_image(image, long_side=long_side)
            assert err.value.field == "image"
    check_image(np.zeros((1, 10 * long_side, 3), np.uint8))  # no model size: no bound


def test_labels() -> None:
    assert check_labels([1, 0, -1]).tolist() == [1, 0, -1]
    assert check_labels(np.array([1.0, 0.0])).dtype == np.int64
    for bad in ([2], [0.5], [True], ["1"], [np.nan]):
        with pytest.raises(PromptError, match=r"1 \(foreground\), 0 \(background\) or -1"):
            check_labels(bad)


def test_points_and_boxes() -> None:
    coords, labels = check_points([[1, 2], [3, 4]], [1, 0])
    assert coords.dtype == np.float64 and labels.tolist() == [1, 0]
    with pytest.raises(PromptError, match=r"must have shape \(N, 2\) with N >= 1"):
        check_points(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(PromptError, match="finite") as err:
        check_points([[1, np.inf]], [1])
    assert err.value.field == "point_coords"
    assert check_boxes([5, 5, 5, 9]).tolist() == [[5, 5, 5, 9]]  # zero width: a line, accepted
    assert check_boxes([[0, 0, 1, 1], [2, 2, 3, 2]]).shape == (2, 4)
    for bad in ([5, 5, 4, 9], [5, 5, 9, 4]):
        with pytest.raises(PromptError, match=r"x1 >= x0 and y1 >= y0"):
            check_boxes(bad)


def test_inside_image_includes_the_right_and_bottom_edges() -> None:
    check_inside_image((H, W), [[0, 0], [W, H], [W, 0], [0, H]])
    check_inside_image((H, W), boxes=[[W, H, W + 5, H + 5], [-5, -5, 0, 0]])  # touching
    for point in ([W + 1e-9, 0], [0, H + 1e-6], [-1e-9, 0]):
        with pytest.raises(PromptError, match=rf"point_coords\[1\] = .* is outside the image "
                                              rf"of size {W}x{H}") as err:
            check_inside_image((H, W), [[1, 1], point])
        assert err.value.field == "point_coords"
    with pytest.raises(PromptError, match=r"p\[1\]\[0\] = \(-1, 2\)"):
        check_inside_image((H, W), [[[1, 1]], [[-1, 2]]], points_field="p")
    with pytest.raises(PromptError, match=r"box = \(41, 0, 50, 5\) does not overlap x\.png"):
        check_inside_image((H, W), boxes=[W + 1, 0, 50, 5], image="x.png")


def test_pack_prompts_against_the_convention() -> None:
    coords = np.array([[[10.0, 20.0], [30.0, 40.0]]])
    labels = np.array([[1, 0]])
    box = np.array([[1.0, 2.0, 3.0, 4.0]])
    # Points then a (0, 0) padding point labelled -1.
    got_c, got_l = pack_prompts(coords, labels, None)
    assert got_c.dtype == np.float32 and got_l.dtype == np.int64
    assert got_c.tolist() == [[[10, 20], [30, 40], [0, 0]]] and got_l.tolist() == [[1, 0, -1]]
    # Points then the box corners labelled 2 and 3; no padding.
    got_c, got_l = pack_prompts(coords, labels, box)
    assert got_c.tolist() == [[[10, 20], [30, 40], [1, 2], [3, 4]]]
    assert got_l.tolist() == [[1, 0, 2, 3]]
    got_c, got_l = pack_prompts(None, None, np.array([[1.0, 2, 3, 4], [5, 6, 7, 8]]))
    assert got_c.shape == (2, 2, 2) and got_l.tolist() == [[2, 3], [2, 3]]
    got_c, got_l = pack_prompts(None, None, None)
    assert got_c.shape == (1, 0, 2) and got_l.shape == (1, 0)
    # In original pixels: moved into the model's frame first (x by 1024/517, y by 660/333).
    got_c, _ = pack_prompts(coords, labels, box, original_size=(333, 517), long_side=1024)
    sx, sy = 1024 / 517, 660 / 333
    want = np.array([[10 * sx, 20 * sy], [30 * sx, 40 * sy], [1 * sx, 2 * sy], [3 * sx, 4 * sy]])
    np.testing.assert_array_equal(got_c[0], want.astype(np.float32))


def test_torch_prompt_points_is_pack_prompts() -> None:
    coords = torch.tensor([[[10.5, 20.0]], [[3.0, 4.0]]])
    labels = torch.tensor([[1], [0]])
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    for args in [((coords, labels), None), ((coords, labels), boxes), (None, boxes)]:
        got = prompt_points(*args)
        points = args[0]
        want = pack_prompts(None if points is None else points[0].numpy(),
                            None if points is None else points[1].numpy(),
                            None if args[1] is None else args[1].numpy())
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
        np.testing.assert_array_equal(got[0].numpy(), want[0])
        np.testing.assert_array_equal(got[1].numpy(), want[1])


def test_bounds() -> None:
    assert Bound(int, 1, 256).expected == "an integer in [1, 256]"
    assert Bound(float, 0, 1, high_open=True).expected == "a number in [0, 1)"
    assert Bound(float, 0).expected == "a finite number >= 0"
    assert Bound(int, 1).check("n", np.int64(3)) == 3
    assert Bound(float, 0, 1).check("t", 1) == 1.0
    for value in (math.nan, math.inf, 1.0000001, -0.5):
        with pytest.raises(PromptError, match=r"t must be a number in \[0, 1\]"):
            Bound(float, 0, 1).check("t", value)
    with pytest.raises(PromptError, match=r"r must be a number in \[0, 1\), got 1.0"):
        Bound(float, 0, 1, high_open=True).check("r", 1)
    with pytest.raises(PromptTypeError, match="n must be an integer .*, got bool True"):
        Bound(int, 1).check("n", True)
    with pytest.raises(PromptTypeError, match="got str"):
        Bound(float, 0).check("x", "0.5")


def test_every_numeric_generator_option_has_a_bound() -> None:
    import inspect

    params = inspect.signature(SamAutomaticMaskGenerator).parameters
    numeric = {name for name, p in params.items()
               if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}
    assert numeric == set(GENERATOR_BOUNDS)
    defaults = {name: params[name].default for name in GENERATOR_BOUNDS}
    assert check_generator_options(**defaults) == defaults  # the defaults are valid
    assert check_generator_options(points_per_side=None, crop_n_layers=4)["crop_n_layers"] == 4
    for name, value in [("points_per_side", 256), ("crop_n_layers", 4), ("points_per_batch", 1024)]:
        check_generator_options(**{name: value})
        with pytest.raises(PromptError) as err:
            check_generator_options(**{name: value + 1})
        assert err.value.field == name


# ------------------------------------------------------------------------------ surfaces


class FakeSession:
    """An onnxruntime stand-in: the graph's inputs and outputs, zeros as results, and the
    feeds of the last call (to see the prompts the runtime packed)."""

    def __init__(self, role: str, size: int) -> None:
        self.role, self.size, self.feeds = role, size, None
        if role == "encoder":
            self.inputs, self.outputs = ["image"], ["image_embeddings"]
        else:
            self.inputs = ["image_embeddings", "point_coords", "point_labels", "mask_input",
                           "has_mask_input"]
            self.outputs = ["low_res_masks", "iou_predictions"]

    def get_inputs(self):
        return [type("Arg", (), {"name": n, "type": "tensor(float)"}) for n in self.inputs]

    def get_outputs(self):
        return [type("Arg", (), {"name": n}) for n in self.outputs]

    def run(self, names, feeds):
        self.feeds = feeds
        if self.role == "encoder":
            return [np.zeros((1, 32, self.size // 16, self.size // 16), np.float32)]
        b = len(feeds["point_coords"])
        return [np.zeros((b, 4, self.size // 4, self.size // 4), np.float32),
                np.zeros((b, 4), np.float32)]


@pytest.fixture(scope="module")
def fake_onnx(tmp_path_factory) -> OnnxPredictor:
    folder = tmp_path_factory.mktemp("onnx")
    files = {"encoder": "encoder.onnx", "decoder_lowres": "decoder_lowres.onnx"}
    for name in files.values():
        (folder / name).write_bytes(b"")
    info = {"image_size": TINY_SIZE, "mask_input_size": [64, 64], "mask_threshold": 0.0,
            "files": files}
    (folder / "model.json").write_text(json.dumps(info))
    roles = {"encoder.onnx": "encoder", "decoder_lowres.onnx": "decoder_lowres"}
    return OnnxPredictor(folder, session_factory=lambda path, threads: FakeSession(
        roles[path.name], TINY_SIZE))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)


def png(image: np.ndarray, path: Path | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tiny_sam, image):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from starlette.exceptions import StarletteDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarletteDeprecationWarning)
        from fastapi.testclient import TestClient
    from mobile_sam.serve import create_app

    with TestClient(create_app(tiny_sam)) as client:
        info = client.post("/v1/images", files={"file": ("a.png", png(image))}).json()
        yield client, info["id"]


@pytest.fixture
def cli_model(tiny_checkpoint, monkeypatch) -> Path:
    monkeypatch.setitem(build.VARIANTS, "tiny", tiny_sam_config())
    return tiny_checkpoint


SURFACES = ["predictor", "onnx", "api", "cli", "server"]
IMAGE_AWARE = {"api", "cli", "server"}  # the surfaces that refuse prompts outside the image


@pytest.fixture
def prompt_on(request, tiny_sam, fake_onnx, image, tmp_path):
    """``prompt_on(surface, points, labels, box)``: None if the surface accepts the prompt
    (one object: N points with labels and/or a box, XY pixels of the test image), else the
    refusal's message."""

    def run(surface: str, points=None, labels=None, box=None) -> str | None:
        if surface in ("predictor", "onnx"):
            predictor = SamPredictor(tiny_sam) if surface == "predictor" else fake_onnx
            predictor.set_image(image)
            try:
                predictor.predict(None if points is None else np.array(points),
                                  None if labels is None else np.array(labels),
                                  None if box is None else np.array(box))
            except PromptError as err:
                return str(err)
            return None
        if surface == "api":
            try:
                SAM(tiny_sam).predict(image, points=None if points is None else [points],
                                      labels=None if labels is None else [labels], bboxes=box)
            except PromptError as err:
                return str(err)
            return None
        if surface == "cli":
            model = request.getfixturevalue("cli_model")
            path = tmp_path / "a.png"
            png(image, path)
            argv = ["segment", str(path), "--model", str(model), "--out", str(tmp_path / "o")]
            for (x, y), label in zip(points or [], labels or [], strict=True):
                argv += ["--point", f"{x},{y},{label}"]
            if box is not None:
                argv += ["--box", ",".join(str(v) for v in box)]
            capsys = request.getfixturevalue("capsys")
            capsys.readouterr()
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            return None if code == 0 else capsys.readouterr().err
        client, image_id = request.getfixturevalue("server")
        body = {"point_coords": points, "point_labels": labels, "box": box}
        response = client.post(f"/v1/images/{image_id}/predict",
                               json={k: v for k, v in body.items() if v is not None})
        if response.status_code == 200:
            return None
        assert response.status_code == 422, response.text
        return f"{response.json()['field']}: {response.json()['detail']}"

    return run


@pytest.mark.parametrize("surface", SURFACES)
def test_zero_width_and_zero_height_boxes_are_accepted_everywhere(prompt_on, surface) -> None:
    assert prompt_on(surface, box=[10, 5, 10, 20]) is None
    assert prompt_on(surface, box=[10, 5, 30, 5]) is None


@pytest.mark.parametrize("surface", SURFACES)
def test_inverted_boxes_are_refused_everywhere(prompt_on, surface) -> None:
    refusal = prompt_on(surface, box=[20, 5, 10, 20])
    assert refusal is not None and "x1 >= x0 and y1 >= y0" in refusal


@pytest.mark.parametrize("surface", SURFACES)
def test_labels_are_the_same_everywhere(prompt_on, surface) -> None:
    assert prompt_on(surface, points=[[5, 5], [20, 20], [30, 10]], labels=[1, 0, -1]) is None
    refusal = prompt_on(surface, points=[[5, 5]], labels=[2])
    assert refusal is not None
    assert "must be 1 (foreground), 0 (background) or -1 (ignored), got" in refusal
    assert "[2]" in refusal


@pytest.mark.parametrize("surface", SURFACES)
def test_points_on_the_right_and_bottom_edges(prompt_on, surface) -> None:
    assert prompt_on(surface, points=[[W, H], [0, 0]], labels=[1, 1]) is None
    assert prompt_on(surface, points=[[W, 3]], labels=[1], box=[0, 0, W, H]) is None
    outside = prompt_on(surface, points=[[W + 0.5, 3]], labels=[1])
    if surface in IMAGE_AWARE:
        assert outside is not None
        assert "is outside" in outside and f"0 <= x <= {W} and 0 <= y <= {H}" in outside
        refusal = prompt_on(surface, box=[W + 1, 0, W + 9, 9])
        assert refusal is not None and "does not overlap" in refusal
    else:  # SamPredictor's interface keeps the original's any-coordinates semantics
        assert outside is None


@pytest.mark.parametrize("surface", SURFACES + ["generator"])
def test_thin_images_are_refused_everywhere(surface, tiny_sam, fake_onnx, cli_model, capsys,
                                            tmp_path, request) -> None:
    thin = np.zeros((1, 2 * TINY_SIZE + 1, 3), np.uint8)
    message = f"image of {2 * TINY_SIZE + 1}x1 pixels (width x height) is too thin"
    if surface in ("predictor", "onnx", "generator", "api"):
        predictor = fake_onnx if surface == "onnx" else SamPredictor(tiny_sam)
        call = {"predictor": lambda: predictor.set_image(thin),
                "onnx": lambda: predictor.set_image(thin),
                "generator": lambda: SamAutomaticMaskGenerator(predictor).generate(thin),
                "api": lambda: SAM(tiny_sam).predict(thin, points=[5, 0])}[surface]
        with pytest.raises(PromptError, match=re.escape(message)) as err:
            call()
        assert err.value.field == "image"
    elif surface == "cli":
        path = tmp_path / "thin.png"
        png(thin, path)
        code = main(["segment", str(path), "--point", "5,0", "--model", str(cli_model),
                     "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 1 and f"{path}: {message}" in err and len(err.splitlines()) == 1
    else:
        client, _ = request.getfixturevalue("server")
        response = client.post("/v1/images", files={"file": ("t.png", png(thin))})
        assert response.status_code == 422
        assert response.json()["field"] == "file" and message in response.json()["detail"]
        fits = client.post("/v1/images", files={"file": ("t.png", png(thin[:, :-1]))})
        assert fits.status_code == 200 and fits.json()["width"] == 2 * TINY_SIZE


@pytest.mark.parametrize("surface", ["generator", "api", "cli", "server"])
@pytest.mark.parametrize(("option", "value"), [("pred_iou_thresh", 1.5),
                                               ("stability_score_offset", -1),
                                               ("points_per_side", 0),
                                               ("crop_n_layers", -1)])
def test_generator_options_are_bounded_alike(surface, option, value, tiny_sam, image, cli_model,
                                             capsys, tmp_path, request) -> None:
    expected = f"must be {GENERATOR_BOUNDS[option].expected}"
    if surface in ("generator", "api"):
        with pytest.raises(PromptError, match=re.escape(expected)) as err:
            if surface == "generator":
                SamAutomaticMaskGenerator(tiny_sam, **{option: value})
            else:
                SAM(tiny_sam).predict(image, **{option: value})
        assert err.value.field == option
    elif surface == "cli":
        path = tmp_path / "a.png"
        png(image, path)
        flag = "--" + option.replace("_", "-")
        with pytest.raises(SystemExit) as exit_:
            main(["everything", str(path), flag, str(value), "--model", str(cli_model),
                  "--out", str(tmp_path / "o")])
        assert exit_.value.code == 2 and f"argument {flag}: {expected}" in capsys.readouterr().err
    else:
        client, image_id = request.getfixturevalue("server")
        response = client.post(f"/v1/images/{image_id}/everything", json={option: value})
        assert response.status_code == 422
        assert response.json()["field"] == option and expected in response.json()["detail"]


def test_torch_and_onnx_paths_pack_the_same_prompts(tiny_sam, fake_onnx, image, monkeypatch):
    """SamPredictor and the ONNX runtime feed the decoder identical point lists."""
    import mobile_sam.predictor as predictor_module

    seen = []
    decode = predictor_module.decode_masks

    def recording(runner, cache, points, labels, *args):
        seen.append((points.cpu().numpy(), labels.cpu().numpy()))
        return decode(runner, cache, points, labels, *args)

    monkeypatch.setattr(predictor_module, "decode_masks", recording)
    torch_p = SamPredictor(tiny_sam)
    torch_p.set_image(image)
    fake_onnx.set_image(image)
    prompts = [
        {"point_coords": np.array([[3.25, 7.5], [W, H]]), "point_labels": np.array([1, 0])},
        {"box": np.array([1.5, 2.0, 30.25, 29.0])},
        {"point_coords": np.array([[10.0, 11.0]]), "point_labels": np.array([1]),
         "box": np.array([0, 0, W, H])},
    ]
    for prompt in prompts:
        torch_p.predict(**prompt)
        fake_onnx.predict(**prompt)
        feeds = fake_onnx.decoder.feeds
        np.testing.assert_array_equal(seen[-1][0], feeds["point_coords"])
        np.testing.assert_array_equal(seen[-1][1], feeds["point_labels"])
    torch_p.predict_point_batch(np.array([[1.0, 2.0], [W, H]]))
    fake_onnx.predict_point_batch(np.array([[1.0, 2.0], [W, H]]))
    got = np.concatenate([c for c, _ in seen[len(prompts):]])
    np.testing.assert_array_equal(got, fake_onnx.decoder.feeds["point_coords"])
