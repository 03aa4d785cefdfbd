"""Dataset export (mobile_sam.formats): each format is read back by its consumer's rules
(pycocotools for COCO, fillPoly for YOLO-seg, LabelMe's fields and PIL fill for LabelMe) and
compared with the masks it came from."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import BLOCK_TORCH
from mobile_sam.formats import (
    FORMATS,
    AnnotatedImage,
    Annotation,
    coco_dataset,
    join_parts,
    labelme_json,
    mask_to_polygons,
    merge_coco_datasets,
    write_dataset,
    yolo_lines,
)

cv2 = pytest.importorskip("cv2")
# pycocotools' decode warns under numpy 2 (its __array__ lacks the copy keyword).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
H, W = 160, 200


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def disk(cy: float, cx: float, r: float, shape=(H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


@pytest.fixture
def masks() -> dict[str, np.ndarray]:
    """A disk with a small hole plus a separate rectangle (two parts, one hole), an ellipse,
    and a tilted bar touching the image border."""
    holed = disk(70, 60, 40) & ~disk(70, 60, 4)
    holed[20:60, 130:185] = True
    yy, xx = np.mgrid[:H, :W]
    ellipse = (yy - 120) ** 2 / 25**2 + (xx - 140) ** 2 / 50**2 < 1
    bar = np.abs((yy - 0.6 * xx) - 30) < 10
    bar[:, 100:] = False
    return {"holed": holed, "ellipse": ellipse, "bar": bar}


@pytest.fixture
def images(masks) -> list[AnnotatedImage]:
    return [
        AnnotatedImage("a.jpg", H, W, [Annotation(masks["holed"], "cat", 0.9),
                                       Annotation(masks["ellipse"], "dog", 0.75)]),
        AnnotatedImage("b.png", H, W, [Annotation(masks["bar"], "dog")]),
    ]


# ------------------------------------------------------------------------------ polygons


def fill(polygons, shape=(H, W)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(p).astype(np.int32) for p in polygons], 1)
    return out.astype(bool)


def test_polygons_through_pixel_centres_fill_back_to_the_mask(masks):
    polys = mask_to_polygons(masks["ellipse"], tolerance=0)
    assert len(polys) == 1 and polys[0].shape[1] == 2 and polys[0].dtype == np.float64
    assert np.array_equal(fill(polys), masks["ellipse"])
    # Simplification keeps the shape but drops most vertices.
    simple = mask_to_polygons(masks["ellipse"], tolerance=1.0)
    assert len(simple[0]) < len(polys[0]) / 2
    assert iou(fill(simple), masks["ellipse"]) >= 0.98


def test_polygons_along_pixel_edges_have_the_pixel_count_as_area(masks):
    for name in ("ellipse", "bar"):
        (poly,) = mask_to_polygons(masks[name], tolerance=0, pixel_edges=True)
        assert abs(cv2.contourArea(poly.astype(np.float32))) == masks[name].sum(), name
        assert np.all(poly % 1 == 0.5)  # on pixel corners


def test_polygons_list_every_part_largest_first_and_skip_holes(masks):
    polys = mask_to_polygons(masks["holed"], tolerance=0)
    assert len(polys) == 2
    areas = [abs(cv2.contourArea(p.astype(np.float32))) for p in polys]
    assert areas[0] > areas[1]
    filled = fill(polys)
    assert np.array_equal(filled & ~masks["holed"], disk(70, 60, 4) & filled)  # only the hole


def test_polygons_of_tiny_parts_and_empty_masks():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    (square,) = mask_to_polygons(one)
    assert sorted(map(tuple, square)) == [(2.5, 1.5), (2.5, 2.5), (3.5, 1.5), (3.5, 2.5)]
    line = np.zeros((6, 6), bool)
    line[1, 1:5] = True
    (poly,) = mask_to_polygons(line, tolerance=3)
    assert len(poly) >= 3 and fill([poly], (6, 6))[1, 1:5].all()
    # Column-major masks (as decoded from RLE) with a one-pixel part.
    both = np.zeros((6, 6), bool, order="F")
    both[1, 1:5] = both[4, 4] = True
    assert both.flags.f_contiguous and len(mask_to_polygons(both)) == 2


def test_join_parts_makes_one_polygon_that_fills_both_parts(masks):
    parts = mask_to_polygons(masks["holed"], tolerance=0)
    joined = join_parts(parts)
    assert len(joined) == sum(len(p) for p in parts) + 2  # each part once, plus the link back
    assert iou(fill([joined]), fill(parts)) >= 0.99


def test_polygon_input_errors():
    with pytest.raises(ValueError, match="tolerance"):
        mask_to_polygons(np.ones((4, 4), bool), tolerance=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_polygons(np.ones((1, 4, 4), bool))
    with pytest.raises(TypeError, match="mask > 0.5"):
        mask_to_polygons(np.ones((4, 4), np.float32))


# ------------------------------------------------------------------------------ COCO


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_coco_file_loads_in_pycocotools_and_round_trips(images, masks, tmp_path, segmentation):
    coco_mod = pytest.importorskip("pycocotools.coco")
    mask_api = pytest.importorskip("pycocotools.mask")
    (path,) = write_dataset(images, "coco", tmp_path, segmentation=segmentation)
    assert path == tmp_path / "annotations.json"
    coco = coco_mod.COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert coco.getCatIds() == [1, 2]
    assert [im["file_name"] for im in coco.loadImgs(coco.getImgIds())] == ["a.jpg", "b.png"]
    expected = [("a.jpg", "holed", 1, 0.9), ("a.jpg", "ellipse", 2, 0.75), ("b.png", "bar", 2, None)]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 3
    for ann, (file_name, name, cat, score) in zip(anns, expected):
        assert coco.loadImgs(ann["image_id"])[0]["file_name"] == file_name
        assert ann["category_id"] == cat and ann["iscrowd"] == 0
        assert ann.get("score") == score
        mask = masks[name]
        assert ann["area"] == mask.sum()
        rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ann["bbox"] == mask_api.toBbox(rle).tolist()
        back = coco.annToMask(ann).astype(bool)
        # Simplifying at 1 px moves a slanted edge by up to half a pixel: the thin bar loses more.
        assert iou(back, mask) >= (0.95 if name == "bar" else 0.98), (name, iou(back, mask))
        if segmentation == "rle":
            assert np.array_equal(back, mask)  # RLE is exact, holes included
        else:
            assert isinstance(ann["segmentation"], list)
            assert len(ann["segmentation"]) == len(mask_to_polygons(mask))  # every part
    # Sorted annotation ids from 1, so pycocotools' index and COCOeval accept them.
    assert [a["id"] for a in anns] == [1, 2, 3]


def test_coco_polygons_without_simplification_are_exact_for_masks_without_holes(masks):
    mask_api = pytest.importorskip("pycocotools.mask")
    image = AnnotatedImage("x.png", H, W, [Annotation(masks["ellipse"]), Annotation(masks["bar"])])
    data = coco_dataset([image], segmentation="polygon", tolerance=0)
    for ann, name in zip(data["annotations"], ("ellipse", "bar")):
        rles = mask_api.frPyObjects(ann["segmentation"], H, W)
        back = mask_api.decode(mask_api.merge(rles)).astype(bool)
        assert np.array_equal(back, masks[name]), name


def test_coco_categories_given_and_empty_masks_skipped(masks):
    image = AnnotatedImage("x.png", H, W, [Annotation(masks["bar"], "b"),
                                           Annotation(np.zeros((H, W), bool), "a")])
    data = coco_dataset([image], categories=["a", "b"])
    assert data["categories"] == [{"id": 1, "name": "a", "supercategory": ""},
                                  {"id": 2, "name": "b", "supercategory": ""}]
    assert [a["category_id"] for a in data["annotations"]] == [2]
    with pytest.raises(ValueError, match="'b' is not among the categories"):
        coco_dataset([image], categories=["a"])


# ------------------------------------------------------------------------------ YOLO

NUMBER = re.compile(r"^\d\.\d{6}$")


def test_yolo_labels_rasterise_back_to_the_masks(images, masks, tmp_path):
    paths = write_dataset(images, "yolo", tmp_path)
    assert sorted(p.name for p in paths) == ["a.txt", "b.txt", "classes.txt"]
    classes = (tmp_path / "classes.txt").read_text().splitlines()
    assert classes == ["cat", "dog"]
    for image in images:
        lines = (tmp_path / image.file_name).with_suffix(".txt").read_text().splitlines()
        assert len(lines) == len(image.annotations)  # one line per object, parts joined
        for line, ann in zip(lines, image.annotations):
            cls, *values = line.split()
            assert classes[int(cls)] == ann.label
            assert len(values) % 2 == 0 and len(values) >= 6
            assert all(NUMBER.match(v) for v in values), line[:80]
            xy = np.asarray(values, dtype=np.float64).reshape(-1, 2) * [W, H]
            assert iou(fill([xy]), ann.mask) >= 0.97


def test_yolo_polygon_without_simplification_is_exact(masks):
    image = AnnotatedImage("x.png", H, W, [Annotation(masks["ellipse"], "e")])
    (line,) = yolo_lines(image, ["z", "e"], tolerance=0)
    assert line.startswith("1 ")
    xy = np.asarray(line.split()[1:], dtype=np.float64).reshape(-1, 2) * [W, H]
    assert np.array_equal(fill([xy]), masks["ellipse"])


def test_yolo_label_missing_from_classes(images):
    with pytest.raises(ValueError, match=r"'a.jpg'.*'cat' is not among the classes \['dog'\]"):
        yolo_lines(images[0], ["dog"])


# ------------------------------------------------------------------------------ LabelMe

# The fields LabelMe's LabelFile reads, with their JSON types (None: null allowed).
LABELME_SCHEMA = {
    "required": {"version": str, "flags": dict, "shapes": list, "imagePath": str,
                 "imageData": (str, type(None)), "imageHeight": int, "imageWidth": int},
    "shape": {"label": str, "points": list, "group_id": (int, type(None)),
              "shape_type": str, "flags": dict, "description": str},
}


def check_labelme(data: dict) -> list[str]:
    """Problems of a LabelMe file against LABELME_SCHEMA (empty when it is valid)."""
    problems = []
    for key, kind in LABELME_SCHEMA["required"].items():
        if key not in data:
            problems.append(f"missing {key}")
        elif not isinstance(data[key], kind):
            problems.append(f"{key} is {type(data[key]).__name__}")
    for i, shape in enumerate(data.get("shapes", [])):
        for key, kind in LABELME_SCHEMA["shape"].items():
            if not isinstance(shape.get(key, ...), kind):
                problems.append(f"shapes[{i}].{key} is {type(shape.get(key, ...)).__name__}")
        points = shape.get("points", [])
        if shape.get("shape_type") != "polygon" or len(points) < 3:
            problems.append(f"shapes[{i}] is not a polygon of >= 3 points")
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, float) for v in p)
                   for p in points):
            problems.append(f"shapes[{i}].points are not [x, y] floats")
    return problems


def labelme_fill(shapes, shape=(H, W)) -> np.ndarray:
    """Union of polygon shapes filled the way LabelMe's shape_to_mask does (PIL)."""
    im = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(im)
    for s in shapes:
        draw.polygon([tuple(p) for p in s["points"]], outline=1, fill=1)
    return np.asarray(im).astype(bool)


def test_labelme_files_have_the_fields_labelme_reads(images, tmp_path):
    image_dir = tmp_path / "images"
    paths = write_dataset(images, "labelme", tmp_path / "labels", image_root=image_dir)
    assert [p.name for p in paths] == ["a.json", "b.json"]
    for path, image in zip(paths, images):
        data = json.loads(path.read_text())
        assert check_labelme(data) == []
        assert data["imagePath"] == "../images/" + image.file_name
        assert (data["imageHeight"], data["imageWidth"]) == (H, W) and data["imageData"] is None
    # The schema check can fail.
    broken = json.loads(paths[0].read_text())
    del broken["imageHeight"]
    broken["shapes"][0]["points"] = [[1, 2]]
    assert len(check_labelme(broken)) == 3


def test_labelme_parts_share_a_group_and_fill_back(images, masks):
    data = labelme_json(images[0], image_path="x/a.jpg")
    assert data["imagePath"] == "x/a.jpg"
    cats = [s for s in data["shapes"] if s["label"] == "cat"]
    dogs = [s for s in data["shapes"] if s["label"] == "dog"]
    assert len(cats) == 2 and cats[0]["group_id"] == cats[1]["group_id"] == 1
    assert len(dogs) == 1 and dogs[0]["group_id"] is None
    assert iou(labelme_fill(cats), masks["holed"]) >= 0.98
    assert iou(labelme_fill(dogs), masks["ellipse"]) >= 0.98
    assert labelme_json(AnnotatedImage("e.png", 4, 4))["shapes"] == []


# ------------------------------------------------------------------------------ bad input


def test_unknown_format_names_the_choices(images, tmp_path):
    with pytest.raises(ValueError, match="'voc'.*coco, yolo, labelme"):
        write_dataset(images, "voc", tmp_path)
    with pytest.raises(ValueError, match="'bitmap'.*rle, polygon"):
        write_dataset(images, "coco", tmp_path, segmentation="bitmap")
    assert FORMATS == ("coco", "yolo", "labelme")


@pytest.mark.parametrize("fmt", FORMATS)
def test_mask_of_the_wrong_size_names_the_image_and_writes_nothing(images, fmt, tmp_path):
    images[1].annotations.append(Annotation(np.zeros((W, H), bool), "dog"))
    with pytest.raises(ValueError, match=r"image 'b.png', annotation 1: mask has shape "
                                         r"\(200, 160\), expected \(160, 200\)"):
        write_dataset(images, fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_bad_input(images, tmp_path):
    images[1].file_name = "a.png"  # same label file as a.jpg
    with pytest.raises(ValueError, match="'a.jpg' and 'a.png' would both be written"):
        write_dataset(images, "yolo", tmp_path)
    images[1].file_name = "../b.png"
    with pytest.raises(ValueError, match="relative path"):
        write_dataset(images, "labelme", tmp_path)
    with pytest.raises(ValueError, match="label must be a non-empty one-line string"):
        coco_dataset([AnnotatedImage("c.png", 2, 2, [Annotation(np.ones((2, 2), bool), "a\nb")])])
    with pytest.raises(ValueError, match="height must be a positive int"):
        coco_dataset([AnnotatedImage("c.png", 0, 2)])
    assert list(tmp_path.iterdir()) == []


def test_formats_do_not_import_torch():
    code = BLOCK_TORCH + "import mobile_sam.formats\nassert 'torch' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_merged_coco_parts_equal_one_dataset(images):
    whole = coco_dataset(images, categories=["cat", "dog"])
    parts = [coco_dataset([im], categories=["cat", "dog"]) for im in images]
    assert merge_coco_datasets(parts) == whole
    with pytest.raises(ValueError, match="same categories"):
        merge_coco_datasets([parts[0], coco_dataset([images[1]])])


def test_categories_fix_the_class_order(images, tmp_path):
    write_dataset(images[1:], "yolo", tmp_path, categories=["cat", "dog"])
    assert (tmp_path / "classes.txt").read_text() == "cat\ndog\n"
    assert (tmp_path / "b.txt").read_text().startswith("1 ")
    write_dataset([AnnotatedImage("e.png", 4, 4)], "yolo", tmp_path / "e", categories=["x"])
    assert (tmp_path / "e" / "classes.txt").read_text() == "x\n"
    assert (tmp_path / "e" / "e.txt").read_text() == ""
