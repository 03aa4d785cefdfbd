"""The Label Studio ML backend: brush RLE, outlines, and `predict` on a recorded request.

The request below is the body Label Studio POSTs to an ML backend's /predict in interactive
mode (a positive and a negative keypoint, then a rectangle), with the task's image URL
mapped to a local picture. The brush RLE is checked by a decoder written here from the
format's description (thi.ng rle-pack, as Label Studio reads it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mobile_sam import SAM
from mobile_sam.integrations.label_studio import (
    MobileSamBackend,
    encode_brush_rle,
    parse_label_config,
)

BRUSH_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Dog" background="#FF0000"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Dog" smart="true" background="#000000" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Dog" background="#000000" showInline="true"/>
  </RectangleLabels>
</View>"""

POLYGON_CONFIG = BRUSH_CONFIG.replace("BrushLabels", "PolygonLabels")

# Label Studio's /predict body (label_studio_ml's api.py shows its layout), image 150 x 97.
REQUEST = json.loads("""{
  "tasks": [{"id": 7, "data": {"image": "/data/upload/1/3f1c2e-dog.png"},
             "annotations": [], "predictions": []}],
  "project": "1.1717000000",
  "label_config": "",
  "params": {"context": {"result": [
    {"original_width": 150, "original_height": 97, "image_rotation": 0,
     "value": {"x": 26.666666666666668, "y": 30.927835051546392, "width": 0.6666666666666667,
               "keypointlabels": ["Dog"]},
     "is_positive": true, "id": "Vq1Ju3XjSt", "from_name": "tag2", "to_name": "image",
     "type": "keypointlabels", "origin": "manual"},
    {"original_width": 150, "original_height": 97, "image_rotation": 0,
     "value": {"x": 66.66666666666667, "y": 82.4742268041237, "width": 0.6666666666666667,
               "keypointlabels": ["Dog"]},
     "is_positive": false, "id": "Lh2Zq0aPcA", "from_name": "tag2", "to_name": "image",
     "type": "keypointlabels", "origin": "manual"}
  ]}}
}""")

BOX_CONTEXT = {"result": [
    {"original_width": 150, "original_height": 97, "image_rotation": 0,
     "value": {"x": 6.666666666666667, "y": 12.371134020618557, "width": 53.333333333333336,
               "height": 59.79381443298969, "rotation": 0, "rectanglelabels": ["Dog"]},
     "id": "b0XyZ", "from_name": "tag3", "to_name": "image", "type": "rectanglelabels",
     "origin": "manual"}]}


def decode_brush_rle(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> (H, W, 4) uint8: the reader side of the format."""
    bits = np.unpackbits(np.array(rle, np.uint8))
    position = 0

    def read(n: int) -> int:
        nonlocal position
        value = int("".join(map(str, bits[position:position + n])), 2) if n else 0
        position += n
        return value

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8)
    i = 0
    while i < count:
        repeat = read(1)
        stop = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:stop] = read(word)
        else:
            for k in range(i, stop):
                out[k] = read(word)
        i = stop
    return out.reshape(height, width, 4)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8))
    return np.asarray(small.resize((150, 97), Image.BILINEAR))


@pytest.fixture(scope="module")
def sam(tiny_sam) -> SAM:
    return SAM(tiny_sam, backend="torch")


def backend(config: str, sam: SAM, picture: np.ndarray) -> MobileSamBackend:
    urls = {"/data/upload/1/3f1c2e-dog.png": picture}
    return MobileSamBackend(label_config=config, model=sam, image_loader=urls.__getitem__)


@pytest.mark.parametrize("shape, fill", [((40, 60), "random"), ((300, 300), "full"),
                                         ((17, 5), "empty"), ((64, 64), "checker")])
def test_brush_rle_round_trip(shape, fill, rng):
    mask = {"random": lambda: rng.random(shape) < 0.3, "full": lambda: np.ones(shape, bool),
            "empty": lambda: np.zeros(shape, bool),
            "checker": lambda: (np.indices(shape).sum(0) % 2).astype(bool)}[fill]()
    rle = encode_brush_rle(mask)
    assert all(isinstance(v, int) and 0 <= v < 256 for v in rle)
    rgba = decode_brush_rle(rle, *shape)  # the full mask has runs longer than 2**16
    np.testing.assert_array_equal(rgba, np.repeat(mask[..., None] * 255, 4, axis=2))


def test_brush_rle_refuses_non_2d():
    with pytest.raises(ValueError, match=r"mask must be \(H, W\)"):
        encode_brush_rle(np.zeros((2, 3, 4), bool))


def test_parse_label_config():
    assert parse_label_config(BRUSH_CONFIG) == {"from_name": "tag", "to_name": "image",
                                                "value": "image", "output": "brush"}
    assert parse_label_config(POLYGON_CONFIG)["output"] == "polygon"
    with pytest.raises(ValueError, match="BrushLabels"):
        parse_label_config("<View><Image name='i' value='$image'/></View>")


def test_predict_recorded_keypoints_gives_the_brush_mask(sam, picture):
    request = dict(REQUEST, label_config=BRUSH_CONFIG)
    predictions = backend(request["label_config"], sam, picture).predict(
        request["tasks"], **request["params"])
    assert len(predictions) == 1
    (result,) = predictions[0]["result"]
    assert (result["from_name"], result["to_name"], result["type"]) == ("tag", "image",
                                                                         "brushlabels")
    assert (result["original_width"], result["original_height"]) == (150, 97)
    assert result["value"]["brushlabels"] == ["Dog"] and result["value"]["format"] == "rle"
    # 26.67 % of 150 = 40 px, 30.93 % of 97 = 30 px; the negative click at (100, 80)
    want = sam.predict(picture, points=[[[40, 30], [100, 80]]], labels=[[1, 0]])[0]
    rgba = decode_brush_rle(result["value"]["rle"], 97, 150)
    np.testing.assert_array_equal(rgba[..., 3] > 0, want.masks[0])
    assert want.masks[0].any() and not want.masks[0].all()
    assert predictions[0]["score"] == pytest.approx(float(want.scores[0]))
    json.dumps(predictions)  # the server sends it as JSON


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_predict_rectangle_gives_a_polygon(sam, picture):
    b = backend(POLYGON_CONFIG, sam, picture)
    b.polygon_tolerance = 0  # every corner: the polygon covers exactly the part's pixels
    (result,) = b.predict(REQUEST["tasks"], context=BOX_CONTEXT)[0]["result"]
    assert result["type"] == "polygonlabels" and result["value"]["polygonlabels"] == ["Dog"]
    points = np.array(result["value"]["points"]) * [150 / 100, 97 / 100]
    want = sam.predict(picture, bboxes=[10, 12, 90, 70])[0].masks[0]
    parts, count = ndimage.label(want, structure=np.ones((3, 3)))  # 8-connected parts
    largest = ndimage.binary_fill_holes(parts == 1 + np.argmax(np.bincount(parts.ravel())[1:]))
    assert count >= 1 and polygon_area(points) == pytest.approx(largest.sum())
    # Label Studio's frame: pixel x covers [x, x + 1], so the corners are whole numbers
    np.testing.assert_allclose(points, np.round(points), atol=1e-9)
    rows, cols = np.nonzero(largest)
    np.testing.assert_allclose([points[:, 0].min(), points[:, 0].max(), points[:, 1].min(),
                                points[:, 1].max()],
                               [cols.min(), cols.max() + 1, rows.min(), rows.max() + 1])


def test_predict_without_prompts_or_config(sam, picture):
    b = backend(BRUSH_CONFIG, sam, picture)
    assert b.predict(REQUEST["tasks"])[0]["result"] == []
    with pytest.raises(ValueError, match="label_config"):
        MobileSamBackend(model=sam).predict(REQUEST["tasks"], context=BOX_CONTEXT)
    with pytest.raises(ValueError, match="no data"):
        b.predict([{"id": 1, "data": {"img": "x"}}], context=BOX_CONTEXT)


def test_subclasses_label_studio_ml_base_when_installed(tmp_path):
    """With label_studio_ml importable, the backend is its LabelStudioMLBase subclass (a
    stand-in module with the base's constructor signature stands for the package here)."""
    package = tmp_path / "label_studio_ml"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(textwrap.dedent("""
        class LabelStudioMLBase:
            def __init__(self, label_config=None, train_output=None, **kwargs):
                self.label_config = label_config
            def get_local_path(self, url, project_dir=None):
                return "/resolved" + url
    """))
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from label_studio_ml.model import LabelStudioMLBase
        from mobile_sam.integrations.label_studio import MobileSamBackend
        b = MobileSamBackend(label_config={BRUSH_CONFIG!r})
        assert isinstance(b, LabelStudioMLBase)
        assert b._load("/data/upload/1/x.png") == "/resolved/data/upload/1/x.png"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
