"""Automatic mask generation: prompt SAM with a grid of points over the image and its crops,
filter the masks by predicted quality and stability, and remove duplicates.

This module imports no torch: it drives any *predictor* with the interface below, so the same
code serves :class:`mobile_sam.SamPredictor` and the torch-free ONNX runtime.

Predictor interface (all numpy):
    ``set_image(image)``: HxWx3 uint8 RGB; ``reset_image()``; ``mask_threshold`` (float);
    ``predict_point_batch(points, min_iou=None, half_precision=False)``: (N, 2) XY pixels of
    the image last set, one positive point per prompt, multimask output → (low-res logits
    (N, 3, 256, 256) float32, IoU (N, 3) float32); logits of prompts with no IoU above
    `min_iou` may be zeros, and with `min_iou` the logits may be cut to the top-left part
    that ``upscale_logits`` reads; `half_precision=True` (fast mode) allows a float16 decoder;
    ``upscale_logits(low_res)``: (K, 256, 256) or that part → (K, H, W) float32 logits at the
    image's size.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mobile_sam.masks import (
    MaskData,
    area_from_rle,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    masks_to_boxes,
    nms,
    remove_small_regions,
    rle_to_coco,
    rle_to_mask,
    stability_score,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from mobile_sam.prompts import (
    PromptError,
    PromptTypeError,
    check_generator_options,
    check_image,
)

__all__ = ["SamAutomaticMaskGenerator"]

_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_MODES = ("exact", "fast")
# Fast mode skips points covered by masks at least this good (the original's default
# thresholds), whatever thresholds the caller filters with.
_CONFIDENT_IOU = 0.88
_CONFIDENT_STABILITY = 0.95
_PREDICTOR_METHODS = ("set_image", "reset_image", "predict_point_batch", "upscale_logits")
# Upscale at most this many full-resolution logits at once (float32: 128 MiB), so memory stays
# bounded on large images whatever points_per_batch is.
_MAX_UPSCALED_ELEMENTS = 2**25
# Run-length encode at most this many unpacked masks at once.
_RLE_CHUNK = 64


def _coarse_to_fine(grid: np.ndarray) -> list[np.ndarray]:
    """Indices of a point grid in two levels: every other point of a square n×n grid in both
    directions, then the rest; a grid that is not square is one level."""
    n = int(round(math.sqrt(len(grid))))
    if n * n != len(grid) or n < 3:
        return [np.arange(len(grid))]
    row, col = np.divmod(np.arange(len(grid)), n)
    coarse = (row % 2 == 0) & (col % 2 == 0)
    return [np.nonzero(coarse)[0], np.nonzero(~coarse)[0]]


class _BatchCounter:
    """Counts an image's prompt batches and reports each one to the callbacks as
    ``callback(done, total)``. A callback that raises stops the generation there."""

    def __init__(self, total: int, callbacks: list[Callable[[int, int], Any]]) -> None:
        self.done, self.total, self.callbacks = 0, total, callbacks

    def skip(self, batches: int) -> None:
        """Batches counted in the total that will not run (fast mode's covered points): the
        callbacks hear the lowered total at once, with `done` unchanged."""
        if batches > 0:
            self.total -= batches
            for callback in self.callbacks:
                callback(self.done, self.total)

    def finished_one(self) -> None:
        self.done += 1
        for callback in self.callbacks:
            callback(self.done, self.total)


def _progress_bar() -> Callable[[int, int], None]:
    """A callback drawing a tqdm bar of an image's prompt batches on a terminal (nothing
    elsewhere); it closes itself on the last batch."""
    from tqdm import tqdm

    bar = tqdm(desc="prompt batches", unit="batch", leave=False, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def _batches(n: int, size: int) -> int:
    return -(-n // size)


def _pack_masks(masks: np.ndarray) -> np.ndarray:
    """(N, h, w) bool -> (N, ceil(h·w / 8)) uint8: candidates are kept packed until the crop's
    NMS, which drops most of them, so only the masks kept are run-length encoded."""
    n, h, w = masks.shape
    return np.packbits(masks.reshape(n, h * w), axis=1)


def _unpack_masks(packed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.unpackbits(packed, axis=1, count=h * w).reshape(len(packed), h, w).view(bool)


def _empty_data(crop_size: tuple[int, int]) -> MaskData:
    """No candidate masks of a crop of `crop_size` (h, w), in their packed form."""
    h, w = crop_size
    return MaskData(
        packed=np.zeros((0, -(-h * w // 8)), dtype=np.uint8),
        boxes=np.zeros((0, 4), dtype=np.int64),
        iou_preds=np.zeros(0, dtype=np.float32),
        points=np.zeros((0, 2), dtype=np.float64),
        stability_score=np.zeros(0, dtype=np.float32),
    )


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image, as the original SAM ``SamAutomaticMaskGenerator``.

    ``model`` is a :class:`mobile_sam.modeling.Sam` (wrapped in a ``SamPredictor``) or a
    predictor object (see the module docstring). The other arguments keep the original names
    and meanings:

    points_per_side: grid points per image side (``points_per_side**2`` prompts); exclusive
        with ``point_grids``.
    points_per_batch: prompts decoded together.
    pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables).
    stability_score_thresh: keep masks whose stability score is >= this (0 disables).
    stability_score_offset: logit offset of the stability score.
    box_nms_thresh: box-IoU threshold of the NMS within a crop.
    crop_n_layers: extra crop layers; layer i has 2**i × 2**i crops.
    crop_nms_thresh: box-IoU threshold of the NMS across crops.
    crop_overlap_ratio: crop overlap as a fraction of the short side (for the first layer).
    crop_n_points_downscale_factor: points per side are divided by this**i in layer i.
    point_grids: explicit normalised (n, 2) XY grids in [0, 1], one per layer.
    min_mask_region_area: if > 0, fill holes and remove islands smaller than this (pixels).
    output_mode: ``"binary_mask"`` (HxW bool), ``"uncompressed_rle"`` or ``"coco_rle"``.
    mode: ``"exact"`` (default) computes what the original computes. ``"fast"`` prompts
        coarse to fine: first every other grid point in both directions, then only the
        remaining points that no confident kept mask (predicted IoU >= 0.88, stability >=
        0.95) covers yet (a point inside a found object mostly
        finds that object again, which NMS would discard). Far fewer decoder runs on images
        with large confident objects; masks that only a skipped point would have found are
        missed. The decoder may also run in float16 where the CPU computes it natively
        (OpenVINO on AVX512-FP16 CPUs: ~1.4x faster per point).
    on_batch: called as ``on_batch(done, total)`` after each batch of ``points_per_batch``
        prompts, within ``generate``: ``done`` counts the image's batches so far (1, 2, ...),
        ``total`` is the number of batches of the image, all crops included; the last call
        has ``done == total``. In fast mode ``total`` starts as if every point ran; when
        points covered by confident masks are skipped, one call reports the lowered total
        with ``done`` unchanged. An exception raised by the callback stops the generation
        and propagates out of ``generate`` (a way to cancel, e.g. in a server).
    progress: show a progress bar of the image's prompt batches on a terminal (tqdm; nothing
        when stderr is not a terminal).
    """

    # The checked options, set in __init__ from `check_generator_options`.
    points_per_side: int | None
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    crop_n_layers: int
    crop_nms_thresh: float
    crop_overlap_ratio: float
    crop_n_points_downscale_factor: int
    min_mask_region_area: int
    point_grids: list[np.ndarray]

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        mode: str = "exact",
        on_batch: Callable[[int, int], Any] | None = None,
        progress: bool = False,
    ) -> None:
        if mode not in _MODES:
            raise PromptError("mode", f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        if (points_per_side is None) == (point_grids is None):
            raise PromptError(
                "points_per_side",
                "exactly one of points_per_side and point_grids must be given, got "
                f"points_per_side={points_per_side!r} and point_grids="
                f"{'None' if point_grids is None else f'<{len(point_grids)} grids>'}",
            )
        options = check_generator_options(
            points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
        )
        for name, value in options.items():  # attributes named as the arguments
            setattr(self, name, value)
        if self.points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(
                self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
            )
        else:
            self.point_grids = self._check_point_grids(point_grids, self.crop_n_layers)
        if output_mode not in _OUTPUT_MODES:
            raise PromptError("output_mode",
                              f"output_mode must be one of {_OUTPUT_MODES}, got {output_mode!r}")
        self.output_mode = output_mode
        if on_batch is not None and not callable(on_batch):
            raise PromptTypeError("on_batch", "on_batch must be a callable(done, total), got "
                                              f"{type(on_batch).__name__}")
        self.on_batch = on_batch
        self.progress = bool(progress)
        self.predictor = self._as_predictor(model)

    @staticmethod
    def _check_point_grids(point_grids: Any, crop_n_layers: int) -> list[np.ndarray]:
        if not isinstance(point_grids, (list, tuple)):
            raise PromptTypeError(
                "point_grids",
                f"point_grids must be a list of (n, 2) arrays, got {type(point_grids).__name__}",
            )
        if len(point_grids) < crop_n_layers + 1:
            raise PromptError(
                "point_grids",
                f"point_grids has {len(point_grids)} grids but crop_n_layers={crop_n_layers} "
                f"needs {crop_n_layers + 1}",
            )
        grids = []
        for i, grid in enumerate(point_grids):
            grid = np.asarray(grid, dtype=np.float64)
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
                raise PromptError("point_grids",
                                  f"point_grids[{i}] must have shape (n, 2), got {grid.shape}")
            if not np.all((grid >= 0.0) & (grid <= 1.0)):
                raise PromptError("point_grids",
                                  f"point_grids[{i}] must lie in [0, 1] (normalised XY)")
            grids.append(grid)
        return grids

    @staticmethod
    def _as_predictor(model: Any) -> Any:
        if all(callable(getattr(model, m, None)) for m in _PREDICTOR_METHODS):
            return model
        # Only a Sam model needs torch; import it lazily so this module stays torch-free.
        try:
            from mobile_sam.modeling import Sam
        except ImportError:  # no torch: then only a predictor object can work
            pass
        else:
            if isinstance(model, Sam):
                from mobile_sam.predictor import SamPredictor

                return SamPredictor(model)
        raise TypeError(
            "model must be a mobile_sam Sam model or a predictor with "
            f"{', '.join(_PREDICTOR_METHODS)}; got {type(model).__name__}"
        )

    # ------------------------------------------------------------------ public

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an HxWx3 uint8 RGB image, as a list of records.

        Each record: ``segmentation`` (per ``output_mode``), ``area`` (int pixels), ``bbox``
        (XYWH), ``predicted_iou``, ``point_coords`` ([[x, y]] prompt in image pixels),
        ``stability_score`` and ``crop_box`` (XYWH).
        """
        image = check_image(image)
        data = self._generate_masks(image)

        if self.min_mask_region_area > 0 and len(data) > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )

        if self.output_mode == "coco_rle":
            segmentations: list[Any] = [rle_to_coco(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_mask(rle) for rle in data["rles"]]
        else:
            segmentations = list(data["rles"])

        bboxes = box_xyxy_to_xywh(data["boxes"]).tolist()
        crop_boxes = box_xyxy_to_xywh(data["crop_boxes"]).tolist()
        points = data["points"].tolist()
        ious = data["iou_preds"].tolist()
        stabilities = data["stability_score"].tolist()
        return [
            {
                "segmentation": segmentations[i],
                "area": area_from_rle(data["rles"][i]),
                "bbox": bboxes[i],
                "predicted_iou": ious[i],
                "point_coords": [points[i]],
                "stability_score": stabilities[i],
                "crop_box": crop_boxes[i],
            }
            for i in range(len(data))
        ]

    # ------------------------------------------------------------------ steps

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        counter = self._batch_counter(layer_idxs)
        parts = [
            self._process_crop(image, crop_box, layer_idx, orig_size, counter)
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs)
        ]
        data = MaskData.concat(parts)

        if len(crop_boxes) > 1:
            # Prefer masks from smaller crops (float32 scores, as the original's 1 / int area).
            scores = np.float32(1.0) / box_area(data["crop_boxes"]).astype(np.float32)
            data.filter(nms(data["boxes"], scores, self.crop_nms_thresh))
        return data

    def _batch_counter(self, layer_idxs: list[int]) -> _BatchCounter:
        """The image's batch counter: every crop's grid in batches of points_per_batch."""
        callbacks = [] if self.on_batch is None else [self.on_batch]
        if self.progress:
            callbacks.append(_progress_bar())
        # Fast mode batches each level of the grid apart; its total drops as points are skipped.
        levels = {i: _coarse_to_fine(self.point_grids[i]) if self.mode == "fast"
                  else [self.point_grids[i]] for i in set(layer_idxs)}
        total = sum(_batches(len(level), self.points_per_batch)
                    for i in layer_idxs for level in levels[i])
        return _BatchCounter(total, callbacks)

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, int],
        counter: _BatchCounter,
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        crop_h, crop_w = cropped.shape[:2]
        self.predictor.set_image(cropped)
        try:
            grid = self.point_grids[layer_idx]
            points_for_image = grid * np.array([[crop_w, crop_h]])
            parts = [_empty_data((crop_h, crop_w))]
            if self.mode == "exact":
                for start in range(0, len(points_for_image), self.points_per_batch):
                    points = points_for_image[start : start + self.points_per_batch]
                    parts.append(self._process_batch(points, crop_box, orig_size))
                    counter.finished_one()
            else:
                covered = np.zeros((crop_h, crop_w), dtype=bool)
                for level in _coarse_to_fine(grid):
                    points = points_for_image[level]
                    cols = np.clip(points[:, 0].astype(np.int64), 0, crop_w - 1)
                    rows = np.clip(points[:, 1].astype(np.int64), 0, crop_h - 1)
                    points = points[~covered[rows, cols]]
                    counter.skip(_batches(len(level), self.points_per_batch)
                                 - _batches(len(points), self.points_per_batch))
                    for start in range(0, len(points), self.points_per_batch):
                        batch = points[start : start + self.points_per_batch]
                        parts.append(self._process_batch(batch, crop_box, orig_size, covered))
                        counter.finished_one()
        finally:
            self.predictor.reset_image()
        data = MaskData.concat(parts)

        # Remove duplicates within this crop; only the masks kept are run-length encoded.
        data.filter(nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))
        packed = data["packed"]
        del data["packed"]
        data["rles"] = []
        for start in range(0, len(packed), _RLE_CHUNK):
            masks = _unpack_masks(packed[start : start + _RLE_CHUNK], (crop_h, crop_w))
            data["rles"].extend(mask_to_rle(masks, crop_box=crop_box, orig_size=orig_size))

        # Return to the original image frame.
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, dtype=np.int64), (len(data), 1))
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        crop_box: list[int],
        orig_size: tuple[int, int],
        covered: np.ndarray | None = None,
    ) -> MaskData:
        """Decode one batch of points; `covered` (crop-sized bool), if given, is or-ed with
        every mask kept."""
        orig_h, orig_w = orig_size
        # Masks at or under the IoU threshold are dropped below, so the predictor may skip
        # upscaling prompts that have none above it (exact, and most of the decoder's work).
        min_iou = float(np.float32(self.pred_iou_thresh)) if self.pred_iou_thresh > 0.0 else None
        # Only fast mode passes half_precision: exact mode keeps the two-argument interface.
        extra = {"half_precision": True} if self.mode == "fast" else {}
        low_res, iou_preds = self.predictor.predict_point_batch(points, min_iou=min_iou, **extra)
        low_res = np.asarray(low_res)
        iou_preds = np.asarray(iou_preds)
        n_points, n_masks = low_res.shape[:2]
        low_res = low_res.reshape(n_points * n_masks, *low_res.shape[2:])
        iou_preds = iou_preds.reshape(-1)
        mask_points = np.repeat(points, n_masks, axis=0)

        # Filtering by predicted IoU before upscaling is exact: each mask upscales on its own.
        # Compare in float32, as torch does for a float32 tensor and a Python float.
        if self.pred_iou_thresh > 0.0:
            keep = np.nonzero(iou_preds > np.float32(self.pred_iou_thresh))[0]
        else:
            keep = np.arange(len(iou_preds))

        threshold = float(self.predictor.mask_threshold)
        crop_h, crop_w = crop_box[3] - crop_box[1], crop_box[2] - crop_box[0]
        chunk = max(1, _MAX_UPSCALED_ELEMENTS // max(1, crop_h * crop_w))
        parts = [_empty_data((crop_h, crop_w))]
        for start in range(0, len(keep), chunk):
            idx = keep[start : start + chunk]
            logits = np.asarray(self.predictor.upscale_logits(low_res[idx]))
            stability = stability_score(logits, threshold, self.stability_score_offset)
            masks = logits > np.asarray(threshold, dtype=logits.dtype)
            del logits
            if self.stability_score_thresh > 0.0:
                stable = stability >= np.float32(self.stability_score_thresh)
                if not stable.all():  # select among the bool masks: a quarter of the copying
                    idx, stability, masks = idx[stable], stability[stable], masks[stable]
            boxes = masks_to_boxes(masks)

            # Drop masks whose box touches a crop edge that is not an image edge.
            near = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            if near.any():
                masks, boxes = masks[~near], boxes[~near]
                idx, stability = idx[~near], stability[~near]
            if covered is not None:
                confident = (iou_preds[idx] >= _CONFIDENT_IOU) & (stability >= _CONFIDENT_STABILITY)
                if confident.any():
                    covered |= masks[confident].any(axis=0)
            parts.append(
                MaskData(
                    packed=_pack_masks(masks),
                    boxes=boxes,
                    iou_preds=iou_preds[idx].astype(np.float32),
                    points=mask_points[idx].astype(np.float64),
                    stability_score=stability,
                )
            )
        return MaskData.concat(parts)

    @staticmethod
    def postprocess_small_regions(
        mask_data: MaskData, min_area: float, nms_thresh: float
    ) -> MaskData:
        """Fill small holes and remove small islands in every mask, then NMS again, preferring
        masks that did not change. Changed masks that survive get their new RLE and box."""
        if len(mask_data) == 0:
            return mask_data
        new_rles: list[Any] = []
        boxes = np.zeros((len(mask_data), 4), dtype=np.int64)
        scores = np.zeros(len(mask_data), dtype=np.float32)
        for i, rle in enumerate(mask_data["rles"]):
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            unchanged = not (changed_holes or changed_islands)
            scores[i] = float(unchanged)
            boxes[i] = masks_to_boxes(mask[None])[0]
            new_rles.append(None if unchanged else mask_to_rle(mask[None])[0])

        keep = nms(boxes, scores, nms_thresh)
        rles = list(mask_data["rles"])
        old_boxes = np.array(mask_data["boxes"], copy=True)
        for i in keep:
            if scores[i] == 0.0:
                rles[i] = new_rles[i]
                old_boxes[i] = boxes[i]
        mask_data["rles"] = rles
        mask_data["boxes"] = old_boxes
        mask_data.filter(keep)
        return mask_data
