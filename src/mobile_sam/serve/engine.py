"""Model calls for the server: embed an image, decode prompts or a point grid against a cached
embedding. Every call that runs the model holds one lock (a :class:`.scheduler.PriorityLock`),
so concurrent requests are serialised and never share predictor state: each request gets its
own predictor bound to its own image. Interactive calls take the lock first; an "everything"
job takes it per decoder step (one prompt) and per crop embedding, as a background caller,
upscales its masks without it, and stops when its job is cancelled.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..automatic import SamAutomaticMaskGenerator
from ..io import load_image
from ..masks import mask_to_rle, masks_to_boxes, rle_to_coco
from ..modeling import Sam
from ..predictor import SamPredictor
from .cache import CachedImage
from .scheduler import Job, PriorityLock


class _EntryPredictor(SamPredictor):
    """A SamPredictor bound to one cached embedding, whose model calls take the engine's lock.

    ``full_image``: the decoded pixels of the entry, for the automatic mask generator. When the
    generator sets that very array (its crop covering the whole image), the cached embedding is
    reused; any other crop is embedded by the engine's encoder.
    ``job``: for a background job, its cancel flag: each model call then checks it and takes
    the lock after every waiting interactive call.
    """

    def __init__(self, engine: Engine, entry: CachedImage,
                 full_image: np.ndarray | None = None, job: Job | None = None) -> None:
        super().__init__(engine.model, engine.backend, engine.precision)
        self._engine = engine
        self._entry = entry
        self._full_image = full_image
        self._job = job
        if job is not None:  # one prompt per decoder step: the shortest wait for a click
            self.cpu_decoder_batch = 1
        self.set_image_embedding(entry.features, entry.original_size, entry.input_size)

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the lock for one model call: as an interactive caller, or for a job as a
        background caller that first checks (once it has the lock) it was not cancelled."""
        if self._job is None:
            with self._engine.lock:
                yield
            return
        with self._engine.lock.background():
            self._job.check()
            yield

    def _is_full_image(self, image: np.ndarray) -> bool:
        full = self._full_image
        return (full is not None and isinstance(image, np.ndarray) and image.shape == full.shape
                and image.__array_interface__["data"][0] == full.__array_interface__["data"][0])

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if image_format == "RGB" and self._is_full_image(image):
            entry = self._entry
        else:
            with self._turn():
                entry = self._engine.encode(image, image_format)
        self.set_image_embedding(entry.features, entry.original_size, entry.input_size)

    def predict(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._turn():
            return super().predict(*args, **kwargs)

    def predict_point_batch(self, points: np.ndarray, min_iou: float | None = None,
                            half_precision: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self._job is not None:  # a job takes the lock per decoder step: see _decode
            return super().predict_point_batch(points, min_iou, half_precision)
        with self._turn():
            return super().predict_point_batch(points, min_iou, half_precision)

    def _decode(self, *args: Any, **kwargs: Any) -> Any:
        # A job's batch is decoded a few prompts at a time (SamPredictor.cpu_decoder_batch on
        # a CPU); taking the lock per step lets a click in after a few prompts, not 64.
        if self._job is None:  # the caller holds the lock already
            return super()._decode(*args, **kwargs)
        with self._turn():
            return super()._decode(*args, **kwargs)

    def upscale_logits(self, low_res_logits: np.ndarray) -> np.ndarray:
        if self._job is not None:
            # Upscaling reads no model state (on a CPU it is numpy): a job does it without
            # the lock, so that clicks never wait for it.
            self._job.check()
            return super().upscale_logits(low_res_logits)
        with self._turn():
            return super().upscale_logits(low_res_logits)


def image_id(data: bytes) -> str:
    """The id of an upload: the sha256 of its bytes (hex), so equal uploads share one entry."""
    return hashlib.sha256(data).hexdigest()


class Engine:
    """The model, the lock that serialises its use, and the one predictor that runs the image
    encoder (so an encoder backend, e.g. an onnxruntime session, is set up once per app)."""

    def __init__(self, model: Sam, backend: str = "auto", precision: str = "fp32") -> None:
        if not isinstance(model, Sam):
            raise TypeError(f"model must be a mobile_sam Sam model, got {type(model).__name__}")
        self.model = model.eval()
        self.lock = PriorityLock()
        self._encoder = SamPredictor(self.model, backend, precision)  # checks both
        self.backend, self.precision = self._encoder.backend, precision

    def encode(self, image: np.ndarray, image_format: str = "RGB") -> CachedImage:
        """Embed an H, W, 3 uint8 image: an entry without id or data (see :meth:`embed`)."""
        with self.lock:
            encoder = self._encoder
            try:
                encoder.set_image(image, image_format)
                return CachedImage(id="", features=encoder.get_image_embedding(),
                                   original_size=tuple(encoder.original_size),
                                   input_size=tuple(encoder.input_size), data=b"")
            finally:
                encoder.reset_image()

    def embed(self, key: str, data: bytes, image: np.ndarray) -> CachedImage:
        """The cache entry for an upload: its id, bytes and the embedding of its pixels."""
        return dataclasses.replace(self.encode(image), id=key, data=data)

    def predict(self, entry: CachedImage, point_coords: Any, point_labels: Any, box: Any,
                multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        """Masks (M, H, W) bool and scores (M,) for one prompt on the entry's image (XY pixels
        of the original image, XYXY box). The predictor validates the prompt (PromptError)."""
        predictor = _EntryPredictor(self, entry)
        def array(value: Any, dtype: Any = None) -> np.ndarray | None:
            return None if value is None else np.asarray(value, dtype=dtype)

        masks, scores, _ = predictor.predict(
            point_coords=array(point_coords, np.float64), point_labels=array(point_labels),
            box=array(box, np.float64), multimask_output=multimask_output,
        )
        return masks, scores

    def everything(self, entry: CachedImage, options: dict[str, Any],
                   job: Job | None = None) -> list[dict[str, Any]]:
        """Automatic mask generation on the entry's image: records with COCO RLE segmentations.

        ``options`` are :class:`SamAutomaticMaskGenerator` keyword arguments (validated there).
        The whole-image crop reuses the cached embedding; the lock is taken per model call, so
        interactive requests are not blocked for the whole run. With a ``job``, the run yields
        the lock to waiting interactive calls before each model call and raises
        :class:`.scheduler.JobCancelled` at the first call after the job is cancelled.
        """
        # The upload was decoded (and its pixel count checked) once already.
        image = load_image(entry.data, max_pixels=None)
        predictor = _EntryPredictor(self, entry, full_image=image, job=job)
        generator = SamAutomaticMaskGenerator(predictor, output_mode="coco_rle", **options)
        return generator.generate(image)


def masks_as_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """(M, H, W) bool masks -> COCO compressed RLE dicts {"size": [H, W], "counts": str}."""
    return [rle_to_coco(rle) for rle in mask_to_rle(masks)]


def mask_boxes(masks: np.ndarray) -> list[list[int]]:
    """(M, H, W) bool masks -> XYXY boxes, inclusive max; [0, 0, 0, 0] for an empty mask."""
    return masks_to_boxes(masks).tolist()
