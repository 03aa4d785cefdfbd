"""The page in a real headless Chromium (Playwright): upload, click, right-click, undo, drag a
box, "everything", downloads. Every check compares pixels or files with masks computed by the
library itself, so a wrong coordinate mapping or a wrong overlay fails."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
from mobile_sam.masks import coco_to_mask
from mobile_sam.serve import BackgroundServer, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    message = ("no Chromium on PATH (Debian: apt-get install chromium); "
               "never `playwright install` here")
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
WIDTH, HEIGHT = 640, 480
# Chromium logs every 4xx response; the page shows the server's message instead.
EXPECTED_CONSOLE_ERROR = "Failed to load resource: the server responded with a status of 4"

pytestmark = pytest.mark.slow


def test_image() -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([xx * 200 / WIDTH + 20, yy * 200 / HEIGHT + 20,
                      np.full(xx.shape, 60.0)], axis=-1)
    image[(xx - 400) ** 2 + (yy - 200) ** 2 < 90**2] = (230, 220, 40)
    return image.astype(np.uint8)


test_image.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def server(tiny_sam):
    with BackgroundServer(create_app(tiny_sam)) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    # A narrow window, so the 640-px image is shown scaled down and clicks must be mapped.
    context = browser.new_context(viewport={"width": 520, "height": 700}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and not
            msg.text.startswith(EXPECTED_CONSOLE_ERROR) else None)
    page.goto(server.url)
    yield page
    context.close()
    assert not errors, errors


def canvas_pixels(page) -> np.ndarray:
    url = page.evaluate("document.getElementById('view').toDataURL('image/png')")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def wait_idle(page, renders_before: int) -> None:
    page.wait_for_function(
        "([n]) => document.body.dataset.busy === '0' && "
        "Number(document.getElementById('view').dataset.renders || 0) > n",
        arg=[renders_before], timeout=30_000)


def renders(page) -> int:
    return int(page.evaluate("Number(document.getElementById('view').dataset.renders || 0)"))


def act(page, action):
    """Run a page action that triggers one predict; returns the request body and response."""
    before = renders(page)
    with page.expect_response(lambda r: r.url.endswith("/predict")) as response_info:
        action()
    response = response_info.value
    assert response.status == 200, response.text()
    wait_idle(page, before)
    return response.request.post_data_json, response.json()


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    box = page.locator("#view").bounding_box()
    return box["x"] + x * box["width"] / WIDTH, box["y"] + y * box["height"] / HEIGHT


def mask_of(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im) > 127


def test_page_click_box_everything_and_downloads(page, server, tiny_sam, tmp_path):
    image = test_image()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)

    # Upload through the file input.
    before = renders(page)
    page.set_input_files("#file-input", str(path))
    wait_idle(page, before)
    assert "640\u00d7480" in page.text_content("#status")
    shown = page.locator("#view").bounding_box()
    assert 300 < shown["width"] < 600  # displayed scaled: the mapping is exercised
    plain = canvas_pixels(page)
    np.testing.assert_array_equal(plain, image)

    # Click: a positive point at image pixel (400, 200), mapped from the scaled canvas.
    request, result = act(page, lambda: page.mouse.click(*to_screen(page, 400, 200)))
    (x, y), = request["point_coords"]
    assert request["point_labels"] == [1] and request["multimask_output"] is True
    assert abs(x - 400) <= 1.5 and abs(y - 200) <= 1.5
    best = int(np.argmax(result["scores"]))
    want = predictor.predict(np.array(request["point_coords"]), np.array([1]))[0][best]
    np.testing.assert_array_equal(mask_of(result["masks"][best]), want)
    # The overlay: every mask pixel changed; outside it, only the point marker did.
    changed = np.any(canvas_pixels(page) != plain, axis=-1)
    assert 0.2 < want.mean() < 0.9
    assert changed[want].mean() > 0.99
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    near_point = (xx - x) ** 2 + (yy - y) ** 2 <= 12**2
    assert not (changed & ~want & ~near_point).any()
    assert page.locator("#mask-choice button").count() == 3

    # Right-click and Shift+click add negative points; Undo removes the last one.
    request, _ = act(page, lambda: page.mouse.click(*to_screen(page, 100, 400), button="right"))
    assert request["point_labels"] == [1, 0]
    page.keyboard.down("Shift")
    request, _ = act(page, lambda: page.mouse.click(*to_screen(page, 50, 50)))
    page.keyboard.up("Shift")
    assert request["point_labels"] == [1, 0, 0]
    request, _ = act(page, lambda: page.click("#undo"))
    assert request["point_labels"] == [1, 0]

    # Clear, single-mask mode, then drag a box.
    page.click("#clear")
    page.wait_for_function("() => document.body.dataset.busy === '0'")
    np.testing.assert_array_equal(canvas_pixels(page), image)
    page.uncheck("#multimask")

    def drag():
        page.mouse.move(*to_screen(page, 300, 100))
        page.mouse.down()
        for t in np.linspace(0, 1, 6)[1:]:
            page.mouse.move(*to_screen(page, 300 + 200 * t, 100 + 220 * t))
        page.mouse.up()

    request, result = act(page, drag)
    assert "point_coords" not in request and request["multimask_output"] is False
    np.testing.assert_allclose(request["box"], [300, 100, 500, 320], atol=1.5)
    want = predictor.predict(box=np.array(request["box"]), multimask_output=False)[0][0]
    changed = np.any(canvas_pixels(page) != plain, axis=-1)
    assert changed[want].mean() > 0.99

    # Download the mask PNG: the predictor's mask for that box, at the image's size.
    with page.expect_download() as download_info:
        page.click("#download-png")
    saved = tmp_path / "mask.png"
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename == "scene_mask.png"
    with Image.open(saved) as im:
        assert im.size == (WIDTH, HEIGHT) and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im) > 127, want)

    # Everything: every mask coloured; the COCO download holds the same masks.
    page.click(".options summary")
    page.fill("#opt-points", "4")
    page.fill("#opt-iou", "0")
    page.fill("#opt-stability", "0")
    before = renders(page)
    with page.expect_response(lambda r: r.url.endswith("/everything")) as response_info:
        page.click("#everything")
    records = response_info.value.json()["masks"]
    wait_idle(page, before)
    options = response_info.value.request.post_data_json
    assert options["points_per_side"] == 4 and options["pred_iou_thresh"] == 0
    want_records = SamAutomaticMaskGenerator(
        tiny_sam, output_mode="coco_rle", points_per_side=4, pred_iou_thresh=0.0,
        stability_score_thresh=0.0).generate(image)
    assert [r["segmentation"] for r in records] == [r["segmentation"] for r in want_records]
    assert f"{len(records)} masks found" in page.text_content("#status")
    union = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for record in records:
        union |= coco_to_mask(record["segmentation"])
    changed = np.any(canvas_pixels(page) != plain, axis=-1)
    np.testing.assert_array_equal(changed, union)  # the page decoded every RLE correctly

    with page.expect_download() as download_info:
        page.click("#download-coco")
    saved = tmp_path / "masks.json"
    download_info.value.save_as(saved)
    coco = json.loads(saved.read_text())
    assert coco["images"] == [{"id": 1, "file_name": "scene.png", "width": WIDTH, "height": HEIGHT}]
    assert [a["segmentation"] for a in coco["annotations"]] == [r["segmentation"] for r in records]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(records) + 1))


def test_page_shows_server_errors_and_docs_render(page, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    assert "not an image" in page.text_content("#status")
    assert page.locator("#everything").is_disabled()

    page.goto(server.url + "docs")
    page.wait_for_selector(".endpoint")
    titles = page.locator(".endpoint h2").all_text_contents()
    assert len(titles) == 6
    assert any("POST/v1/images/{id}/predict" in t.replace(" ", "") for t in titles)
    text = page.text_content("#endpoints")
    assert "point_coords" in text and "points_per_side" in text  # both request bodies listed


def test_page_asks_for_the_access_token_once(browser, tiny_sam, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(test_image()).save(path)
    with BackgroundServer(create_app(tiny_sam, token="s3cret")) as guarded:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        asked: list[str] = []

        def answer(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept("s3cret")

        page.on("dialog", answer)
        page.goto(guarded.url)
        before = renders(page)
        with page.expect_response(lambda r: r.url.endswith("/v1/images") and r.status == 200
                                  ) as uploaded:
            page.set_input_files("#file-input", str(path))
        wait_idle(page, before)
        assert asked == ["This server needs an access token:"]
        assert uploaded.value.request.headers["authorization"] == "Bearer s3cret"
        # Later calls send the kept token without asking again.
        request, result = act(page, lambda: page.mouse.click(*to_screen(page, 400, 200)))
        assert result["masks"] and len(asked) == 1
        context.close()
