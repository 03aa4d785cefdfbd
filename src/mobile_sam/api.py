"""The one-line API: ``SAM("mobile_sam.pt").predict(source, points=..., labels=..., bboxes=...)``.

A thin layer over :class:`~mobile_sam.predictor.SamPredictor` (prompts) and
:class:`~mobile_sam.automatic.SamAutomaticMaskGenerator` (no prompt: "everything" mode) that
takes paths, arrays or PIL images and returns one :class:`Result` per source, shaped like
Ultralytics' ``Results`` (``masks.data`` / ``.xy``, ``boxes.xyxy`` / ``.conf``, ``plot()``,
``save()``, ``to_json()``), with COCO records and a bridge to the dataset writers of
:mod:`mobile_sam.formats`. Prompt formats follow Ultralytics' ``SAM``:

* ``points=[x, y]``: one object, one point;
* ``points=[[x, y], [x, y]]``: several objects, one point each;
* ``points=[[[x, y], [x, y]]]``: one object with several points (B objects × N points);
* ``labels`` mirror the shape of ``points`` without the last axis (1 foreground,
  0 background; default all 1);
* ``bboxes=[x0, y0, x1, y1]`` or a list of them: one object per box. Points and boxes
  together must describe the same number of objects (point group ``i`` goes with box ``i``).

Coordinates are XY pixels of the original image; boxes are XYXY. Images are never fetched
from the network: a source that is an ``http(s)://`` URL is refused.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin
from PIL import Image

from ._optional import require_torch
from .automatic import SamAutomaticMaskGenerator
from .formats import AnnotatedImage, Annotation, coco_mask_fields, join_parts, mask_to_polygons
from .io import load_image, overlay, save_image_png, save_mask_png
from .masks import masks_to_boxes, rle_to_coco, rle_to_mask
from .onnx.runtime import OnnxPredictor, is_export_folder, open_export_folder
from .prompts import (
    PromptError,
    PromptTypeError,
    as_finite,
    check_boxes,
    check_inside_image,
    check_labels,
)
from .weights import resolve_checkpoint

if TYPE_CHECKING:  # torch is imported only for a torch model (an ONNX folder runs without)
    import torch

    from .modeling import Sam
    from .predictor import SamPredictor

__all__ = ["SAM", "Boxes", "Masks", "Prompts", "Result", "check_prompts_in_image",
           "normalize_prompts"]

Source = str | os.PathLike[str] | np.ndarray | Image.Image | bytes


# --------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompts:
    """Prompts for B objects: ``points`` (B, N, 2) XY float64 with ``labels`` (B, N) int64
    (both None when there are no points), ``boxes`` (B, 4) XYXY float64 or None."""

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None

    @property
    def num_objects(self) -> int:
        if self.points is not None:
            return int(self.points.shape[0])
        if self.boxes is not None:
            return int(self.boxes.shape[0])
        return 0


_POINTS_LAYOUT = ("[x, y], [[x, y], ...] or [[[x, y], ...], ...] (every object with the same "
                  "number of points)")


def normalize_prompts(points: Any = None, labels: Any = None, bboxes: Any = None) -> Prompts:
    """Turn Ultralytics-style ``points`` / ``labels`` / ``bboxes`` into :class:`Prompts`.

    ``points``: ``[x, y]`` (one object, one point), ``[[x, y], ...]`` (K objects, one point
    each) or ``[[[x, y], ...], ...]`` (B objects, N points each). ``labels`` mirror the points
    without their last axis (``1`` or ``[1]`` for a single point); values 1 (foreground),
    0 (background) or -1 (ignored: pads an object with fewer points); default all 1.
    ``bboxes``: ``[x0, y0, x1, y1]`` or ``[[x0, y0, x1, y1], ...]`` with x1 >= x0 and
    y1 >= y0. With both, point group ``i`` and box ``i`` prompt object ``i``. The value rules
    are those of :mod:`mobile_sam.prompts`; raises its ``PromptError`` (a ``ValueError``)
    naming the argument, the expected and the received value or shape.
    """
    pts = lab = boxes = None
    if points is None:
        if labels is not None:
            raise PromptError("labels", "labels were given without points")
    else:
        array = as_finite(points, "points", _POINTS_LAYOUT)
        mirror: tuple[int, ...]  # the labels' shape that mirrors the points
        if array.ndim == 1 and array.shape == (2,):
            pts, mirror = array.reshape(1, 1, 2), ()
        elif array.ndim == 2 and array.shape[1] == 2:
            pts, mirror = array[:, None, :], (array.shape[0],)
        elif array.ndim == 3 and array.shape[2] == 2:
            pts, mirror = array, array.shape[:2]
        else:
            raise PromptError("points", f"points must be {_POINTS_LAYOUT}, "
                                        f"got shape {array.shape}")
        if pts.size == 0:
            raise PromptError("points", f"points is empty (shape {array.shape})")
        canonical = pts.shape[:2]
        if labels is None:
            lab = np.ones(canonical, dtype=np.int64)
        else:
            raw = np.asarray(labels)
            allowed = {tuple(mirror), tuple(canonical)}
            if mirror == ():
                allowed.add((1,))
            if raw.shape not in allowed:
                raise PromptError(
                    "labels",
                    f"labels must mirror points: points of shape {array.shape} need labels of "
                    f"shape {mirror if mirror else '() or (1,)'}, got {raw.shape}",
                )
            lab = check_labels(raw, "labels").reshape(canonical)
    if bboxes is not None:
        boxes = check_boxes(bboxes, "bboxes")
    if pts is not None and boxes is not None and len(pts) != len(boxes):
        raise PromptError(
            "bboxes",
            f"points describe {len(pts)} object(s) but bboxes {len(boxes)}: with both, give "
            "one point group per box (e.g. points=[[[x, y]]] with one box)",
        )
    return Prompts(pts, lab, boxes)


def check_prompts_in_image(prompts: Prompts, size: tuple[int, int], name: str = "image") -> None:
    """Raise ``PromptError`` (a ``ValueError``) if a point lies outside an image of ``size``
    (h, w), i.e. not in [0, w] x [0, h], or a box does not meet it (see
    :func:`mobile_sam.prompts.check_inside_image`)."""
    check_inside_image(size, prompts.points, prompts.boxes, image=name, points_field="points",
                       boxes_field="bboxes")


# --------------------------------------------------------------------------------- results


class _ArrayView(NDArrayOperatorsMixin):
    """Behaves as the numpy array :meth:`_array` returns (``np.asarray``, operators, ufuncs,
    and its public attributes and methods such as ``dtype``, ``any`` or ``tolist``), so code
    written when results held plain arrays keeps working."""

    def _array(self) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy:
            return np.array(self._array(), dtype=dtype, copy=True)
        return np.asarray(self._array(), dtype=dtype)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        plain = [x._array() if isinstance(x, _ArrayView) else x for x in inputs]
        return getattr(ufunc, method)(*plain, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle probe private names before __init__ ran
            raise AttributeError(name)
        return getattr(self._array(), name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array().shape)

    def __len__(self) -> int:
        return len(self._array())

    _batch_ndim = 0  # ndim of the array form when it holds several items (masks, boxes)

    def _select(self, index: Any) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: Any) -> Any:
        """Items as the same kind of object (``masks[0]``, ``boxes[1:]``); indexing within
        one item, or with several axes (``boxes[:, 0]``), gives plain numpy values."""
        if isinstance(index, tuple) or self._array().ndim < self._batch_ndim:
            return self._array()[index]
        return self._select(index)

    def __iter__(self) -> Iterator[Any]:
        if self._array().ndim < self._batch_ndim:
            return iter(self._array())
        return (self._select(i) for i in range(len(self)))


class Masks(_ArrayView):
    """Masks of one image, shaped like Ultralytics' ``Results.masks``.

    ``data``: (N, H, W) bool; ``xy``: per mask, its outline as a (K, 2) float32 array of XY
    pixels (through the boundary pixel centres, unsimplified; the parts of a multi-part mask
    joined into one polygon as Ultralytics does, see :func:`mobile_sam.formats.join_parts`;
    an empty mask gives (0, 2)); ``xyn``: the same divided by (W, H). Indexing gives
    ``Masks`` of the selected masks; the object is also the (N, H, W) bool array itself
    (``np.asarray(masks)``, ``masks.any()``, ``masks[0] & masks[1]``).
    """

    def __init__(self, data: np.ndarray) -> None:
        self.data = np.asarray(data, dtype=bool)
        self.orig_shape = tuple(int(v) for v in self.data.shape[-2:])

    def _array(self) -> np.ndarray:
        return self.data

    _batch_ndim = 3

    def _select(self, index: Any) -> Masks:
        return Masks(self.data[index])

    @functools.cached_property
    def xy(self) -> list[np.ndarray]:
        outlines = []
        for mask in self.data.reshape(-1, *self.orig_shape):
            parts = mask_to_polygons(mask, tolerance=0)
            outline = join_parts(parts) if parts else np.zeros((0, 2))
            outlines.append(outline.astype(np.float32))
        return outlines

    @property
    def xyn(self) -> list[np.ndarray]:
        scale = np.array(self.orig_shape[::-1], dtype=np.float32)
        return [p / scale for p in self.xy]

    def __repr__(self) -> str:
        return f"Masks(data=<bool {tuple(self.data.shape)}>)"


class Boxes(_ArrayView):
    """Boxes of one image's masks, shaped like Ultralytics' ``Results.boxes``.

    ``data``: (N, 6) float32 rows ``x0, y0, x1, y1, conf, cls``; ``xyxy``: (N, 4) float32 in
    pixels, from the masks with inclusive max (x1 is the last column holding a pixel; an
    empty mask gives zeros); ``xywh``: (N, 4) centre x, centre y, width, height (Ultralytics'
    layout); ``xyxyn`` / ``xywhn``: divided by the image's width and height; ``conf``: (N,)
    the masks' scores; ``cls``: (N,) class index into ``Result.names``. As an array (and for
    ``shape``) it is ``xyxy``, as ``Result.boxes`` was before it had these attributes.
    """

    def __init__(self, data: np.ndarray, orig_shape: tuple[int, int]) -> None:
        self.data = np.asarray(data, dtype=np.float32)
        self.orig_shape = orig_shape

    def _array(self) -> np.ndarray:
        return self.xyxy

    _batch_ndim = 2

    def _select(self, index: Any) -> Boxes:
        return Boxes(self.data[index], self.orig_shape)

    @property
    def xyxy(self) -> np.ndarray:
        return self.data[..., :4]

    @property
    def conf(self) -> np.ndarray:
        return self.data[..., 4]

    @property
    def cls(self) -> np.ndarray:
        return self.data[..., 5]

    @property
    def xywh(self) -> np.ndarray:
        x0, y0, x1, y1 = np.moveaxis(self.xyxy, -1, 0)
        return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)

    @property
    def xyxyn(self) -> np.ndarray:
        h, w = self.orig_shape
        return self.xyxy / np.array([w, h, w, h], dtype=np.float32)

    @property
    def xywhn(self) -> np.ndarray:
        h, w = self.orig_shape
        return self.xywh / np.array([w, h, w, h], dtype=np.float32)

    def __repr__(self) -> str:
        return f"Boxes(data=<float32 {tuple(self.data.shape)}>)"


@dataclass(repr=False)
class Result:
    """Masks for one source, with the attributes of Ultralytics' ``Results``.

    ``masks``: :class:`Masks` (N masks, ``.data`` (N, H, W) bool, ``.xy``, ``.xyn``; a plain
    (N, H, W) bool array may be passed); ``scores``: (N,) float32 (predicted IoU); ``boxes``:
    :class:`Boxes` from the masks (``.xyxy`` with inclusive max, ``.conf`` the scores,
    ``.cls``); ``orig_img``: (H, W, 3) uint8 RGB; ``orig_shape``: (H, W); ``path``: the
    source's path, or None for arrays and PIL images; ``names``: class index -> label
    (default ``{0: "object"}``); ``classes``: (N,) class index of each mask (default 0);
    ``save_dir``: the folder ``predict(save=True)`` wrote the plot to.

    With prompts, masks are ordered object by object, ``masks_per_object`` (1, or 3 with
    ``multimask_output``) per object; ``prompts`` holds them. In everything mode
    ``masks_per_object`` is 0 and ``records`` holds the generator's records (uncompressed RLE).
    """

    orig_img: np.ndarray
    masks: Masks
    scores: np.ndarray
    path: str | None = None
    prompts: Prompts | None = None
    masks_per_object: int = 1
    records: list[dict[str, Any]] | None = None
    names: dict[int, str] = field(default_factory=lambda: {0: "object"})
    classes: np.ndarray | None = None
    save_dir: str | None = None
    boxes: Boxes = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.masks, Masks):
            self.masks = Masks(self.masks)
        n = len(self.masks)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        self.classes = (np.zeros(n, dtype=np.int64) if self.classes is None
                        else np.asarray(self.classes, dtype=np.int64).reshape(n))
        unknown = sorted(set(self.classes.tolist()) - set(self.names))
        if unknown:
            raise ValueError(f"classes {unknown} have no entry in names {self.names}")
        xyxy = masks_to_boxes(self.masks.data).astype(np.float32).reshape(-1, 4)
        data = np.concatenate([xyxy, self.scores[:, None], self.classes[:, None]], axis=1)
        self.boxes = Boxes(data, self.orig_shape)

    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        kind = "everything" if self.masks_per_object == 0 else \
            f"{len(self) // max(1, self.masks_per_object)} object(s)"
        return (f"Result(path={self.path!r}, orig_shape={self.orig_shape}, masks={len(self)} "
                f"({kind}), names={self.names})")

    @property
    def orig_shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.orig_img.shape[0]), int(self.orig_img.shape[1])

    @property
    def best(self) -> np.ndarray:
        """Index (into ``masks``) of the highest-scoring mask of each object; in everything
        mode, every mask."""
        if self.masks_per_object <= 1:
            return np.arange(len(self))
        grouped = self.scores.reshape(-1, self.masks_per_object)
        best: np.ndarray = np.arange(len(grouped)) * self.masks_per_object + grouped.argmax(axis=1)
        return best

    def labels(self) -> list[str]:
        """The label (``names[cls]``) of each mask."""
        return [self.names[int(c)] for c in self.boxes.cls]

    def plot(self, *, alpha: float = 0.5, outline: bool = True, prompts: bool = True) -> np.ndarray:
        """The overlay (H, W, 3) uint8 RGB: with prompts, the best mask of each object in the
        object's colour plus the points and boxes; in everything mode every mask in its own
        colour, largest drawn first so small ones stay visible."""
        from .io import PALETTE

        masks = self.masks.data
        if self.masks_per_object == 0:
            order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
            colors = [PALETTE[i % len(PALETTE)] for i in order] or None
            return overlay(self.orig_img, masks[order], colors=colors, alpha=alpha,
                           outline=outline)
        points = labels = boxes = None
        if prompts and self.prompts is not None:
            if self.prompts.points is not None and self.prompts.labels is not None:
                points = self.prompts.points.reshape(-1, 2)
                labels = self.prompts.labels.reshape(-1)
            boxes = self.prompts.boxes
        return overlay(self.orig_img, masks[self.best], alpha=alpha, outline=outline,
                       points=points, labels=labels, boxes=boxes)

    def save(self, filename: str | os.PathLike[str] | None = None, **plot_kwargs: Any) -> Path:
        """Write :meth:`plot` as a PNG (atomically); returns the path. ``filename`` defaults
        to ``results_<source stem>.png`` (``results_image.png`` for arrays) in the current
        folder, as Ultralytics names it."""
        if filename is None:
            filename = f"results_{Path(self.path).stem if self.path else 'image'}.png"
        return save_image_png(filename, self.plot(**plot_kwargs))

    def summary(self, normalize: bool = False, decimals: int = 5) -> list[dict[str, Any]]:
        """One dict per mask, as Ultralytics' ``Results.summary``: ``name`` (label),
        ``class``, ``confidence`` (score), ``box`` (``x1, y1, x2, y2``, inclusive max) and
        ``segments`` (``x`` and ``y`` lists of the :attr:`Masks.xy` outline); coordinates
        divided by the image size with ``normalize``, all rounded to ``decimals``."""
        h, w = self.orig_shape
        sx, sy = (1.0 / w, 1.0 / h) if normalize else (1.0, 1.0)
        labels = self.labels()
        outlines = self.masks.xy
        rows = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.boxes.xyxy[i])
            xy = outlines[i].astype(np.float64)
            rows.append({
                "name": labels[i],
                "class": int(self.boxes.cls[i]),
                "confidence": round(float(self.scores[i]), decimals),
                "box": {"x1": round(x0 * sx, decimals), "y1": round(y0 * sy, decimals),
                        "x2": round(x1 * sx, decimals), "y2": round(y1 * sy, decimals)},
                "segments": {"x": np.round(xy[:, 0] * sx, decimals).tolist(),
                             "y": np.round(xy[:, 1] * sy, decimals).tolist()},
            })
        return rows

    def to_json(self, normalize: bool = False, decimals: int = 5) -> str:
        """:meth:`summary` as a JSON string (indented), as Ultralytics' ``Results.to_json``."""
        return json.dumps(self.summary(normalize=normalize, decimals=decimals), indent=2)

    def to_annotated_image(self, file_name: str | None = None, *,
                           best_only: bool = True) -> AnnotatedImage:
        """The result as a :class:`mobile_sam.formats.AnnotatedImage` for the dataset
        writers: each mask labelled ``names[cls]`` with its score; with prompts only the best
        mask of each object unless ``best_only=False``. ``file_name`` defaults to the
        source's file name (``image.png`` for arrays)."""
        if file_name is None:
            file_name = Path(self.path).name if self.path else "image.png"
        keep = self.best if best_only else np.arange(len(self))
        labels = self.labels()
        h, w = self.orig_shape
        return AnnotatedImage(file_name, h, w, [
            Annotation(self.masks.data[i], labels[i], float(self.scores[i])) for i in keep
        ])

    def mask_names(self, prefix: str) -> list[str]:
        """File names :meth:`save_masks` uses: ``{prefix}_mask_{i}.png``, or
        ``{prefix}_mask_{object}_{k}.png`` with ``multimask_output``."""
        if self.masks_per_object > 1:
            m = self.masks_per_object
            return [f"{prefix}_mask_{i // m}_{i % m}.png" for i in range(len(self))]
        return [f"{prefix}_mask_{i}.png" for i in range(len(self))]

    def save_masks(self, directory: str | os.PathLike[str],
                   prefix: str | None = None) -> list[Path]:
        """Write every mask as a grayscale PNG (255 inside) into ``directory`` (created if
        needed), named by :meth:`mask_names`; ``prefix`` defaults to the source file's stem,
        or ``"image"``. Returns the paths in mask order."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        if prefix is None:
            prefix = Path(self.path).stem if self.path else "image"
        return [save_mask_png(folder / name, mask)
                for name, mask in zip(self.mask_names(prefix), self.masks.data, strict=True)]

    def to_coco(self) -> list[dict[str, Any]]:
        """One COCO-style record per mask: ``id`` (from 0), ``segmentation`` (COCO RLE, str
        counts), ``area``, ``bbox``. In everything mode the generator's records as it gives
        them (``bbox`` XYWH with w = x1 - x0 as the original SAM writes it), plus
        ``predicted_iou``, ``stability_score``, ``point_coords`` and ``crop_box`` (XYWH);
        otherwise the fields of :func:`mobile_sam.formats.coco_mask_fields` (``bbox``
        covering the mask's pixels, as pycocotools' ``toBbox``), ``score`` and ``object``
        (index of the prompt's object). For a dataset file, see :meth:`to_annotated_image`
        and :func:`mobile_sam.formats.coco_dataset`."""
        if self.records is not None:
            return [{"id": i, **rec, "segmentation": rle_to_coco(rec["segmentation"])}
                    for i, rec in enumerate(self.records)]
        per = max(1, self.masks_per_object)
        return [
            {"id": i, **coco_mask_fields(mask), "score": float(self.scores[i]), "object": i // per}
            for i, mask in enumerate(self.masks.data)
        ]


# --------------------------------------------------------------------------------- model


def _is_url(source: Any) -> bool:
    return isinstance(source, str) and source.strip().lower().startswith(("http://", "https://"))


IMAGE_SIZE = 1024
"""The model's input size (longest side); the only ``imgsz`` accepted."""


def _check_imgsz(imgsz: Any) -> None:
    sizes = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    if not sizes or any(isinstance(v, bool) or v != IMAGE_SIZE for v in sizes):
        raise PromptError(
            "imgsz",
            f"imgsz must be {IMAGE_SIZE} (SAM resizes every image's longest side to "
            f"{IMAGE_SIZE}, the size it was trained at), got {imgsz!r}"
        )


def _torch_device(device: str | torch.device) -> torch.device:
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    return target


def _next_run_dir(project: Path, name: str) -> Path:
    """``project/name``, or ``name2``, ``name3``, ... when taken (Ultralytics' run folders)."""
    candidate, n = project / name, 1
    while candidate.exists():
        n += 1
        candidate = project / f"{name}{n}"
    return candidate


def _load_source(source: Any) -> tuple[np.ndarray, str | None]:
    if _is_url(source):
        raise PromptError(
            "source",
            f"source {source!r} is a URL: images are not fetched from the network; download "
            "it and pass the file path (or an array / PIL image)"
        )
    if isinstance(source, (str, os.PathLike)):
        return load_image(source), os.fspath(source)
    if isinstance(source, (np.ndarray, Image.Image, bytes, bytearray)):
        return load_image(source), None
    raise PromptTypeError(
        "source",
        "source must be a file path, a uint8 numpy array, a PIL image, or a list of them; "
        f"got {type(source).__name__}"
    )


class SAM:
    """MobileSAM (or SAM) behind one call, in the shape of Ultralytics' ``SAM``.

    ``model``: a variant or known file name (``"vit_t"``, ``"mobile_sam.pt"``, or
    Ultralytics' ``"sam_b.pt"``, ``"sam_l.pt"``, ``"sam_h.pt"`` for ViT-B/L/H: looked up in
    the download cache and fetched when absent, see :func:`mobile_sam.weights.resolve_checkpoint`),
    a checkpoint path, or a :class:`~mobile_sam.modeling.Sam` instance; or a folder written
    by ``mobile-sam export`` (or an :class:`~mobile_sam.onnx.OnnxPredictor`), which runs in
    onnxruntime without torch. ``device``: torch
    device; None keeps an instance where it is and puts a loaded model on the CPU.
    ``backend``, ``precision``, ``conversion``: where the model runs and what runs while it is
    converted, as for :class:`SamPredictor` (``"auto"``/``"fp32"``: the fastest installed
    backend with fp32 results).

    The image embedding of the last source is kept: predicting the same pixels again (same
    array, file or image content) only runs the decoder.
    """

    def __init__(self, model: str | os.PathLike[str] | Sam | OnnxPredictor = "vit_t",
                 device: str | torch.device | None = None, *, backend: str = "auto",
                 precision: str = "fp32", conversion: str | None = None) -> None:
        self.model: Sam | OnnxPredictor
        self.predictor: SamPredictor | OnnxPredictor
        self._image_key: tuple[Any, ...] | None = None
        if isinstance(model, (str, os.PathLike)) and is_export_folder(model):
            model = open_export_folder(model, backend=backend, precision=precision,
                                       device=device)
        self._backend, self._precision = backend, precision
        self._conversion = conversion
        if isinstance(model, OnnxPredictor):
            self.model = self.predictor = model
            return
        require_torch(f"SAM({os.fspath(model)!r})" if isinstance(model, (str, os.PathLike))
                      else "SAM(model)")
        from .build import load_sam
        from .modeling import Sam
        from .predictor import SamPredictor

        if isinstance(model, Sam):
            sam = model
        elif isinstance(model, (str, os.PathLike)):
            sam = load_sam(resolve_checkpoint(model))
        else:
            raise TypeError(
                "model must be a name, a checkpoint path or a Sam model (or an exported ONNX "
                f"folder or OnnxPredictor), got {type(model).__name__}"
            )
        if device is not None or not isinstance(model, Sam):
            sam = sam.to(_torch_device(device if device is not None else "cpu"))
        self.model = sam.eval()
        self.predictor = SamPredictor(self.model, backend=backend, precision=precision,
                                      conversion=conversion)

    def __call__(self, *args: Any, **kwargs: Any) -> list[Result]:
        return self.predict(*args, **kwargs)

    def to(self, device: str | torch.device) -> SAM:
        """Move the model to ``device`` (the image embedding is computed again); returns self.
        An exported ONNX folder runs on the CPU only."""
        if isinstance(self.model, OnnxPredictor):
            if str(device) != "cpu":
                raise ValueError(f"an exported ONNX folder runs on the CPU, got device {device!r}")
            return self
        from .predictor import SamPredictor

        target = _torch_device(device)
        if target != self.predictor.device:
            self.model = self.model.to(target)
            self.predictor = SamPredictor(self.model, backend=self._backend,
                                          precision=self._precision,
                                          conversion=self._conversion)
            self._image_key = None
        return self

    def predict(
        self,
        source: Source | Sequence[Source],
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        *,
        multimask_output: bool = False,
        device: str | torch.device | None = None,
        verbose: bool = False,
        imgsz: int | Sequence[int] = IMAGE_SIZE,
        save: bool = False,
        project: str | os.PathLike[str] = "runs/segment",
        name: str = "predict",
        **generator_kwargs: Any,
    ) -> list[Result]:
        """Segment each source; returns one :class:`Result` per source (a list, also for one).

        With ``points`` / ``labels`` / ``bboxes`` (formats in the module docstring), the same
        prompts are applied to every source: one mask per object, or three with
        ``multimask_output``. Without prompts, every object is segmented by
        :class:`~mobile_sam.automatic.SamAutomaticMaskGenerator`, to which
        ``generator_kwargs`` (``points_per_side``, ``pred_iou_thresh``, ...) are passed.

        Ultralytics' options: ``device`` moves the model first (see :meth:`to`);
        ``verbose`` prints one line per image (size, masks, time); ``imgsz`` must be 1024,
        the size the model was trained at (any other value is refused); ``save`` writes each
        result's :meth:`Result.plot` as ``<source stem>.png`` (``image<i>.png`` for arrays)
        into ``<project>/<name>``, or ``<name>2``, ``<name>3``, ... if that folder exists, and
        sets ``Result.save_dir``.

        Raises ``ValueError`` for malformed prompts, prompts outside an image, a wrong
        ``imgsz`` or URL sources.
        """
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not sources:
            raise PromptError("source", "source is an empty list")
        _check_imgsz(imgsz)
        prompts = normalize_prompts(points, labels, bboxes)
        if prompts.num_objects and generator_kwargs:
            raise PromptError(
                min(generator_kwargs),
                f"generator options {sorted(generator_kwargs)} apply only without prompts "
                "(everything mode)"
            )
        if "output_mode" in generator_kwargs:
            raise PromptError("output_mode", "output_mode is chosen by SAM.predict; use "
                                             "Result.to_coco() or Result.masks instead")
        for src in sources:  # refuse a URL before any work
            if _is_url(src):
                _load_source(src)
        if device is not None:
            self.to(device)
        generator = None
        if not prompts.num_objects:
            generator = SamAutomaticMaskGenerator(
                self.predictor, output_mode="uncompressed_rle", **generator_kwargs
            )
        save_dir = _next_run_dir(Path(project), name) if save else None
        results = []
        for i, src in enumerate(sources):
            start = time.perf_counter()
            image, path = _load_source(src)
            if generator is not None:
                result = self._everything(generator, image, path)
            else:
                check_prompts_in_image(prompts, image.shape[:2], name=path or "the image")
                result = self._prompted(image, path, prompts, multimask_output)
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                result.save(save_dir / f"{Path(path).stem if path else f'image{i}'}.png")
                result.save_dir = str(save_dir)
            if verbose:
                h, w = result.orig_shape
                print(f"image {i + 1}/{len(sources)} {path or '<array>'}: {w}x{h} "
                      f"{len(result)} mask(s), {(time.perf_counter() - start) * 1000:.1f}ms")
            results.append(result)
        if verbose and save_dir is not None:
            print(f"Results saved to {save_dir}")
        return results

    def _set_image(self, image: np.ndarray) -> None:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        key = (image.shape, digest)
        if key != self._image_key or not self.predictor.is_image_set:
            self._image_key = None
            self.predictor.set_image(image)
            self._image_key = key

    def _prompted(self, image: np.ndarray, path: str | None, prompts: Prompts,
                  multimask: bool) -> Result:
        self._set_image(image)
        # One batched decoder call for all objects: B, M, H, W masks and B, M scores.
        masks, scores, _ = self.predictor.predict_batch(
            prompts.points, prompts.labels, prompts.boxes, multimask_output=multimask)
        per = masks.shape[1]
        return Result(
            orig_img=image,
            masks=Masks(masks.reshape(-1, *masks.shape[2:])),
            scores=scores.reshape(-1).astype(np.float32),
            path=path,
            prompts=prompts,
            masks_per_object=per,
        )

    def _everything(self, generator: SamAutomaticMaskGenerator, image: np.ndarray,
                    path: str | None) -> Result:
        self._image_key = None  # the generator sets (crops of) the image itself
        records = generator.generate(image)
        h, w = image.shape[:2]
        masks = (np.stack([rle_to_mask(r["segmentation"]) for r in records])
                 if records else np.zeros((0, h, w), dtype=bool))
        scores = np.asarray([r["predicted_iou"] for r in records], dtype=np.float32)
        return Result(orig_img=image, masks=Masks(masks), scores=scores, path=path,
                      masks_per_object=0, records=records)
