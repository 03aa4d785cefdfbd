"""A Label Studio ML backend: interactive segmentation from keypoints and rectangles.

Label Studio sends the task and, in interactive mode, ``context["result"]``: the keypoint
(``keypointlabels``, ``is_positive`` false for a negative click) and rectangle
(``rectanglelabels``) regions the annotator just drew, in percent of the image. `predict`
returns one prediction per task holding one ``brushlabels`` result (the mask in Label
Studio's brush RLE, `encode_brush_rle`) or ``polygonlabels`` result (the pixel-edge outline
of the mask's largest part, `mobile_sam.formats.mask_to_polygons`), labelled like the
prompt.

The class follows ``label_studio_ml.model.LabelStudioMLBase`` (``predict(tasks, context=None,
**kwargs)``) and subclasses it when the ``label-studio-ml`` package is installed, so its
server (``label-studio-ml start``, or ``label_studio_ml.api.init_app(MobileSamBackend)``)
serves it; without the package it is a plain class with the same methods. The model is any
`mobile_sam.SAM` source: a checkpoint or an exported ONNX folder (no torch needed), set by the
``model`` argument or ``MOBILE_SAM_MODEL``.
"""
from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import __version__

try:  # optional: the package only supplies the base class and its server
    from label_studio_ml.model import LabelStudioMLBase as _Base
except Exception:  # noqa: BLE001 - not installed, or its own imports (redis, rq) missing
    _Base = object

__all__ = ["MobileSamBackend", "encode_brush_rle", "parse_label_config"]

# Label Studio's brush RLE: thi.ng's rle-pack bit stream of the RGBA pixels, 8-bit words and
# run-length fields of 3, 4, 8 or 16 bits.
_WORD_BITS = 8
_RUN_BITS = (3, 4, 8, 16)
_MAX_RUN = 1 << _RUN_BITS[-1]


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> Label Studio brush RLE (``value.rle`` with ``format: "rle"``).

    The brush layer is H×W RGBA bytes, 255 in every channel inside the mask. The stream is a
    32-bit value count, the word size − 1 (5 bits) and the four run-field sizes − 1 (4 bits
    each), then one chunk per run: a 1 bit (repeat), a 2-bit run-field choice, the run
    length − 1 and the byte. Bits are packed most significant first.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    values = np.repeat(mask.ravel().astype(np.uint8) * 255, 4)
    bits: list[str] = [format(len(values), "032b"), format(_WORD_BITS - 1, "05b")]
    bits += [format(size - 1, "04b") for size in _RUN_BITS]
    starts = np.flatnonzero(np.diff(values.astype(np.int16))) + 1
    bounds = np.concatenate([[0], starts, [len(values)]])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        value = format(int(values[start]), f"0{_WORD_BITS}b")
        for offset in range(int(start), int(stop), _MAX_RUN):
            count = min(_MAX_RUN, int(stop) - offset) - 1
            choice = next(i for i, size in enumerate(_RUN_BITS) if count < 1 << size)
            bits.append(f"1{choice:02b}{count:0{_RUN_BITS[choice]}b}{value}")
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return np.packbits(np.frombuffer(stream.encode(), np.uint8) - ord("0")).tolist()


def parse_label_config(label_config: str) -> dict[str, str]:
    """The names `predict` needs from a Label Studio labeling config (XML): the first
    BrushLabels or PolygonLabels control (``from_name``, ``output`` "brush" or "polygon"),
    the image it labels (``to_name``) and the task data key of that image (``value``)."""
    root = ET.fromstring(label_config)
    for element in root.iter():
        if element.tag in ("BrushLabels", "PolygonLabels"):
            to_name = element.get("toName", "")
            image = next((e for e in root.iter("Image") if e.get("name") == to_name), None)
            if image is None:
                break
            return {"from_name": element.get("name", ""), "to_name": to_name,
                    "value": image.get("value", "$image").lstrip("$"),
                    "output": "brush" if element.tag == "BrushLabels" else "polygon"}
    raise ValueError("the labeling config needs a <BrushLabels> or <PolygonLabels> control "
                     "with toName naming an <Image>")


class MobileSamBackend(_Base):  # type: ignore[misc, valid-type]
    """Label Studio ML backend: keypoints and rectangles in ``context`` -> one mask result.

    model: a `mobile_sam.SAM` source (default ``$MOBILE_SAM_MODEL``, else "vit_t"), or a SAM
    instance. label_config: the project's labeling config (Label Studio passes it).
    image_loader: task image URL -> local path, array or bytes (default: the base class's
    ``get_local_path``, which fetches Label Studio uploads, else the URL as a path).
    polygon_tolerance: Douglas-Peucker tolerance in pixels of polygon results (0: every
    corner).
    """

    def __init__(self, label_config: str | None = None, *, model: Any = None,
                 image_loader: Callable[[str], Any] | None = None,
                 polygon_tolerance: float = 1.0, **kwargs: Any) -> None:
        if _Base is not object:
            super().__init__(label_config=label_config, **kwargs)
        self.label_config = label_config
        self.names = parse_label_config(label_config) if label_config else None
        self._model_source = model if model is not None else os.environ.get(
            "MOBILE_SAM_MODEL", "vit_t")
        self._sam: Any = None
        self._image_loader = image_loader
        self.polygon_tolerance = polygon_tolerance
        self.model_version = f"mobile_sam-{__version__}"

    @property
    def sam(self) -> Any:
        """The model, loaded on first use (a checkpoint needs torch; a folder does not)."""
        if self._sam is None:
            from ..api import SAM

            source = self._model_source
            self._sam = source if isinstance(source, SAM) else SAM(source)
        return self._sam

    def _load(self, url: str) -> Any:
        if self._image_loader is not None:
            return self._image_loader(url)
        if _Base is not object:
            return self.get_local_path(url)
        return url

    def predict(self, tasks: Sequence[dict[str, Any]], context: dict[str, Any] | None = None,
                **kwargs: Any) -> list[dict[str, Any]]:
        """One prediction per task: ``{"result": [...], "score", "model_version"}``; a task
        without prompts in ``context`` gets an empty result."""
        if self.names is None:
            raise ValueError("MobileSamBackend needs the project's label_config")
        context = context if context is not None else kwargs.get("context") or {}
        regions = context.get("result") or []
        predictions = []
        for task in tasks:
            url = task.get("data", {}).get(self.names["value"])
            if url is None:
                raise ValueError(f"task {task.get('id')} has no data[{self.names['value']!r}]")
            predictions.append(self._predict_one(url, regions))
        return predictions

    def _predict_one(self, url: str, regions: Sequence[dict[str, Any]]) -> dict[str, Any]:
        empty = {"result": [], "score": 0.0, "model_version": self.model_version}
        if not regions:
            return empty
        width = int(regions[0]["original_width"])
        height = int(regions[0]["original_height"])
        points, labels, box, label = [], [], None, None
        for region in regions:
            value = region["value"]
            x, y = value["x"] * width / 100, value["y"] * height / 100
            if region["type"] == "keypointlabels":
                points.append([x, y])
                labels.append(0 if region.get("is_positive") is False else 1)
                label = label or (value.get("keypointlabels") or [None])[0]
            elif region["type"] == "rectanglelabels":
                box = [x, y, x + value["width"] * width / 100, y + value["height"] * height / 100]
                label = label or (value.get("rectanglelabels") or [None])[0]
        if not points and box is None:
            return empty
        result = self.sam.predict(self._load(url), points=[points] if points else None,
                                  labels=[labels] if points else None, bboxes=box)[0]
        mask, score = result.masks[0], float(result.scores[0])
        image_height, image_width = mask.shape
        if (image_height, image_width) != (height, width):
            raise ValueError(f"the image at {url} is {image_width}x{image_height} but Label "
                             f"Studio's regions are on a {width}x{height} image")
        labels_key = f"{self.names['output']}labels"
        if self.names["output"] == "brush":
            value = {"format": "rle", "rle": encode_brush_rle(mask)}
        else:
            from ..formats import mask_to_polygons

            # Pixel-edge outline (pixel centres at integers, edges at n - 0.5): + 0.5 puts
            # it in Label Studio's frame, where pixel x covers [x, x + 1].
            parts = mask_to_polygons(mask, self.polygon_tolerance, pixel_edges=True)
            outline = parts[0] + 0.5 if parts else np.zeros((0, 2))
            value = {"points": (outline * [100 / width, 100 / height]).tolist(),
                     "closed": True}
        value[labels_key] = [label] if label else []
        return {
            "result": [{
                "id": uuid.uuid4().hex[:10], "from_name": self.names["from_name"],
                "to_name": self.names["to_name"], "type": labels_key,
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": value, "score": score, "readonly": False,
            }],
            "score": score,
            "model_version": self.model_version,
        }
