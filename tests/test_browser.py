"""The page in a real headless Chromium (Playwright): upload, click, right-click, undo, drag a
box, labelled objects, hover preview, shortcuts, "everything" candidates, reload, image
switching, downloads and dataset exports. Every check compares pixels or files with masks
computed by the library itself, so a wrong coordinate mapping or a wrong overlay fails."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
from mobile_sam.io import PALETTE
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
    # A narrow window, so the 640-px image is shown scaled down (beside the object list) and
    # clicks must be mapped.
    context = browser.new_context(viewport={"width": 860, "height": 820}, accept_downloads=True)
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


def is_preview(response) -> bool:
    return response.request.headers.get("x-purpose") == "preview"


def act(page, action):
    """Run a page action that triggers one predict (not a hover preview); returns the request
    body and response."""
    before = renders(page)
    with page.expect_response(lambda r: r.url.endswith("/predict") and not is_preview(r)
                              ) as response_info:
        action()
    response = response_info.value
    assert response.status == 200, response.text()
    wait_idle(page, before)
    return response.request.post_data_json, response.json()


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    box = page.locator("#view").bounding_box()
    return box["x"] + x * box["width"] / WIDTH, box["y"] + y * box["height"] / HEIGHT


def upload_file(page, path) -> None:
    before = renders(page)
    page.set_input_files("#file-input", str(path))
    wait_idle(page, before)


def saved_work(page, path) -> dict:
    """The page's saved work on the image file ``path`` (localStorage, keyed by its sha256)."""
    key = "mobile-sam:work:" + hashlib.sha256(path.read_bytes()).hexdigest()
    text = page.evaluate("(key) => localStorage.getItem(key)", key)
    return None if text is None else json.loads(text)


def chosen_mask(obj: dict) -> np.ndarray:
    return coco_to_mask(obj["masks"][obj["chosen"]])


def changed_pixels(page, plain: np.ndarray) -> np.ndarray:
    return np.any(canvas_pixels(page) != plain, axis=-1)


def near(x: float, y: float, radius: float = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (xx - x) ** 2 + (yy - y) ** 2 <= radius**2


def labels_in_list(page) -> list[str]:
    return page.eval_on_selector_all("#objects .label", "nodes => nodes.map(n => n.value)")


def set_label(page, index: int, text: str) -> None:
    field = page.locator("#objects .label").nth(index)
    field.fill(text)
    field.press("Enter")


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` without the pixels within ``steps`` (4-neighbour) of its border or the image's."""
    inner = mask.copy()
    for _ in range(steps):
        padded = np.pad(inner, 1)
        inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                 & padded[1:-1, 2:])
    return inner


def assert_drawn_in(shown: np.ndarray, plain: np.ndarray, mask: np.ndarray, colour,
                    other: np.ndarray, above: np.ndarray) -> None:
    """Inside ``mask`` (away from the ``other`` objects), the page's tint (alpha 0.45) of
    ``colour`` over the image; on the mask's border (unless an object drawn ``above`` covers
    it), the colour itself: the outline."""
    colour = np.array(colour, dtype=np.float64)
    inside = erode(mask, 2) & ~other
    tint = 0.45 * colour + 0.55 * plain[inside]
    assert inside.sum() > 50
    assert np.abs(shown[inside] - tint).max() <= 2.5
    edge = mask & ~erode(mask, 1) & ~above
    assert edge.sum() > 20
    np.testing.assert_array_equal(shown[edge], np.broadcast_to(colour, (edge.sum(), 3)))


def wait_for_objects(page, count: int) -> None:
    page.wait_for_function("(n) => document.querySelectorAll('#objects .object').length === n",
                           arg=count)


def press(page, key: str) -> None:
    """A shortcut that changes the canvas."""
    before = renders(page)
    page.keyboard.press(key)
    wait_idle(page, before)


def test_page_points_undo_cancel_box_and_png(page, server, tiny_sam, tmp_path):
    image = test_image()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)

    # Upload through the file input.
    upload_file(page, path)
    assert "640\u00d7480" in page.text_content("#status")
    shown = page.locator("#view").bounding_box()
    assert 300 < shown["width"] < 600  # displayed scaled: the mapping is exercised
    plain = canvas_pixels(page)
    np.testing.assert_array_equal(plain, image)
    assert saved_work(page, path) is None

    # Click: a positive point at image pixel (400, 200), mapped from the scaled canvas; it
    # starts an object.
    request, result = act(page, lambda: page.mouse.click(*to_screen(page, 400, 200)))
    (x, y), = request["point_coords"]
    assert request["point_labels"] == [1] and request["multimask_output"] is True
    assert request["mask_format"] == "rle"
    assert abs(x - 400) <= 1.5 and abs(y - 200) <= 1.5
    best = int(np.argmax(result["scores"]))
    want = predictor.predict(np.array(request["point_coords"]), np.array([1]))[0][best]
    np.testing.assert_array_equal(coco_to_mask(result["masks"][best]), want)
    # The overlay: every mask pixel changed; outside it, only the point marker did.
    changed = changed_pixels(page, plain)
    assert 0.2 < want.mean() < 0.9
    assert changed[want].mean() > 0.99
    assert not (changed & ~want & ~near(x, y)).any()
    assert page.locator("#mask-choice button").count() == 3
    assert labels_in_list(page) == ["object"]
    set_label(page, 0, "  sky ")  # trimmed once committed
    assert labels_in_list(page) == ["sky"]
    assert saved_work(page, path)["objects"][0]["label"] == "sky"

    # Right-click and Shift+click add negative points to the same object.
    request, _ = act(page, lambda: page.mouse.click(*to_screen(page, 100, 400), button="right"))
    assert request["point_labels"] == [1, 0]
    two_points = canvas_pixels(page)
    page.keyboard.down("Shift")
    request, _ = act(page, lambda: page.mouse.click(*to_screen(page, 50, 50)))
    page.keyboard.up("Shift")
    assert request["point_labels"] == [1, 0, 0]
    assert len(saved_work(page, path)["objects"]) == 1

    # Ctrl+Z restores the previous prompts and mask (no new request needed).
    press(page, "Control+z")
    work = saved_work(page, path)
    assert [p["label"] for p in work["objects"][0]["prompts"]] == [1, 0]
    np.testing.assert_array_equal(canvas_pixels(page), two_points)

    # Esc cancels the object being drawn: the image is shown as it was.
    press(page, "Escape")
    wait_for_objects(page, 0)
    np.testing.assert_array_equal(canvas_pixels(page), image)
    assert saved_work(page, path)["objects"] == []

    # Single-mask mode, then drag a box: a new object, the box drawn in its colour.
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
    np.testing.assert_array_equal(coco_to_mask(result["masks"][0]), want)
    shown = canvas_pixels(page)
    changed = np.any(shown != plain, axis=-1)
    assert changed[want].mean() > 0.99
    obj, = saved_work(page, path)["objects"]
    colour = PALETTE[obj["color"]]
    swatch = page.eval_on_selector("#objects .swatch", "n => getComputedStyle(n).backgroundColor")
    assert swatch == "rgb({}, {}, {})".format(*colour)
    x0, y0, x1, _ = (round(v) for v in request["box"])
    top = shown[y0 - 1 : y0 + 2, x0 + 10 : x1 - 10]  # the box's top edge, 2 px wide
    columns_in_colour = (np.abs(top - colour).max(axis=-1) <= 3).any(axis=0)
    assert columns_in_colour.all()

    # Download the mask PNG: the predictor's mask for that box, at the image's size.
    with page.expect_download() as download_info:
        page.click("#download-png")
    saved = tmp_path / "mask.png"
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename == "scene_sky_mask.png"  # the last label
    with Image.open(saved) as im:
        assert im.size == (WIDTH, HEIGHT) and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im) > 127, want)


# pycocotools' mask decoding uses numpy's pre-2.0 __array__ protocol.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_page_labelled_objects_preview_reload_switch_and_exports(page, server, tiny_sam,
                                                                  tmp_path):
    image = test_image()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    other_path = tmp_path / "elsewhere" / "scene.png"
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)
    upload_file(page, path)
    plain = canvas_pixels(page)

    # Hover: the mask a click there would give, drawn without a click.
    before = renders(page)
    with page.expect_response(lambda r: r.url.endswith("/predict") and is_preview(r)) as info:
        page.mouse.move(*to_screen(page, 400, 200))
    wait_idle(page, before)
    (x, y), = info.value.request.post_data_json["point_coords"]
    best = int(np.argmax(info.value.json()["scores"]))
    want = predictor.predict(np.array([[x, y]]), np.array([1]))[0][best]
    np.testing.assert_array_equal(changed_pixels(page, plain), want)
    assert saved_work(page, path) is None  # a preview is not an object
    # Leaving the canvas hides it.
    before = renders(page)
    page.mouse.move(2, 2)
    wait_idle(page, before)
    np.testing.assert_array_equal(canvas_pixels(page), plain)

    # Object 1: a click, labelled "sun", another multimask candidate (key), accepted (A).
    act(page, lambda: page.mouse.click(*to_screen(page, 400, 200)))
    set_label(page, 0, "sun")
    best = saved_work(page, path)["objects"][0]["chosen"]
    other = (best + 1) % 3
    press(page, str(other + 1))
    press(page, "a")
    work = saved_work(page, path)
    sun, = work["objects"]
    assert (sun["label"], sun["chosen"], sun["status"]) == ("sun", other, "done")
    assert not np.array_equal(chosen_mask(sun), coco_to_mask(sun["masks"][best]))
    assert work["selectedId"] is None

    # Object 2 after N: its own prompts, label "ground"; the labels used are offered again.
    page.keyboard.press("n")
    wait_for_objects(page, 2)
    request, _ = act(page, lambda: page.mouse.click(*to_screen(page, 100, 380)))
    assert len(request["point_coords"]) == 1
    set_label(page, 1, "ground")
    offered = page.eval_on_selector_all("#recent-labels option", "n => n.map(o => o.value)")
    assert offered[:2] == ["ground", "sun"]
    press(page, "a")

    # A third object, removed with Delete.
    act(page, lambda: page.mouse.click(*to_screen(page, 600, 60)))
    wait_for_objects(page, 3)
    press(page, "Delete")
    wait_for_objects(page, 2)

    # Focusing another object's label selects it and keeps the focus; Esc leaves the field,
    # a second Esc deselects the object.
    page.locator("#objects .label").nth(0).click()
    assert page.evaluate("document.activeElement === document.querySelector('#objects .label')")
    assert page.get_attribute("#objects .object >> nth=0", "aria-selected") == "true"
    page.keyboard.press("Escape")
    press(page, "Escape")
    assert saved_work(page, path)["selectedId"] is None

    sun, ground = saved_work(page, path)["objects"]
    assert sun["color"] != ground["color"]
    sun_mask, ground_mask = chosen_mask(sun), chosen_mask(ground)
    snapshot = canvas_pixels(page)
    nothing = np.zeros_like(sun_mask)
    assert_drawn_in(snapshot, plain, ground_mask, PALETTE[ground["color"]], sun_mask, nothing)
    assert_drawn_in(snapshot, plain, sun_mask, PALETTE[sun["color"]], ground_mask, ground_mask)
    assert not (np.any(snapshot != plain, axis=-1) & ~sun_mask & ~ground_mask).any()

    # Another image of the same name in the same tab, then back: each keeps its own objects.
    other_path.parent.mkdir()
    Image.fromarray(np.ascontiguousarray(image[::-1])).save(other_path)
    upload_file(page, other_path)
    assert labels_in_list(page) == []
    act(page, lambda: page.mouse.click(*to_screen(page, 200, 200)))
    assert page.locator("#images button").count() == 2
    before = renders(page)
    page.click("#images button >> nth=0")
    wait_idle(page, before)
    assert labels_in_list(page) == ["sun", "ground"]
    np.testing.assert_array_equal(canvas_pixels(page), snapshot)

    # YOLO of both images: one label file each (the second name made unique), classes.txt.
    with page.expect_download() as download_info:
        page.click("#export-yolo")
    saved = tmp_path / "yolo.zip"
    download_info.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == ["classes.txt", "scene.txt", "scene_2.txt"]
        assert archive.read("classes.txt").decode().split() == ["sun", "ground"]
        lines = archive.read("scene.txt").decode().splitlines()
        assert len(archive.read("scene_2.txt").decode().splitlines()) == 1
    assert [line.split()[0] for line in lines] == ["0", "1"]

    # A reload keeps the work: the saved images are listed, opening a file again restores it.
    page.reload()
    saved_entries = page.locator("#images button.saved").all_text_contents()
    assert sorted(saved_entries) == ["scene.png (1)", "scene.png (2)"]
    assert "Saved work for 2 images" in page.text_content("#status")
    upload_file(page, path)
    assert page.locator("#images button.saved").all_text_contents() == ["scene.png (1)"]
    assert labels_in_list(page) == ["sun", "ground"]
    assert "2 saved objects restored" in page.text_content("#status")
    np.testing.assert_array_equal(canvas_pixels(page), snapshot)

    # COCO from the page: pycocotools loads it, with both labels and the chosen masks.
    coco_api = pytest.importorskip("pycocotools.coco")
    with page.expect_download() as download_info:
        page.click("#export-coco")
    assert download_info.value.suggested_filename == "annotations.json"
    saved = tmp_path / "annotations.json"
    download_info.value.save_as(saved)
    coco = coco_api.COCO(str(saved))
    assert [im["file_name"] for im in coco.loadImgs(coco.getImgIds())] == ["scene.png"]
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == ["ground", "sun"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert [names[a["category_id"]] for a in anns] == ["sun", "ground"]
    for ann, mask in zip(anns, [sun_mask, ground_mask]):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)

    # LabelMe of the one image opened since the reload: its JSON, with both labels.
    with page.expect_download() as download_info:
        page.click("#export-labelme")
    saved = tmp_path / "scene.json"
    download_info.value.save_as(saved)
    labelme = json.loads(saved.read_text())
    assert sorted({s["label"] for s in labelme["shapes"]}) == ["ground", "sun"]
    assert (labelme["imageHeight"], labelme["imageWidth"]) == (HEIGHT, WIDTH)


def test_page_everything_adds_candidates_and_keeps_objects(page, server, tiny_sam, tmp_path):
    image = test_image()
    path = tmp_path / "Straße.png"
    Image.fromarray(image).save(path)
    upload_file(page, path)
    plain = canvas_pixels(page)
    act(page, lambda: page.mouse.click(*to_screen(page, 400, 200)))
    set_label(page, 0, "sun")
    press(page, "a")
    sun_mask = chosen_mask(saved_work(page, path)["objects"][0])

    # Everything: its masks become candidates next to the object, which stays.
    page.click(".options summary")
    page.fill("#opt-points", "8")
    page.fill("#opt-iou", "0")
    page.fill("#opt-stability", "0")
    before = renders(page)
    with page.expect_response(lambda r: r.url.endswith("/everything")) as response_info:
        page.click("#everything")
    records = response_info.value.json()["masks"]
    wait_idle(page, before)
    options = response_info.value.request.post_data_json
    assert options["points_per_side"] == 8 and options["pred_iou_thresh"] == 0
    want_records = SamAutomaticMaskGenerator(
        tiny_sam, output_mode="coco_rle", points_per_side=8, pred_iou_thresh=0.0,
        stability_score_thresh=0.0).generate(image)
    assert [r["segmentation"] for r in records] == [r["segmentation"] for r in want_records]
    assert f"{len(records)} masks found" in page.text_content("#status")
    objects = saved_work(page, path)["objects"]
    assert [(o["label"], o["status"]) for o in objects[:1]] == [("sun", "done")]
    assert [o["status"] for o in objects[1:]] == ["candidate"] * len(records)
    union = sun_mask.copy()
    for record in records:
        union |= coco_to_mask(record["segmentation"])
    np.testing.assert_array_equal(changed_pixels(page, plain), union)  # every RLE decoded

    # Accept a candidate: it becomes an object with the last label used.
    page.locator("#objects .object.candidate .accept").first.click()
    page.wait_for_function(
        "(n) => document.querySelectorAll('#objects .object.candidate').length === n",
        arg=len(records) - 1)
    objects = saved_work(page, path)["objects"]
    accepted = [o for o in objects[1:] if o["status"] == "done"]
    assert [o["label"] for o in accepted] == ["sun"]
    accepted_mask = chosen_mask(accepted[0])

    # A second run replaces the candidates only; "Discard all" drops them, Ctrl+Z restores them.
    before = renders(page)
    page.click("#everything")
    page.wait_for_selector("#objects .object.candidate")
    wait_idle(page, before)
    wait_for_objects(page, 2 + len(records))
    page.click("#discard-all")
    wait_for_objects(page, 2)
    assert not page.is_visible("#candidate-actions")
    assert [o["status"] for o in saved_work(page, path)["objects"]] == ["done", "done"]
    np.testing.assert_array_equal(changed_pixels(page, plain), sun_mask | accepted_mask)
    press(page, "Control+z")
    wait_for_objects(page, 2 + len(records))

    # Candidates are not exported; a file name beyond ASCII comes back whole.
    with page.expect_download() as download_info:
        page.click("#export-labelme")
    assert download_info.value.suggested_filename == "Straße.json"
    saved = tmp_path / "labelme.json"
    download_info.value.save_as(saved)
    labelme = json.loads(saved.read_text(encoding="utf-8"))
    assert labelme["imagePath"] == "Straße.png"
    assert {s["label"] for s in labelme["shapes"]} == {"sun"}


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
    assert len(titles) == 7
    assert any("POST/v1/images/{id}/predict" in t.replace(" ", "") for t in titles)
    assert any("POST/v1/export/{format}" in t.replace(" ", "") for t in titles)
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
