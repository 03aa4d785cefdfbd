"""The one place that decides what input is valid, and packs prompts for the model.

Numpy only: torch is imported only by `pack_prompts` when it is given tensors.

Every surface calls these functions: `SamPredictor`, `SamAutomaticMaskGenerator`, the
one-line API (`SAM(...).predict`), the CLI, the server and the torch-free ONNX runtime, so
each accepts and refuses the same inputs. A refused input raises :class:`PromptError` (a
``ValueError``; :class:`PromptTypeError` is also a ``TypeError``) whose ``field`` names the
argument or request field, so callers never parse messages.

The rules:

* **Image**: a numpy uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); gray becomes three
  equal channels, alpha is dropped; not empty. For a model, the short side must still be a
  pixel once the long side is resized to the model's input size: the long side may be at most
  ``2 * size`` times the short one (2048:1 for SAM's 1024). Thinner images would be resized to
  a side of 0 pixels, so they are refused everywhere with the same message (rather than
  clamped to 1 pixel: SAM's exported ONNX decoder computes the resized size in its graph, as
  the original does, and would then disagree with the other paths).
* **Points**: finite XY pixels, shape (N, 2) with N >= 1; labels 1 (foreground), 0 (background)
  or -1 (ignored: SAM's padding, e.g. for objects with fewer points), as integers.
* **Boxes**: finite XYXY with ``x1 >= x0`` and ``y1 >= y0``. A zero-width or zero-height box
  is accepted: SAM encodes it like any other (its two corners), as the original predictor does.
* **Inside the image** (surfaces that know the image: the one-line API, the CLI, the server;
  `SamPredictor` keeps the original's any-coordinates semantics): a point must lie in
  ``[0, W] x [0, H]``, edges included, and a box must meet that rectangle. Pixel coordinates
  are continuous: the image covers [0, W] x [0, H], a click on its right or bottom edge gives
  ``x == W`` (the web page clamps clicks into exactly this range), and a box spanning the whole
  image is [0, 0, W, H]; so the inclusive rule is the one that fits points and boxes alike.
* **Automatic mask generation**: the numeric options' bounds are :data:`GENERATOR_BOUNDS`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .transforms import ResizeLongestSide, get_preprocess_shape

__all__ = [
    "GENERATOR_BOUNDS",
    "LABELS",
    "Bound",
    "PromptError",
    "PromptTypeError",
    "as_finite",
    "check_boxes",
    "check_generator_options",
    "check_image",
    "check_image_size",
    "check_inside_image",
    "check_labels",
    "check_mask_input",
    "check_points",
    "check_prompt_batch",
    "check_single_box",
    "pack_prompts",
]

LABELS = (1, 0, -1)
"""Point labels: 1 foreground, 0 background, -1 ignored (padding)."""

IMAGE_SHAPES = "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"


class PromptError(ValueError):
    """An input that is refused. ``field``: the argument or request field it concerns, e.g.
    ``"point_coords"``, ``"box"``, ``"image"``, ``"points_per_side"``; the message says what
    was expected and what was received."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PromptTypeError(PromptError, TypeError):
    """A :class:`PromptError` for a value of the wrong type (not an array, not uint8, ...)."""


def _show(array: np.ndarray) -> Any:
    """An array for a message: its values when few, else its shape."""
    return array.tolist() if array.size <= 16 else f"an array of shape {array.shape}"


# ------------------------------------------------------------------ images


Features = TypeVar("Features")


def require_image(is_image_set: bool, features: Features | None,
                  original_size: tuple[int, int] | None, input_size: tuple[int, int] | None
                  ) -> tuple[Features, tuple[int, int], tuple[int, int]]:
    """A predictor's current image embedding, original (H, W) and resized (h', w') sizes, or
    the original package's error when it is prompted before `set_image`."""
    if not is_image_set or features is None or original_size is None or input_size is None:
        raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
    return features, original_size, input_size


def check_image(image: Any, image_format: str = "RGB", *, long_side: int | None = None,
                field: str = "image") -> np.ndarray:
    """Check an image array and return it as (H, W, 3) uint8 RGB, C-contiguous.

    Gray (H, W) or (H, W, 1) becomes three equal channels; RGBA (H, W, 4) drops its alpha
    channel; ``image_format="BGR"`` reverses the channel order. An image that needs no change
    is returned as is (not copied). ``long_side``: the model's input size, to refuse images too
    thin for it (see :func:`check_image_size`).
    """
    if image_format not in ("RGB", "BGR"):
        raise PromptError("image_format",
                          f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise PromptTypeError(field, f"{field} must be a uint8 numpy array, got "
                                     f"{type(image).__name__}; shape {IMAGE_SHAPES}")
    if image.dtype != np.uint8:
        raise PromptTypeError(field, f"{field} must have dtype uint8, got {image.dtype}; convert "
                                     "it to 0..255 first, e.g. np.clip(x * 255, 0, 255).round()"
                                     ".astype(np.uint8) for floats in 0..1")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise PromptError(field, f"{field} must have shape {IMAGE_SHAPES}, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise PromptError(field, f"{field} is empty: shape {image.shape}")
    if long_side is not None:
        check_image_size(image.shape[:2], long_side, field)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def check_image_size(size: tuple[int, int], long_side: int, field: str = "image") -> None:
    """Refuse an image of ``size`` (H, W) whose short side would become 0 pixels when its long
    side is resized to ``long_side`` (the model's input size)."""
    height, width = (int(v) for v in size)
    resized = get_preprocess_shape(height, width, long_side)
    if min(resized) < 1:
        raise PromptError(
            field,
            f"{field} of {width}x{height} pixels (width x height) is too thin for the model: "
            f"resizing its long side to {long_side} pixels leaves {resized[1]}x{resized[0]}; "
            f"the long side may be at most {2 * long_side} times the short side",
        )


# ------------------------------------------------------------------ points, labels, boxes


def as_finite(value: Any, field: str, shape: str) -> np.ndarray:
    """``value`` as a float64 array of finite numbers; ``shape`` describes the expected layout
    for the message."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptTypeError(field, f"{field} must be numeric with shape {shape}: {exc}") from None
    if not np.all(np.isfinite(array)):
        raise PromptError(field, f"{field} must be finite numbers (no NaN or infinite values), "
                                 f"got {_show(array)}")
    return array


def check_labels(labels: Any, field: str = "point_labels") -> np.ndarray:
    """Point labels (any shape) as int64: each 1 (foreground), 0 (background) or -1 (ignored)."""
    array = np.asarray(labels)
    numeric = array.dtype != np.bool_ and np.issubdtype(array.dtype, np.number)
    if not numeric or not np.isin(array, LABELS).all():
        raise PromptError(field, f"{field} must be 1 (foreground), 0 (background) or -1 "
                                 f"(ignored), got {_show(array)}")
    return array.astype(np.int64)


def check_points(point_coords: Any, point_labels: Any, *, coords_field: str = "point_coords",
                 labels_field: str = "point_labels") -> tuple[np.ndarray, np.ndarray]:
    """One prompt's points: coords (N, 2) float64 XY pixels and labels (N,) int64, N >= 1."""
    if point_coords is None or point_labels is None:
        raise PromptError(coords_field,
                          f"{coords_field} and {labels_field} must be given together (got "
                          f"{coords_field}={'None' if point_coords is None else 'array'}, "
                          f"{labels_field}={'None' if point_labels is None else 'array'})")
    coords = as_finite(point_coords, coords_field, "(N, 2)")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise PromptError(coords_field, f"{coords_field} must have shape (N, 2) with N >= 1, "
                                        f"got {coords.shape}")
    if np.shape(point_labels) != (len(coords),):
        raise PromptError(labels_field, f"{labels_field} must have shape ({len(coords)},) to "
                                        f"match {coords_field} {coords.shape}, "
                                        f"got {np.shape(point_labels)}")
    return coords, check_labels(point_labels, labels_field)


def check_boxes(boxes: Any, field: str = "box") -> np.ndarray:
    """XYXY boxes, shape (4,) or (N, 4) with N >= 1, as (N, 4) float64; x1 >= x0, y1 >= y0."""
    array = as_finite(boxes, field, "(4,) or (N, 4) XYXY")
    if array.ndim not in (1, 2) or array.shape[-1] != 4 or array.size == 0:
        raise PromptError(field, f"{field} must be XYXY with shape (4,) or (N, 4), "
                                 f"got shape {array.shape}")
    array = array.reshape(-1, 4)
    bad = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if bad.any():
        raise PromptError(field, f"{field} must be XYXY with x1 >= x0 and y1 >= y0 (top-left "
                                 f"corner, then bottom-right), got {array[bad][0].tolist()}")
    return array


def check_single_box(box: Any, field: str = "box") -> np.ndarray:
    """One XYXY box (the `predict` methods' ``box``) as (1, 4) float64."""
    array = check_boxes(box, field)
    if len(array) != 1:
        raise PromptError(field, f"{field} must be one XYXY box of 4 numbers, got shape "
                                 f"{np.shape(box)}; use predict_torch for several boxes (or "
                                 "call predict once per box)")
    return array


def check_mask_input(mask_input: Any, size: tuple[int, int],
                     field: str = "mask_input") -> np.ndarray:
    """A (1, h, w) low-res logits array from an earlier prediction, as float64."""
    want = (1, *size)
    mask = as_finite(mask_input, field, str(want))
    if mask.shape != want:
        raise PromptError(field, f"{field} must have shape {want} (low-res logits of an "
                                 f"earlier prediction), got {mask.shape}")
    return mask


def check_prompt_batch(point_coords: np.ndarray | None, point_labels: np.ndarray | None,
                       boxes: np.ndarray | None, mask_shape: tuple[int, ...] | None,
                       mask_size: tuple[int, int]) -> int:
    """Batched prompts (`SamPredictor.predict_torch`): coords B x N x 2 with labels B x N,
    boxes B x 4, a mask input of shape ``mask_shape`` = B x 1 x h x w (``mask_size`` (h, w)).
    Applies the point, label and box rules above; returns B (1 with no prompt at all)."""
    sizes = {}
    if (point_coords is None) != (point_labels is None):
        raise PromptError("point_coords", "point_coords and point_labels must be given together")
    if point_coords is not None and point_labels is not None:  # given together (checked above)
        coords = as_finite(point_coords, "point_coords", "B x N x 2")
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise PromptError("point_coords", f"point_coords must be B x N x 2, got {coords.shape}")
        if np.shape(point_labels) != coords.shape[:2]:
            raise PromptError("point_labels", f"point_labels must be B x N = {coords.shape[:2]}, "
                                              f"got {np.shape(point_labels)}")
        check_labels(point_labels)
        sizes["point_coords"] = coords.shape[0]
    if boxes is not None:
        if np.ndim(boxes) != 2:
            raise PromptError("boxes", f"boxes must be B x 4 XYXY, got {np.shape(boxes)}")
        sizes["boxes"] = len(check_boxes(boxes, "boxes"))
    if mask_shape is not None:
        want = (1, *mask_size)
        if len(mask_shape) != 4 or tuple(mask_shape[1:]) != want:
            raise PromptError("mask_input", f"mask_input must be B x {' x '.join(map(str, want))},"
                                            f" got {tuple(mask_shape)}")
        sizes["mask_input"] = mask_shape[0]
    if len(set(sizes.values())) > 1:
        raise PromptError(next(iter(sizes)), f"prompt batch sizes differ: {sizes}")
    return next(iter(sizes.values()), 1)


def _index(flat: int, shape: tuple[int, ...]) -> str:
    """``[i]`` / ``[i][j]``: where item ``flat`` of a ``shape`` array of items is; "" for one."""
    return "".join(f"[{int(i)}]" for i in np.unravel_index(flat, shape)) if shape else ""


def check_inside_image(size: tuple[int, int], points: Any = None, boxes: Any = None, *,
                       image: str = "the image", points_field: str = "point_coords",
                       boxes_field: str = "box") -> None:
    """Refuse a point outside an image of ``size`` (H, W), i.e. not in [0, W] x [0, H] (edges
    included), or a box that does not meet that rectangle.

    points: (..., 2) XY pixels; boxes: (..., 4) XYXY; ``image`` names the image in messages.
    """
    height, width = size
    if points is not None:
        array = np.asarray(points, dtype=np.float64)
        flat = array.reshape(-1, 2)
        x, y = flat[:, 0], flat[:, 1]
        outside = (x < 0) | (x > width) | (y < 0) | (y > height)
        if outside.any():
            i = int(np.argmax(outside))
            raise PromptError(
                points_field,
                f"{points_field}{_index(i, array.shape[:-1])} = ({x[i]:g}, {y[i]:g}) is outside "
                f"{image} of size {width}x{height} (width x height): points must have "
                f"0 <= x <= {width} and 0 <= y <= {height}",
            )
    if boxes is not None:
        array = np.asarray(boxes, dtype=np.float64)
        flat = array.reshape(-1, 4)
        outside = ((flat[:, 0] > width) | (flat[:, 1] > height) | (flat[:, 2] < 0)
                   | (flat[:, 3] < 0))
        if outside.any():
            i = int(np.argmax(outside))
            box = ", ".join(f"{v:g}" for v in flat[i])
            raise PromptError(
                boxes_field,
                f"{boxes_field}{_index(i, array.shape[:-1])} = ({box}) does not overlap {image} "
                f"of size {width}x{height} (width x height): boxes (XYXY pixels) must meet "
                f"the image's rectangle [0, {width}] x [0, {height}]",
            )


# ------------------------------------------------------------------ packing


def pack_prompts(point_coords: Any, point_labels: Any, boxes: Any, *,
                 original_size: tuple[int, int] | None = None,
                 long_side: int | None = None) -> tuple[Any, Any]:
    """B prompts -> one point list per prompt, the model's prompt input (SAM's ONNX convention).

    point_coords: B x N x 2 with point_labels B x N, or None; boxes: B x 4 XYXY (or one (4,)
    box), or None. With ``original_size`` (H, W) and ``long_side`` (the model's input size),
    coordinates are XY pixels of the original image and are first moved into the model's
    input frame (`ResizeLongestSide`); without, they are in that frame already.

    Returns coords B x N' x 2 float32 and labels B x N' int64: the points, then either a
    padding point (0, 0) labelled -1 when there is no box, or the box's two corners labelled
    2 (top-left) and 3 (bottom-right): the tokens SAM's prompt encoder makes, in its order.
    With neither points nor boxes: 1 x 0 x 2 and 1 x 0. numpy arrays give numpy arrays;
    torch tensors give tensors on their device, differentiable in the coordinates (the
    prompt encoder packs with this too).
    """
    if (original_size is None) != (long_side is None):
        raise ValueError("original_size and long_side must be given together")
    ops = _ArrayOps.of(point_coords, boxes)
    if boxes is not None:
        boxes = ops.floats(boxes).reshape(-1, 4)
    if original_size is not None:
        transform = ResizeLongestSide(int(long_side))  # type: ignore[arg-type]
        if point_coords is not None:
            point_coords = transform.apply_coords_torch(point_coords, original_size) \
                if ops.torch else transform.apply_coords(point_coords, original_size)
        if boxes is not None:
            boxes = transform.apply_boxes_torch(boxes, original_size) \
                if ops.torch else transform.apply_boxes(boxes, original_size)
    parts, part_labels = [], []
    if point_coords is not None:
        b = len(point_coords)
        parts.append(ops.floats(point_coords))
        part_labels.append(ops.labels(point_labels))
        if boxes is None:
            parts.append(ops.zeros((b, 1, 2)))
            part_labels.append(ops.labels([[-1]] * b))
    if boxes is not None:
        b = len(boxes)
        parts.append(ops.floats(boxes).reshape(b, 2, 2))
        part_labels.append(ops.labels([[2, 3]] * b))
    if not parts:
        return ops.zeros((1, 0, 2)), ops.labels(np.zeros((1, 0), np.int64))
    return ops.concatenate(parts), ops.concatenate(part_labels)


class _ArrayOps:
    """The few array operations `pack_prompts` needs, on numpy arrays or on torch tensors (on
    the tensors' device; torch is imported only when tensors are given)."""

    def __init__(self, torch_module: Any = None, device: Any = None) -> None:
        self.torch = torch_module
        self.device = device

    @classmethod
    def of(cls, *arrays: Any) -> _ArrayOps:
        for array in arrays:
            if array is not None and hasattr(array, "detach"):  # a torch tensor, duck-typed
                import torch

                return cls(torch, array.device)
        return cls()

    def floats(self, x: Any) -> Any:
        if self.torch is not None:
            return self.torch.as_tensor(x, device=self.device).to(self.torch.float32)
        return np.asarray(x, dtype=np.float32)

    def labels(self, x: Any) -> Any:
        if self.torch is not None:
            return self.torch.as_tensor(x, device=self.device).to(self.torch.int64)
        return np.asarray(x, dtype=np.int64)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self.torch is not None:
            return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)
        return np.zeros(shape, np.float32)

    def concatenate(self, parts: list[Any]) -> Any:
        if self.torch is not None:
            return self.torch.cat(parts, dim=1)
        return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------ automatic mask generation


@dataclass(frozen=True)
class Bound:
    """A numeric option's type (int or float) and range: [low, high], or [low, high) when
    ``high_open``; floats must also be finite."""

    kind: type
    low: float
    high: float = math.inf
    high_open: bool = False

    @property
    def expected(self) -> str:
        """E.g. "an integer in [1, 256]", "a number in [0, 1)", "a finite number >= 0"."""
        def show(value: float) -> str:  # integers in full: 2147483648, not 2.14748e+09
            return str(int(value)) if self.kind is int else f"{value:g}"

        if math.isinf(self.high):
            noun = "an integer" if self.kind is int else "a finite number"
            return f"{noun} >= {show(self.low)}"
        noun = "an integer" if self.kind is int else "a number"
        return f"{noun} in [{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"

    def check(self, name: str, value: Any) -> Any:
        """``value`` as ``kind``, or PromptError (PromptTypeError for a wrong type)."""
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise PromptTypeError(name, f"{name} must be {self.expected}, got "
                                        f"{type(value).__name__} {value!r}")
        value = self.kind(value)
        below_high = value < self.high if self.high_open else value <= self.high
        if not (math.isfinite(value) and self.low <= value and below_high):
            raise PromptError(name, f"{name} must be {self.expected}, got {value!r}")
        return value


# Upper bounds: beyond them a run only costs more, it finds nothing new.
GENERATOR_BOUNDS: dict[str, Bound] = {
    # The decoder's masks are 256 x 256 logits of the 1024-pixel input (4 pixels a cell) and
    # a crop is resized to that input too: 256 points a side already puts one point in every
    # cell; that is 65,536 prompts per crop, minutes of decoding.
    "points_per_side": Bound(int, 1, 256),
    # Each prompt of a batch holds 3 x 256 x 256 float32 low-res logits (0.75 MiB): 1024
    # prompts are 768 MiB at once (the original's default is 64).
    "points_per_batch": Bound(int, 1, 1024),
    "pred_iou_thresh": Bound(float, 0, 1),
    "stability_score_thresh": Bound(float, 0, 1),
    "stability_score_offset": Bound(float, 0),
    "box_nms_thresh": Bound(float, 0, 1),
    # Layer i has 4**i crops, each embedded by the encoder: 4 layers are 341 encoder runs,
    # with crops 1/16 of the image's side; a fifth layer would add 1024 more.
    "crop_n_layers": Bound(int, 0, 4),
    "crop_nms_thresh": Bound(float, 0, 1),
    "crop_overlap_ratio": Bound(float, 0, 1, high_open=True),
    # No upper bound of its own: check_generator_options refuses a factor that leaves a crop
    # layer without points.
    "crop_n_points_downscale_factor": Bound(int, 1),
    "min_mask_region_area": Bound(float, 0),
}
"""The numeric options of `SamAutomaticMaskGenerator` and their valid ranges."""


def check_generator_options(**options: Any) -> dict[str, Any]:
    """Check `SamAutomaticMaskGenerator` options named in :data:`GENERATOR_BOUNDS` (others
    pass through unchanged; ``points_per_side`` may be None when point grids are given);
    returns them converted to int or float."""
    checked = dict(options)
    for name, value in options.items():
        if name in GENERATOR_BOUNDS and not (name == "points_per_side" and value is None):
            checked[name] = GENERATOR_BOUNDS[name].check(name, value)
    side = checked.get("points_per_side")
    layers = checked.get("crop_n_layers", 0)
    factor = checked.get("crop_n_points_downscale_factor", 1)
    if side is not None and int(side / factor**layers) < 1:
        raise PromptError("points_per_side",
                          f"points_per_side={side} leaves no points in crop layer {layers} "
                          f"with crop_n_points_downscale_factor={factor}")
    return checked
