"""The web service: every endpoint against the library computed directly, every client error
(status, field and message), the cache, concurrency, and the `serve` subcommand."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import struct
import threading
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette.testclient prefers the httpx2 fork and warns on import when it finds httpx.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

import mobile_sam
from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
from mobile_sam.cli import main
from mobile_sam.io import load_image
from mobile_sam.masks import coco_to_mask, mask_to_rle, masks_to_boxes, rle_to_coco
from mobile_sam.serve import BackgroundServer, create_app
from mobile_sam.serve import export as export_module
from mobile_sam.serve.engine import Engine

PACKAGE_DIR = str(Path(mobile_sam.__file__).resolve().parent)


# ------------------------------------------------------------------------------ helpers


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def smooth_image(seed: int, h: int = 90, w: int = 120) -> np.ndarray:
    """A photo-like image: smooth colour gradients plus a bright disc."""
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 90.0)], axis=-1)
    cx, cy = gen.integers(w // 4, 3 * w // 4), gen.integers(h // 4, 3 * h // 4)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (min(h, w) // 4) ** 2
    base[disc] = gen.integers(150, 256, 3)
    return np.clip(base + gen.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def decode_png_mask(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.mode == "L"
        values = np.asarray(im)
    assert set(np.unique(values)) <= {0, 255}
    return values > 127


def upload(client, data: bytes, name: str = "image.png"):
    return client.post("/v1/images", files={"file": (name, data, "application/octet-stream")})


def assert_error(response, status: int, field: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], body
    assert PACKAGE_DIR not in response.text  # never echo server paths


class CallCounter:
    """Counts image encodings (`Engine.encode`, whatever the encoder backend) and prompt
    decodes (each runs the torch IoU head once on the torch backend the tests use), and the
    most model calls that ever ran at the same time."""

    def __init__(self, model) -> None:
        self.encoder = 0
        self.decoder = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._handles = []
        for module in [model.image_encoder, model.mask_decoder.iou_prediction_head]:
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args):
        with self._lock:
            self.decoder += module is not self._image_encoder
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.002)  # widen the window in which overlapping calls would show

    def _leave(self, module, args, output):
        with self._lock:
            self.active -= 1

    def count_encode(self) -> None:
        with self._lock:
            self.encoder += 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def counter(tiny_sam, monkeypatch):
    calls = CallCounter(tiny_sam)
    calls._image_encoder = tiny_sam.image_encoder
    encode = Engine.encode

    def counting_encode(self, *args, **kwargs):
        calls.count_encode()
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "encode", counting_encode)
    yield calls
    calls.remove()


@pytest.fixture
def client(tiny_sam):
    with TestClient(create_app(tiny_sam)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def image_a() -> np.ndarray:
    return smooth_image(1)


@pytest.fixture(scope="module")
def image_b() -> np.ndarray:
    return smooth_image(2, 70, 100)


def direct(model, image: np.ndarray, **prompt):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    args = {k: None if v is None else np.asarray(v) for k, v in prompt.items()
            if k != "multimask_output"}
    return predictor.predict(**args, multimask_output=prompt.get("multimask_output", True))


# ------------------------------------------------------------------------------ upload


def test_upload_returns_id_size_and_reuses_the_embedding(client, tiny_sam, counter, image_a):
    data = png_bytes(image_a)
    first = upload(client, data)
    assert first.status_code == 200, first.text
    info = first.json()
    assert info == {"id": hashlib.sha256(data).hexdigest(), "width": 120, "height": 90,
                    "cached": False}
    assert counter.encoder == 1
    again = upload(client, data, name="other-name.png")
    assert again.json() == {**info, "cached": True}
    assert counter.encoder == 1  # the same bytes: embedding reused
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["cached_images"] == 1
    assert health["cache_bytes"] >= len(data) + 32 * 16 * 16 * 4
    assert health["model_input_size"] == 256


def test_upload_jpeg_and_gray(client, image_a):
    buffer = io.BytesIO()
    Image.fromarray(image_a[:, :, 0]).save(buffer, format="JPEG")
    response = upload(client, buffer.getvalue(), "gray.jpg")
    assert response.status_code == 200
    assert (response.json()["width"], response.json()["height"]) == (120, 90)


# ------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("prompt", [
    {"point_coords": [[30.5, 40.0]], "point_labels": [1]},
    {"point_coords": [[30.5, 40.0], [100, 10]], "point_labels": [1, 0], "multimask_output": False},
    {"box": [10, 12, 80, 70], "multimask_output": False},
    {"point_coords": [[60, 45]], "point_labels": [1], "box": [0, 0, 120, 90]},
])
def test_predict_png_equals_the_predictor(client, tiny_sam, image_a, prompt):
    image_id = upload(client, png_bytes(image_a)).json()["id"]
    response = client.post(f"/v1/images/{image_id}/predict", json=prompt)
    assert response.status_code == 200, response.text
    body = response.json()
    want_masks, want_scores, _ = direct(tiny_sam, image_a, **prompt)
    masks = np.stack([decode_png_mask(m) for m in body["masks"]])
    assert body["mask_format"] == "png" and (body["width"], body["height"]) == (120, 90)
    count = 3 if prompt.get("multimask_output", True) else 1
    assert masks.shape == want_masks.shape == (count, 90, 120)
    np.testing.assert_array_equal(masks, want_masks)
    np.testing.assert_allclose(body["scores"], want_scores, rtol=0, atol=1e-6)
    assert body["boxes"] == masks_to_boxes(want_masks).tolist()
    assert body["areas"] == [int(m.sum()) for m in want_masks]


def test_predict_rle_equals_png(client, image_a):
    image_id = upload(client, png_bytes(image_a)).json()["id"]
    prompt = {"point_coords": [[20, 20], [90, 60]], "point_labels": [1, 1]}
    png = client.post(f"/v1/images/{image_id}/predict", json=prompt).json()
    rle = client.post(f"/v1/images/{image_id}/predict",
                      json={**prompt, "mask_format": "rle"}).json()
    assert rle["mask_format"] == "rle"
    for png_mask, record in zip(png["masks"], rle["masks"], strict=True):
        assert record["size"] == [90, 120] and isinstance(record["counts"], str)
        np.testing.assert_array_equal(coco_to_mask(record), decode_png_mask(png_mask))
    assert rle["scores"] == png["scores"] and rle["boxes"] == png["boxes"]


# ------------------------------------------------------------------------------ everything


def test_everything_equals_the_generator_and_reuses_the_embedding(client, tiny_sam, counter,
                                                                  image_a):
    image_id = upload(client, png_bytes(image_a)).json()["id"]
    # The tiny random model's logits are all near 0: no thresholds, no NMS, to keep many masks.
    options = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
               "box_nms_thresh": 1.0, "min_mask_region_area": 20}
    before = counter.encoder
    response = client.post(f"/v1/images/{image_id}/everything", json=options)
    assert response.status_code == 200, response.text
    assert counter.encoder == before  # whole-image crop: the cached embedding
    body = response.json()
    want = SamAutomaticMaskGenerator(tiny_sam, output_mode="coco_rle", **options).generate(image_a)
    assert (body["width"], body["height"]) == (120, 90)
    assert len(body["masks"]) == len(want) > 50
    for got, ref in zip(body["masks"], want, strict=True):
        assert got["segmentation"] == ref["segmentation"]
        assert got["area"] == ref["area"] == int(coco_to_mask(got["segmentation"]).sum())
        assert got["bbox"] == ref["bbox"] and got["crop_box"] == ref["crop_box"]
        assert got["point_coords"] == ref["point_coords"]
        assert got["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-6)
        assert got["stability_score"] == pytest.approx(ref["stability_score"], abs=1e-6)


def test_everything_with_crops_embeds_only_the_crops(client, tiny_sam, counter, image_a):
    image_id = upload(client, png_bytes(image_a)).json()["id"]
    options = {"points_per_side": 4, "crop_n_layers": 1, "pred_iou_thresh": 0.0,
               "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0}
    before = counter.encoder
    body = client.post(f"/v1/images/{image_id}/everything", json=options).json()
    assert counter.encoder - before == 4  # the four crops; not the whole image again
    want = SamAutomaticMaskGenerator(tiny_sam, output_mode="coco_rle", **options).generate(image_a)
    assert len(want) > 20
    assert [m["segmentation"] for m in body["masks"]] == [m["segmentation"] for m in want]


def test_everything_defaults_without_body(client, image_a):
    image_id = upload(client, png_bytes(image_a)).json()["id"]
    response = client.post(f"/v1/images/{image_id}/everything")
    assert response.status_code == 200
    assert response.json()["width"] == 120


# ------------------------------------------------------------------------------ embedding, delete


def test_embedding_npy_equals_the_predictor(client, tiny_sam, image_b):
    image_id = upload(client, png_bytes(image_b)).json()["id"]
    response = client.get(f"/v1/images/{image_id}/embedding")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert f'filename="{image_id}.npy"' in response.headers["content-disposition"]
    assert response.headers["x-original-size"] == "70,100"
    assert response.headers["x-input-size"] == "179,256"  # longest side 100 -> 256
    got = np.load(io.BytesIO(response.content), allow_pickle=False)
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image_b)
    assert got.dtype == np.float32 and got.shape == (1, 32, 16, 16)
    np.testing.assert_array_equal(got, predictor.get_image_embedding().numpy())


def test_delete_then_unknown(client, image_a):
    image_id = upload(client, png_bytes(image_a)).json()["id"]
    assert client.delete(f"/v1/images/{image_id}").status_code == 204
    assert client.get("/health").json()["cached_images"] == 0
    assert_error(client.delete(f"/v1/images/{image_id}"), 404, "id", "unknown image")
    assert_error(client.post(f"/v1/images/{image_id}/predict", json={"box": [0, 0, 5, 5]}),
                 404, "id", image_id)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("method, suffix", [("post", "/predict"), ("post", "/everything"),
                                            ("get", "/embedding"), ("delete", "")])
def test_unknown_id(client, method, suffix):
    kwargs = {"json": {"box": [0, 0, 1, 1]}} if suffix == "/predict" else {}
    response = getattr(client, method)(f"/v1/images/{'0' * 64}{suffix}", **kwargs)
    assert_error(response, 404, "id", "unknown image", "POST /v1/images")


@pytest.fixture
def image_id(client, image_a):
    return upload(client, png_bytes(image_a)).json()["id"]


@pytest.mark.parametrize("body, status, field, words", [
    (b"{not json", 400, "body", ["invalid JSON"]),
    (b'{"point_coords": [[1, 2]], "point_labels": [1]', 400, "body", ["invalid JSON"]),
    ({"point_coords": [[130, 20]], "point_labels": [1]}, 422, "point_coords",
     ["point_coords[0] = (130, 20)", "outside the image", "0 <= x <= 120"]),
    ({"point_coords": [[10, 20], [5, -1]], "point_labels": [1, 1]}, 422, "point_coords",
     ["point_coords[1]", "outside"]),
    ({"box": [10, 91, 50, 120]}, 422, "box",
     ["box = (10, 91, 50, 120) does not overlap the image", "[0, 90]"]),
    ({"box": [50, 10, 10, 40]}, 422, "box", ["x1 >= x0"]),
    ({"point_coords": [[10, 20], [30, 40]], "point_labels": [1]}, 422, "point_labels",
     ["point_labels must have shape (2,)"]),
    ({"point_coords": [[10, 20]]}, 422, "point_coords", ["given together"]),
    ({"point_coords": [[10, 20]], "point_labels": [2]}, 422, "point_labels", ["got [2]"]),
    ({"point_coords": [[10, 20, 3]], "point_labels": [1]}, 422, "point_coords", ["point_coords.0"]),
    ({"point_coords": [["a", 2]], "point_labels": [1]}, 422, "point_coords", ["point_coords.0.0"]),
    ({"box": [1, 2, 3]}, 422, "box", ["box"]),
    ({}, 422, "point_coords", ["give points"]),
    ({"box": [0, 0, 5, 5], "mask_format": "jpeg"}, 422, "mask_format", ["png", "rle"]),
    ({"box": [0, 0, 5, 5], "colour": 1}, 422, "colour", ["Extra inputs"]),
    ([1, 2], 422, "body", ["body"]),
])
def test_predict_errors(client, image_id, body, status, field, words):
    if isinstance(body, bytes):
        response = client.post(f"/v1/images/{image_id}/predict", content=body,
                               headers={"content-type": "application/json"})
    else:
        response = client.post(f"/v1/images/{image_id}/predict", json=body)
    assert_error(response, status, field, *words)


def test_json_body_size_is_bounded(client, image_id):
    points = [[1.0, 2.0]] * 100_000  # about 1.5 MB of JSON
    response = client.post(f"/v1/images/{image_id}/predict",
                           json={"point_coords": points, "point_labels": [1] * len(points)})
    assert_error(response, 413, "body", f"limit of {2**20} bytes")


def test_predict_nan_is_refused(client, image_id):
    response = client.post(f"/v1/images/{image_id}/predict",
                           content=b'{"point_coords": [[NaN, 1]], "point_labels": [1]}',
                           headers={"content-type": "application/json"})
    assert_error(response, 422, "point_coords", "finite")


@pytest.mark.parametrize("options, field, words", [
    ({"pred_iou_thresh": 1.5}, "pred_iou_thresh",
     ["pred_iou_thresh must be a number in [0, 1], got 1.5"]),
    ({"points_per_side": 0}, "points_per_side", ["must be an integer in [1, 256], got 0"]),
    ({"crop_n_layers": -1}, "crop_n_layers", ["crop_n_layers must be an integer in [0, 4]"]),
    ({"points_per_side": 3, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2},
     "points_per_side", ["leaves no points in crop layer 2"]),
    ({"points_per_side": 500}, "points_per_side", ["less than or equal to 64"]),
    ({"crop_n_layers": 3}, "crop_n_layers", ["less than or equal to 2"]),
    ({"output_mode": "binary_mask"}, "output_mode", ["Extra inputs"]),
])
def test_everything_errors(client, image_id, options, field, words):
    response = client.post(f"/v1/images/{image_id}/everything", json=options)
    assert_error(response, 422, field, *words)


def test_upload_errors(tiny_sam, image_a):
    data = png_bytes(image_a)
    with TestClient(create_app(tiny_sam, max_upload_bytes=len(data) - 1)) as small:
        assert_error(upload(small, data), 413, "file", f"limit of {len(data) - 1} bytes")
    with TestClient(create_app(tiny_sam, max_pixels=120 * 90 - 1)) as few:
        assert_error(upload(few, data), 413, "file", "more pixels", "10799")
        assert few.get("/health").json()["cached_images"] == 0
    with TestClient(create_app(tiny_sam)) as client:
        assert_error(upload(client, b"GIF89a not really"), 415, "file", "not an image")
        assert_error(upload(client, data[: len(data) // 2]), 415, "file", "not an image")
        assert_error(upload(client, b""), 422, "file", "empty")
        response = client.post("/v1/images", files={"image": ("a.png", data, "image/png")})
        assert_error(response, 422, "file", "field named 'file'")
        response = client.post("/v1/images", content=data, headers={"content-type": "image/png"})
        assert_error(response, 415, "file", "multipart/form-data", "image/png")
        response = client.post("/v1/images", content=b"--x\r\nbroken",
                               headers={"content-type": "multipart/form-data; boundary=x"})
        assert_error(response, 422, "file", "missing")
        response = client.post("/v1/images", content=b"abc",
                               headers={"content-type": "multipart/form-data"})
        assert_error(response, 400, "file", "malformed multipart", "boundary")
        two = [("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))]
        assert_error(client.post("/v1/images", files=two), 400, "file", "multipart")


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header announces width x height: a few hundred bytes that
    would decode to gigabytes."""
    small = png_bytes(np.zeros((8, 8), dtype=np.uint8))
    assert small[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + small[24:29]
    return small[:8] + small[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]


def test_decompression_bomb_is_refused_from_the_header(client):
    data = bomb_png(60_000, 60_000)  # 3.6 G pixels, ~10 GB decoded
    assert len(data) < 1000
    start = time.perf_counter()
    assert_error(upload(client, data), 413, "file", "more pixels")
    assert time.perf_counter() - start < 5


async def _asgi_upload(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]):
    """Send a request body chunk by chunk; returns (status, body, chunks consumed)."""
    consumed = 0
    sent: list[dict] = []

    async def receive():
        nonlocal consumed
        if consumed < len(chunks):
            consumed += 1
            return {"type": "http.request", "body": chunks[consumed - 1],
                    "more_body": consumed < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/images", "raw_path": b"/v1/images",
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), consumed


def test_upload_limit_is_enforced_while_reading(tiny_sam):
    """A body without Content-Length is refused once it passes the limit, not after reading it
    all (and a declared Content-Length over the limit before reading anything)."""
    limit = 100_000
    app = create_app(tiny_sam, max_upload_bytes=limit)
    boundary = b"b0undary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n')
    chunks = [head] + [b"\0" * 65536] * 200  # 13 MB in all
    content_type = (b"content-type", b"multipart/form-data; boundary=" + boundary)
    status, body, consumed = asyncio.run(_asgi_upload(app, chunks, [content_type]))
    assert status == 413 and body["field"] == "file" and str(limit) in body["detail"]
    assert consumed <= 1 + 3  # stopped about 164 kB in (limit + multipart allowance)

    declared = (b"content-length", str(13 * 2**20).encode())
    status, body, consumed = asyncio.run(_asgi_upload(app, chunks, [content_type, declared]))
    assert status == 413 and consumed == 0


def test_entry_larger_than_the_cache_is_refused(tiny_sam, image_a):
    with TestClient(create_app(tiny_sam, cache_bytes=10_000)) as client:
        assert_error(upload(client, png_bytes(image_a)), 413, "file", "cache_bytes (10000)")


# ------------------------------------------------------------------------------ cache


def test_cache_evicts_least_recently_used(tiny_sam, counter):
    images = [png_bytes(smooth_image(seed, 40, 50)) for seed in range(3)]
    with TestClient(create_app(tiny_sam, cache_items=2)) as client:
        ids = [upload(client, data).json()["id"] for data in images[:2]]
        client.get(f"/v1/images/{ids[0]}/embedding")  # touch: ids[1] is now the oldest
        upload(client, images[2])
        assert client.get(f"/v1/images/{ids[0]}/embedding").status_code == 200
        assert client.get(f"/v1/images/{ids[1]}/embedding").status_code == 404
        assert client.get("/health").json()["cached_images"] == 2
        again = upload(client, images[1]).json()
        assert again["id"] == ids[1] and again["cached"] is False
        assert counter.encoder == 4

    one_entry = 32 * 16 * 16 * 4 + max(len(d) for d in images)
    with TestClient(create_app(tiny_sam, cache_bytes=one_entry + 10)) as client:
        first, second = (upload(client, d).json()["id"] for d in images[:2])
        assert client.get(f"/v1/images/{first}/embedding").status_code == 404
        assert client.get(f"/v1/images/{second}/embedding").status_code == 200
        assert client.get("/health").json()["cache_bytes"] <= one_entry + 10


def test_create_app_checks_its_limits(tiny_sam):
    with pytest.raises(ValueError, match=r"max_upload_bytes must be an integer in \[1, 2147483648\], got 0"):
        create_app(tiny_sam, max_upload_bytes=0)
    with pytest.raises(ValueError, match=r"cache_items must be an integer in \[1, 100000\], got 0"):
        create_app(tiny_sam, cache_items=0)
    with pytest.raises(TypeError, match="cache_bytes must be an integer .*, got float inf"):
        create_app(tiny_sam, cache_bytes=float("inf"))
    with pytest.raises(ValueError, match=r"everything_timeout must be a number in \[1, 86400\]"):
        create_app(tiny_sam, everything_timeout=0.5)
    with pytest.raises(TypeError, match="Sam model"):
        create_app("vit_t")
    with pytest.raises(RuntimeError, match="precision 'int8' is not available on backend 'torch'"):
        create_app(tiny_sam, backend="torch", precision="int8")


def test_apps_do_not_share_state(tiny_sam, image_a):
    with TestClient(create_app(tiny_sam)) as one, TestClient(create_app(tiny_sam)) as two:
        image_id = upload(one, png_bytes(image_a)).json()["id"]
        assert two.get(f"/v1/images/{image_id}/embedding").status_code == 404


# ------------------------------------------------------------------------------ concurrency


def test_concurrent_clients_on_different_images_never_mix(tiny_sam, counter, image_a, image_b):
    """Eight clients of a real server, predicting on two images in interleaved order: every
    answer is the one for its own image, and the model never runs two calls at once."""
    images = {"a": image_a, "b": image_b}
    prompts = [{"point_coords": [[x, y]], "point_labels": [1], "multimask_output": False}
               for x, y in [(10, 10), (50, 30), (90, 60), (30, 65)]]
    want = {(name, i): direct(tiny_sam, img, **p)[0] for name, img in images.items()
            for i, p in enumerate(prompts)}
    counter.encoder = counter.decoder = 0
    with BackgroundServer(create_app(tiny_sam)) as server:
        def work(worker: int) -> list[tuple[tuple[str, int], np.ndarray]]:
            out = []
            with httpx.Client(base_url=server.url, timeout=60) as http:
                ids = {}
                for name, img in images.items():  # every client uploads both images
                    response = http.post("/v1/images", files={"file": ("x.png", png_bytes(img))})
                    ids[name] = response.json()["id"]
                for step in range(8):
                    name = "ab"[(worker + step) % 2]
                    i = (worker * 3 + step) % len(prompts)
                    response = http.post(f"/v1/images/{ids[name]}/predict", json=prompts[i])
                    assert response.status_code == 200, response.text
                    out.append(((name, i), decode_png_mask(response.json()["masks"][0])))
            return out

        with ThreadPoolExecutor(8) as pool:
            results = [r for chunk in pool.map(work, range(8)) for r in chunk]
    assert len(results) == 64
    for key, mask in results:
        np.testing.assert_array_equal(mask, want[key][0], err_msg=str(key))
    assert counter.encoder == 2  # sixteen uploads of two images: two embeddings
    assert counter.decoder == 64
    assert counter.max_active == 1


# ------------------------------------------------------------------------------ export


def export_masks() -> tuple[np.ndarray, np.ndarray]:
    """Two masks of a 40 x 60 image: a ring (a hole), and two squares plus a lone pixel (a
    part too thin for a polygon through pixel centres)."""
    yy, xx = np.mgrid[0:40, 0:60]
    ring = ((xx - 20) ** 2 + (yy - 20) ** 2 < 14**2) & ((xx - 20) ** 2 + (yy - 20) ** 2 >= 5**2)
    squares = np.zeros((40, 60), dtype=bool)
    squares[5:15, 40:50] = True
    squares[25:35, 45:55] = True
    squares[2, 2] = True
    return ring, squares


def export_body(**image_fields) -> dict:
    ring, squares = export_masks()
    image = {"file_name": "site/a.png", "width": 60, "height": 40, "objects": [
        {"label": "ring", "mask": rle_to_coco(mask_to_rle(ring[None])[0]), "score": 0.75},
        {"label": "squares", "mask": rle_to_coco(mask_to_rle(squares[None])[0])},
    ]}
    return {"images": [{**image, **image_fields}]}


def library_images(body: dict) -> list:
    """The same request as the library's AnnotatedImage s, decoded independently."""
    from mobile_sam.formats import AnnotatedImage, Annotation

    return [AnnotatedImage(im["file_name"], im["height"], im["width"],
                           [Annotation(coco_to_mask(o["mask"]), o["label"], o.get("score"))
                            for o in im["objects"]])
            for im in body["images"]]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_export_coco_loads_in_pycocotools(client, tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco")
    body = export_body()
    second = {**export_body()["images"][0], "file_name": "b.png"}
    second["objects"] = second["objects"][1:]
    body["images"].append(second)
    response = client.post("/v1/export/coco", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="annotations.json"'
    path = tmp_path / "annotations.json"
    path.write_bytes(response.content)
    coco = coco_api.COCO(str(path))
    assert [im["file_name"] for im in coco.loadImgs(coco.getImgIds())] == ["site/a.png", "b.png"]
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == ["ring", "squares"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert [(a["image_id"], names[a["category_id"]]) for a in anns] == [
        (1, "ring"), (1, "squares"), (2, "squares")]
    ring, squares = export_masks()
    for ann, mask in zip(anns, [ring, squares, squares]):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)  # holes kept
    assert anns[0]["score"] == 0.75 and "score" not in anns[1]
    polygons = client.post("/v1/export/coco", json={**body, "segmentation": "polygon"}).json()
    assert all(isinstance(a["segmentation"], list) for a in polygons["annotations"])


def test_export_yolo_zip_is_the_library_dataset(client):
    from mobile_sam.formats import yolo_lines

    body = export_body()
    response = client.post("/v1/export/yolo", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="yolo_dataset.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["classes.txt", "site/a.txt"]
        assert archive.read("classes.txt").decode() == "ring\nsquares\n"
        lines = archive.read("site/a.txt").decode().splitlines()
    assert lines == yolo_lines(library_images(body)[0], ["ring", "squares"])
    # One line per object, normalised polygons around the object's pixels.
    ring, squares = export_masks()
    for line, mask in zip(lines, [ring, squares]):
        values = np.array(line.split()[1:], dtype=float).reshape(-1, 2) * [60, 40]
        ys, xs = np.nonzero(mask)
        assert xs.min() - 1 <= values[:, 0].min() and values[:, 0].max() <= xs.max() + 2
        assert ys.min() - 1 <= values[:, 1].min() and values[:, 1].max() <= ys.max() + 2
    assert [line.split()[0] for line in lines] == ["0", "1"]


def test_export_labelme_json_or_zip(client):
    from mobile_sam.formats import labelme_json

    body = export_body(file_name="a.png")
    response = client.post("/v1/export/labelme", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="a.json"'
    doc = response.json()
    assert doc == json.loads(json.dumps(labelme_json(library_images(body)[0])))
    assert (doc["imagePath"], doc["imageHeight"], doc["imageWidth"]) == ("a.png", 40, 60)
    shapes = doc["shapes"]
    assert {s["shape_type"] for s in shapes} == {"polygon"}
    assert [s["label"] for s in shapes].count("ring") >= 1
    assert [s["label"] for s in shapes].count("squares") == 3  # three parts
    # Any file name makes a valid header: plain ASCII, and the exact name per RFC 6266.
    response = client.post("/v1/export/labelme", json=export_body(file_name='Fotoğraf "1".png'))
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"Foto_raf__1_.json\"; "
        "filename*=UTF-8''Foto%C4%9Fraf%20%221%22.json")
    body["images"].append({**body["images"][0], "file_name": "b.png"})
    response = client.post("/v1/export/labelme", json=body)
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["a.json", "b.json"]


def test_export_formats_are_the_library_formats():
    from mobile_sam.formats import FORMATS
    from mobile_sam.serve.schemas import EXPORT_FORMATS

    assert tuple(EXPORT_FORMATS) == FORMATS


def _with(path: str, value):
    body = export_body()
    node = body
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key) if key.isdigit() else key]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return body


@pytest.mark.parametrize("fmt, body, status, field, words", [
    ("xml", export_body(), 422, "format", ["unknown dataset format 'xml'", "coco, yolo"]),
    ("coco", {}, 422, "images", ["images", "Field required"]),
    ("coco", {"images": []}, 422, "images", ["at least 1"]),
    ("coco", _with("images.0.width", 61), 422, "images",
     ["images.0.objects.0.mask: size is [40, 60], expected [40, 61]"]),
    ("coco", _with("images.0.objects.1.mask.counts", "Q"), 422, "images",
     ["images.0.objects.1.mask", "not a complete"]),
    ("coco", _with("images.0.objects.0.mask", rle_to_coco({"size": [40, 60], "counts": [5, 2]})),
     422, "images", ["counts cover 7 pixels, expected 40*60=2400"]),
    ("coco", _with("images.0.objects.0.mask",
                   rle_to_coco({"size": [40, 60], "counts": [2000, -10, 410]})),
     422, "images", ["negative run"]),
    ("yolo", _with("images.0.objects.0.label", ""), 422, "images", ["label", "at least 1"]),
    ("yolo", _with("images.0.objects.0.label", "two\nlines"), 422, "images", ["label"]),
    ("coco", _with("images.0.objects.0.label", "   "), 422, "images", ["label", "non-empty"]),
    ("coco", _with("images.0.objects.0.score", "high"), 422, "images", ["score"]),
    ("coco", _with("images.0.objects.0.colour", 3), 422, "images", ["Extra inputs"]),
    ("labelme", _with("images.0.file_name", "../up.png"), 422, "images", ["relative path"]),
    ("coco", {"images": export_body()["images"], "segmentation": "mesh"}, 422, "segmentation",
     ["rle", "polygon"]),
])
def test_export_errors(client, fmt, body, status, field, words):
    assert_error(client.post(f"/v1/export/{fmt}", json=body), status, field, *words)


def test_export_duplicate_names_and_limits(tiny_sam, monkeypatch):
    body = export_body()
    body["images"].append(body["images"][0])
    with TestClient(create_app(tiny_sam, max_pixels=2000)) as small:
        response = small.post("/v1/export/yolo", json=body)
        assert_error(response, 413, "images", "images.0: 60x40", "(2000)")
    with TestClient(create_app(tiny_sam)) as client:
        response = client.post("/v1/export/yolo", json=body)
        assert_error(response, 422, "images", "'site/a.png' and 'site/a.png'", "site/a.txt",
                     "different file names")
        assert "mobile_sam_export-" not in response.text  # no temporary folder in the answer
        monkeypatch.setattr(export_module, "MAX_EXPORT_MASK_PIXELS", 4 * 2400 - 1)
        assert_error(client.post("/v1/export/coco", json=body), 413, "images",
                     "9600 mask pixels", "export fewer images")


# ------------------------------------------------------------------------------ page and docs


def test_page_docs_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<canvas id="view"' in page.text and "/static/app.js" in page.text
    for name in ["app.js", "style.css", "docs.js", "docs.css"]:
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == {("/v1/images", "post"), ("/v1/images/{id}/predict", "post"),
                      ("/v1/images/{id}/everything", "post"),
                      ("/v1/images/{id}/embedding", "get"), ("/v1/images/{id}", "delete"),
                      ("/v1/export/{format}", "post"), ("/health", "get")}
    upload_body = spec["paths"]["/v1/images"]["post"]["requestBody"]["content"]
    assert "file" in upload_body["multipart/form-data"]["schema"]["properties"]


def test_static_files_reference_nothing_outside_the_server():
    static = Path(PACKAGE_DIR) / "serve" / "static"
    files = sorted(static.iterdir())
    assert {f.name for f in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for needle in ["http://", "https://", "//cdn", "@import"]:
            assert needle not in text, f"{path.name} references {needle}"


# ------------------------------------------------------------------------------ CLI


def test_cli_serve_loads_the_model_once_and_binds_localhost(monkeypatch, fixture_checkpoint,
                                                            fixture_model, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    code = main(["serve", "--model", str(fixture_checkpoint), "--port", "0",
                 "--max-upload-mb", "2", "--cache-items", "3"])
    assert code == 0 and len(calls) == 1
    app, kwargs = calls[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 0
    assert app.state.limits["max_upload_bytes"] == 2 * 2**20
    assert app.state.cache.max_items == 3
    served = app.state.engine.model.state_dict()
    for key, value in fixture_model.state_dict().items():
        torch.testing.assert_close(served[key], value, rtol=0, atol=0, msg=key)
    err = capsys.readouterr().err
    assert "http://127.0.0.1:0/" in err and "warning" not in err


def test_cli_serve_warns_for_public_host_and_checks_arguments(monkeypatch, fixture_checkpoint,
                                                              capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert main(["serve", "--model", str(fixture_checkpoint), "--host", "0.0.0.0",
                 "--port", "0"]) == 0
    assert "warning: binding 0.0.0.0" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err == ("mobile-sam serve: error: --port must be an integer in "
                                       "[0, 65535], got '70000'\n")
    assert main(["serve", "--cache-items", "0"]) == 2
    assert "--cache-items must be an integer in [1, 100000], got '0'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ real model


def test_fixture_model_over_http_matches_golden(fixture_model, reference_dir, golden_arrays):
    """The real vit_t architecture through HTTP: embedding and a box+point prompt on the dog
    photo match the reference's golden outputs."""
    data = (reference_dir / "fixture_a" / "dog_517x333.png").read_bytes()
    with TestClient(create_app(fixture_model)) as client:
        info = upload(client, data).json()
        assert (info["width"], info["height"]) == (517, 333)
        npy = client.get(f"/v1/images/{info['id']}/embedding")
        embedding = np.load(io.BytesIO(npy.content))
        want = golden_arrays["dog_517x333/embedding"]
        assert np.abs(embedding - want).max() <= 2e-3
        assert np.linalg.norm(embedding - want) <= 2e-4 * np.linalg.norm(want)
        assert npy.headers["x-input-size"] == "660,1024"

        prompt = {"point_coords": [[310.25, 116.5]], "point_labels": [1],
                  "box": [155.0, 33.25, 465.25, 199.75], "multimask_output": False}
        body = client.post(f"/v1/images/{info['id']}/predict", json=prompt).json()
    base = "dog_517x333/box_point/"
    np.testing.assert_allclose(body["scores"], golden_arrays[base + "iou_predictions"], atol=1e-4)
    with torch.inference_mode():
        logits = fixture_model.postprocess_masks(
            torch.as_tensor(golden_arrays[base + "low_res_logits"])[None], (660, 1024),
            (333, 517))[0]
    care = np.abs(logits.numpy()) >= 2e-2
    got = decode_png_mask(body["masks"][0]) & care[0]
    ref = golden_arrays[base + "masks"][0] & care[0]
    assert ref.sum() > 1000
    assert (got & ref).sum() / (got | ref).sum() >= 0.99
    assert load_image(data).shape == (333, 517, 3)


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1)])
def test_thin_upload_is_422_and_the_connection_lives_on(tiny_sam, image_a, shape):
    """An image too thin for the model (the short side would resize to 0 pixels) gets the
    same refusal as in the Python API and the CLI; the keep-alive connection stays usable."""
    thin = png_bytes(np.full((*shape, 3), 200, np.uint8))
    with BackgroundServer(create_app(tiny_sam)) as server, \
            httpx.Client(base_url=server.url) as http:
        response = http.post("/v1/images", files={"file": ("thin.png", thin)})
        height, width = shape
        assert_error(response, 422, "file", f"image of {width}x{height} pixels (width x height)"
                     " is too thin for the model", "at most 512 times the short side")
        assert response.headers.get("connection") != "close"
        assert http.post("/v1/images", files={"file": ("a.png", png_bytes(image_a))}
                         ).status_code == 200
