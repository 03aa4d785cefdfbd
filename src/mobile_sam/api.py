"""The one-line API: ``SAM("mobile_sam.pt").predict(source, points=..., labels=..., bboxes=...)``.

A thin layer over :class:`~mobile_sam.predictor.SamPredictor` (prompts) and
:class:`~mobile_sam.automatic.SamAutomaticMaskGenerator` (no prompt: "everything" mode) that
takes paths, arrays or PIL images and returns one :class:`Result` per source, with masks,
scores, boxes, an overlay and COCO records. Prompt formats follow Ultralytics' ``SAM``:

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

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .automatic import SamAutomaticMaskGenerator
from .build import load_sam
from .io import load_image, overlay, save_image_png, save_mask_png
from .masks import (
    area_from_rle,
    box_xyxy_to_xywh,
    mask_to_rle,
    masks_to_boxes,
    rle_to_coco,
    rle_to_mask,
)
from .modeling import Sam
from .predictor import SamPredictor
from .prompts import (
    PromptError,
    PromptTypeError,
    as_finite,
    check_boxes,
    check_inside_image,
    check_labels,
)
from .weights import resolve_checkpoint

__all__ = ["SAM", "Prompts", "Result", "check_prompts_in_image", "normalize_prompts"]

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


@dataclass
class Result:
    """Masks for one source.

    ``masks``: (N, H, W) bool; ``scores``: (N,) float32 (predicted IoU); ``boxes``: (N, 4)
    float32 XYXY from the masks, with inclusive max (x1 is the last column holding a pixel;
    an empty mask gives zeros); ``orig_img``: (H, W, 3) uint8 RGB; ``path``: the source's
    path, or None for arrays and PIL images.

    With prompts, masks are ordered object by object, ``masks_per_object`` (1, or 3 with
    ``multimask_output``) per object; ``prompts`` holds them. In everything mode
    ``masks_per_object`` is 0 and ``records`` holds the generator's records (uncompressed RLE).
    """

    orig_img: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    path: str | None = None
    prompts: Prompts | None = None
    masks_per_object: int = 1
    records: list[dict[str, Any]] | None = None
    boxes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.boxes = masks_to_boxes(self.masks).astype(np.float32).reshape(-1, 4)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def best(self) -> np.ndarray:
        """Index (into ``masks``) of the highest-scoring mask of each object; in everything
        mode, every mask."""
        if self.masks_per_object <= 1:
            return np.arange(len(self))
        grouped = self.scores.reshape(-1, self.masks_per_object)
        best: np.ndarray = np.arange(len(grouped)) * self.masks_per_object + grouped.argmax(axis=1)
        return best

    def plot(self, *, alpha: float = 0.5, outline: bool = True, prompts: bool = True) -> np.ndarray:
        """The overlay (H, W, 3) uint8: with prompts, the best mask of each object in the
        object's colour plus the points and boxes; in everything mode every mask in its own
        colour, largest drawn first so small ones stay visible."""
        from .io import PALETTE

        if self.masks_per_object == 0:
            order = np.argsort(-self.masks.sum(axis=(1, 2)), kind="stable")
            colors = [PALETTE[i % len(PALETTE)] for i in order] or None
            return overlay(self.orig_img, self.masks[order], colors=colors, alpha=alpha,
                           outline=outline)
        points = labels = boxes = None
        if prompts and self.prompts is not None:
            if self.prompts.points is not None and self.prompts.labels is not None:
                points = self.prompts.points.reshape(-1, 2)
                labels = self.prompts.labels.reshape(-1)
            boxes = self.prompts.boxes
        return overlay(self.orig_img, self.masks[self.best], alpha=alpha, outline=outline,
                       points=points, labels=labels, boxes=boxes)

    def save(self, path: str | os.PathLike[str], **plot_kwargs: Any) -> Path:
        """Write :meth:`plot` as a PNG (atomically); returns the path."""
        return save_image_png(path, self.plot(**plot_kwargs))

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
                for name, mask in zip(self.mask_names(prefix), self.masks, strict=True)]

    def to_coco(self) -> list[dict[str, Any]]:
        """One COCO-style record per mask: ``id``, ``segmentation`` (COCO RLE, str counts),
        ``area``, ``bbox`` (XYWH); in everything mode also ``predicted_iou``,
        ``stability_score``, ``point_coords`` and ``crop_box`` (XYWH) as the generator gives
        them, otherwise ``score`` and ``object`` (index of the prompt's object)."""
        if self.records is not None:
            return [{"id": i, **rec, "segmentation": rle_to_coco(rec["segmentation"])}
                    for i, rec in enumerate(self.records)]
        rles = mask_to_rle(self.masks) if len(self) else []
        xywh = box_xyxy_to_xywh(masks_to_boxes(self.masks).reshape(-1, 4)).tolist()
        per = max(1, self.masks_per_object)
        return [
            {
                "id": i,
                "segmentation": rle_to_coco(rle),
                "area": area_from_rle(rle),
                "bbox": xywh[i],
                "score": float(self.scores[i]),
                "object": i // per,
            }
            for i, rle in enumerate(rles)
        ]


# --------------------------------------------------------------------------------- model


def _is_url(source: Any) -> bool:
    return isinstance(source, str) and source.strip().lower().startswith(("http://", "https://"))


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
    """MobileSAM (or SAM) behind one call.

    ``model``: a variant or known file name (``"vit_t"``, ``"mobile_sam.pt"``: looked up in
    the download cache and fetched when absent, see :func:`mobile_sam.weights.resolve_checkpoint`),
    a checkpoint path, or a :class:`~mobile_sam.modeling.Sam` instance. ``device``: torch
    device; None keeps an instance where it is and puts a loaded model on the CPU.
    ``backend``, ``precision``, ``conversion``: where the model runs and what runs while it is
    converted, as for :class:`SamPredictor` (``"auto"``/``"fp32"``: the fastest installed
    backend with fp32 results).

    The image embedding of the last source is kept: predicting the same pixels again (same
    array, file or image content) only runs the decoder.
    """

    def __init__(self, model: str | os.PathLike[str] | Sam = "vit_t",
                 device: str | torch.device | None = None, *, backend: str = "auto",
                 precision: str = "fp32", conversion: str | None = None) -> None:
        if isinstance(model, Sam):
            sam = model
        elif isinstance(model, (str, os.PathLike)):
            sam = load_sam(resolve_checkpoint(model))
        else:
            raise TypeError(
                "model must be a name, a checkpoint path or a Sam model, got "
                f"{type(model).__name__}"
            )
        if device is not None or not isinstance(model, Sam):
            sam = sam.to(torch.device(device if device is not None else "cpu"))
        self.model = sam.eval()
        self.predictor = SamPredictor(self.model, backend=backend, precision=precision,
                                      conversion=conversion)
        self._image_key: tuple[Any, ...] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> list[Result]:
        return self.predict(*args, **kwargs)

    def predict(
        self,
        source: Source | Sequence[Source],
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        *,
        multimask_output: bool = False,
        **generator_kwargs: Any,
    ) -> list[Result]:
        """Segment each source; returns one :class:`Result` per source (a list, also for one).

        With ``points`` / ``labels`` / ``bboxes`` (formats in the module docstring), the same
        prompts are applied to every source: one mask per object, or three with
        ``multimask_output``. Without prompts, every object is segmented by
        :class:`~mobile_sam.automatic.SamAutomaticMaskGenerator`, to which
        ``generator_kwargs`` (``points_per_side``, ``pred_iou_thresh``, ...) are passed.
        Raises ``ValueError`` for malformed prompts, prompts outside an image, or URL sources.
        """
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not sources:
            raise PromptError("source", "source is an empty list")
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
        generator = None
        if not prompts.num_objects:
            generator = SamAutomaticMaskGenerator(
                self.predictor, output_mode="uncompressed_rle", **generator_kwargs
            )
        results = []
        for src in sources:
            image, path = _load_source(src)
            if generator is not None:
                results.append(self._everything(generator, image, path))
            else:
                check_prompts_in_image(prompts, image.shape[:2], name=path or "the image")
                results.append(self._prompted(image, path, prompts, multimask_output))
        return results

    def _set_image(self, image: np.ndarray) -> None:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        key = (image.shape, digest)
        if key != self._image_key or not self.predictor.is_image_set:
            self._image_key = None
            self.predictor.set_image(image)
            self._image_key = key

    @torch.inference_mode()
    def _prompted(self, image: np.ndarray, path: str | None, prompts: Prompts,
                  multimask: bool) -> Result:
        self._set_image(image)
        p = self.predictor
        device = p.device
        original_size = p.original_size
        if original_size is None:
            raise RuntimeError("the predictor has no image set after set_image")
        coords = labels = boxes = None
        if prompts.points is not None:
            coords = torch.as_tensor(p.transform.apply_coords(prompts.points, original_size),
                                     dtype=torch.float, device=device)
            labels = torch.as_tensor(prompts.labels, dtype=torch.int, device=device)
        if prompts.boxes is not None:
            boxes = torch.as_tensor(p.transform.apply_boxes(prompts.boxes, original_size),
                                    dtype=torch.float, device=device)
        # One batched decoder call for all objects: B, M, H, W masks and B, M scores.
        masks, scores, _ = p.predict_torch(coords, labels, boxes, multimask_output=multimask)
        per = masks.shape[1]
        return Result(
            orig_img=image,
            masks=masks.reshape(-1, *masks.shape[2:]).cpu().numpy(),
            scores=scores.reshape(-1).float().cpu().numpy(),
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
        return Result(orig_img=image, masks=masks, scores=scores, path=path,
                      masks_per_object=0, records=records)
