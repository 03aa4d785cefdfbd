"""Reading images and writing results (mask PNGs, overlays, JSON), with no half-written files.

Reading: :func:`load_image` turns a file, encoded bytes, a PIL image or a numpy array into
one thing, an ``(H, W, 3)`` uint8 RGB array, applying EXIF orientation and refusing images
whose header announces more pixels than a limit before decoding them.

Writing: every writer goes through :func:`atomic_write`, which writes a temporary file in the
destination folder and renames it into place, so a crash or an error never leaves a truncated
output behind.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageOps, UnidentifiedImageError

from .prompts import check_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PALETTE",
    "ImageLoadError",
    "ImageTooLargeError",
    "OutputWriteError",
    "atomic_write",
    "load_image",
    "mask_outline",
    "overlay",
    "remove_stale_temporaries",
    "save_image_png",
    "save_json",
    "save_mask_png",
]

DEFAULT_MAX_PIXELS = 100_000_000
"""Images announcing more pixels than this are refused unless told otherwise (100 MP)."""

MAX_PIXELS_ENV = "MOBILE_SAM_MAX_PIXELS"

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)
"""Mask colours (RGB) in the order :func:`overlay` uses them: the 20 Tableau colours."""

POSITIVE_COLOR = (0, 255, 0)
NEGATIVE_COLOR = (255, 0, 0)
_POINT_BORDER = (255, 255, 255)

ImageSource = (str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | np.ndarray
               | Image.Image)


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than allowed (checked from its header, before decoding)."""


class OutputWriteError(OSError):
    """An output file could not be written; the message names the file and its folder."""


# --------------------------------------------------------------------------------------------
# Reading


def _max_pixels_from(max_pixels: int | None | Literal["auto"]) -> int | None:
    if max_pixels != "auto":
        if max_pixels is not None and (isinstance(max_pixels, bool) or max_pixels <= 0):
            raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
        return max_pixels
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    if value.lower() in ("none", "0"):
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit <= 0:
        raise ValueError(
            f"${MAX_PIXELS_ENV} must be a positive integer, 0 or 'none', got {value!r}"
        )
    return limit


def load_image(
    source: ImageSource, *, max_pixels: int | None | Literal["auto"] = "auto"
) -> np.ndarray:
    """Read an image as an ``(H, W, 3)`` uint8 RGB array (a new array, C-contiguous).

    ``source`` is a file path, the bytes of an encoded image, a binary file object, a PIL
    image or a numpy array. Files and PIL images:

    * EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so ``H, W`` are the
      upright size a photo viewer shows; multi-frame files give their first frame;
    * grayscale becomes three equal channels: ``1`` and ``L`` as is (``1`` as 0/255);
      16-bit (``I;16*``) by the nearest 8-bit value, ``round(v / 257)``, so 65535 → 255;
      32-bit integer ``I`` is taken as 16-bit data (Pillow uses it for 16-bit PNG/TIFF):
      clipped to 0..65535, then the same; float ``F`` is taken as 0..1: clipped, times 255,
      rounded (NaN → 0);
    * alpha is dropped, not composited: ``RGBA``/``LA``/``PA`` give their colour channels
      unchanged, which is what SAM segments;
    * palette (``P``) is expanded; ``CMYK``, ``YCbCr`` and the other modes are converted by
      Pillow's ``convert("RGB")``.

    Arrays must be uint8 (``TypeError`` otherwise) shaped ``(H, W)``, ``(H, W, 1)`` (gray →
    three channels), ``(H, W, 3)`` (taken as RGB) or ``(H, W, 4)`` (alpha dropped), not
    empty; anything else raises ``ValueError`` (the rules of
    :func:`mobile_sam.prompts.check_image`). Arrays are already decoded, so no pixel limit.

    ``max_pixels``: files and PIL images with more than this many pixels (``W * H``, read
    from the header before any decoding) raise :class:`ImageTooLargeError`. ``"auto"`` means
    ``$MOBILE_SAM_MAX_PIXELS`` (an integer; ``0`` or ``none`` for no limit) or else
    :data:`DEFAULT_MAX_PIXELS`; None means no limit of ours. Pillow's decompression-bomb
    warning is silenced (this limit replaces it), but its hard error above
    ``2 * PIL.Image.MAX_IMAGE_PIXELS`` still applies and is reported the same way.

    Raises ``FileNotFoundError`` for a missing file and :class:`ImageLoadError` for anything
    that is not a readable image, both naming the file.
    """
    limit = _max_pixels_from(max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _decode(lambda: source, "<PIL image>", limit, close=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode(lambda: Image.open(io.BytesIO(data)), "<image bytes>", limit, close=True)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise ImageLoadError(f"cannot read image {path}: it is a folder")
        return _decode(lambda: Image.open(path), str(path), limit, close=True)
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file object>"))
        return _decode(lambda: Image.open(source), name, limit, close=True)
    raise TypeError(
        "image source must be a path, bytes, a binary file, a PIL image or a numpy array, "
        f"got {type(source).__name__}"
    )


def _decode(
    open_image: Callable[[], Image.Image], name: str, limit: int | None, close: bool
) -> np.ndarray:
    with warnings.catch_warnings():
        # Our own limit, checked below from the header, replaces Pillow's warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = open_image()
            try:
                width, height = im.size
                if limit is not None and width * height > limit:
                    raise ImageTooLargeError(
                        f"image {name} is {width}x{height} = {width * height} pixels, more "
                        f"than the limit of {limit}; pass max_pixels= or set "
                        f"${MAX_PIXELS_ENV} to read it"
                    )
                im.load()
                return _to_rgb(im)
            finally:
                if close:
                    im.close()
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image {name} is too large to decode: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageLoadError(
                f"cannot read image {name}: not a recognised image format"
            ) from exc
        except Exception as exc:  # truncated or corrupt data surfaces as many types
            raise ImageLoadError(
                f"cannot read image {name}: {type(exc).__name__}: {exc}"
            ) from exc


def _from_16bit(values: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers: 257 maps 0..65535 onto 0..255 exactly.
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in ("1", "L"):
        return check_image(np.asarray(im.convert("L"), dtype=np.uint8))
    if mode in ("LA", "La"):
        return check_image(np.asarray(im.getchannel(0), dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I":
        return check_image(_from_16bit(np.asarray(im)))
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        return check_image(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8))
    if mode in ("RGBA", "RGBX", "RGBa"):
        return check_image(np.asarray(im, dtype=np.uint8))
    if mode in ("P", "PA"):
        # Through RGBA: Pillow warns when a palette with byte transparency goes to RGB.
        return check_image(np.asarray(im.convert("RGBA"), dtype=np.uint8))
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _from_array(array: np.ndarray) -> np.ndarray:
    # The one image check (mobile_sam.prompts); a new array, never a view of the caller's.
    rgb = check_image(array)
    return rgb.copy() if np.may_share_memory(rgb, array) else rgb


# --------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Create or replace the file ``path`` with what ``write(file)`` writes; return its path.

    ``write`` gets a binary file object open on a temporary file in the same folder
    (``.<name>.<pid>-<random>.tmp``); once it returns, the data is flushed to disk and the file is
    renamed over ``path`` with ``os.replace``, so readers see the old file or the complete new
    one, never a part. If ``write`` raises, the temporary file is removed and the exception
    propagates. The folder must exist: a missing or unwritable folder raises
    :class:`OutputWriteError` naming it. The new file gets the usual permissions
    (0666 minus the umask).
    """
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise OutputWriteError(f"cannot write {target}: it is a folder")
    tmp = folder / f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        if not folder.exists():
            reason = "does not exist"
        elif not folder.is_dir():
            reason = "is not a folder"
        else:
            reason = f"is not writable ({exc.strerror or exc})"
        raise OutputWriteError(f"cannot write {target}: folder {folder} {reason}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    return target


# The temporary files of atomic_write: .<name>.<pid>-<12 hex digits>.tmp
_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\.tmp$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a pid beyond C's int
        return pid < 2**31
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files that :func:`atomic_write` left in ``folder`` and its
    subfolders when its process was killed (SIGKILL, power loss); returns how many.

    Only files named as atomic_write names them whose writing process no longer runs are
    removed, so a run writing into the same folder at the same time keeps its own.
    """
    removed = 0
    for path in Path(folder).rglob(".*.tmp"):
        found = _TEMPORARY.match(path.name)
        if found and path.is_file() and not _process_alive(int(found.group(1))):
            try:
                path.unlink()
            except OSError:
                continue
            removed += 1
    return removed


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_png(path: str | os.PathLike[str], im: Image.Image) -> Path:
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


def save_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Write an ``(H, W)`` bool mask as an 8-bit grayscale PNG: 255 inside, 0 outside.

    Reading it back and thresholding at > 127 gives exactly ``mask``.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}; use e.g. mask > 0")
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    return _save_png(path, Image.fromarray(mask.astype(np.uint8) * np.uint8(255)))


def save_image_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a uint8 image, ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"image must have shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    return _save_png(path, Image.fromarray(np.ascontiguousarray(image)))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8")  # e.g. COCO RLE counts from pycocotools
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def save_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None) -> Path:
    """Write ``obj`` as UTF-8 JSON (with a final newline), atomically.

    numpy arrays and scalars, bytes (decoded as UTF-8, as pycocotools RLE counts need) and
    paths are converted. NaN and infinities are refused (they are not JSON): ``ValueError``.
    The object is serialised before the file is touched, so a failure leaves no file.
    """
    try:
        text = json.dumps(
            obj, default=_json_default, ensure_ascii=False, allow_nan=False, indent=indent
        )
    except ValueError as exc:
        raise ValueError(f"cannot write {path} as JSON: {exc}") from exc
    except TypeError as exc:
        raise TypeError(f"cannot write {path} as JSON: {exc}") from exc
    data = (text + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------------------------
# Overlay


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The ``(H, W)`` bool outline of an ``(H, W)`` bool mask.

    With ``thickness`` 1, the mask pixels that have a 4-neighbour outside the mask; the
    image border counts as outside. Larger thickness repeats the erosion.
    """
    inner = mask
    for _ in range(thickness):
        p = np.pad(inner, 1, constant_values=False)
        inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _as_colors(colors: Sequence[Sequence[int]] | np.ndarray | None) -> list[tuple[int, int, int]]:
    if colors is None:
        return list(PALETTE)
    array = np.asarray(colors)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) == 0:
        raise ValueError(f"colors must be a non-empty list of (R, G, B), got shape {array.shape}")
    if np.any(array < 0) or np.any(array > 255):
        raise ValueError("colors must be in 0..255")
    return [(int(r), int(g), int(b)) for r, g, b in np.rint(array)]


def _as_float_array(value: Any, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    wrong = any(s is not None and a != s for a, s in zip(array.shape, shape, strict=False))
    if array.ndim != len(shape) or wrong:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    colors: Sequence[Sequence[int]] | np.ndarray | None = None,
    alpha: float = 0.5,
    outline: bool = True,
    points: np.ndarray | Sequence[Sequence[float]] | None = None,
    labels: np.ndarray | Sequence[int] | None = None,
    boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """Draw masks and prompts on a copy of an image; returns ``(H, W, 3)`` uint8.

    ``image``: ``(H, W, 3)`` uint8 RGB. ``masks``: ``(N, H, W)`` (or one ``(H, W)``) bool;
    mask ``i`` is blended over the image in ``colors[i % len(colors)]`` (default
    :data:`PALETTE`) with opacity ``alpha``, later masks on top, and with ``outline`` its
    border pixels (:func:`mask_outline`, about 1 px per 512 px of the shorter side) are
    painted in that colour fully opaque. Pixels outside every mask are left unchanged.

    Prompts, in XY pixel coordinates of ``image``: ``points`` ``(K, 2)`` with ``labels``
    ``(K,)`` (default all 1) are drawn as filled circles with a white border, green for label
    1 and red for label 0; other labels (SAM's -1 padding, 2/3 box corners) are not drawn.
    ``boxes`` ``(M, 4)`` XYXY are drawn as rectangles, box ``i`` in colour ``i``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.dtype != np.bool_:
        raise TypeError(f"masks must be a bool array, got dtype {masks.dtype}; use e.g. masks > 0")
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(
            f"masks must have shape (N, {height}, {width}) to match the image, got {masks.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    palette = _as_colors(colors)
    thickness = max(1, min(height, width) // 512)

    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        color = np.asarray(palette[i % len(palette)], dtype=np.float32)
        out[mask] = out[mask] * (1.0 - alpha) + color * alpha
        if outline:
            out[mask_outline(mask, thickness)] = color
    result = np.rint(out).astype(np.uint8)

    if points is None and boxes is None:
        return result
    canvas = Image.fromarray(result)
    draw = ImageDraw.Draw(canvas)
    if boxes is not None:
        box_array = _as_float_array(boxes, "boxes", (None, 4))
        line = max(2, round(min(height, width) / 400))
        for i, (x0, y0, x1, y1) in enumerate(box_array):
            draw.rectangle(
                (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                outline=palette[i % len(palette)],
                width=line,
            )
    if points is not None:
        point_array = _as_float_array(points, "points", (None, 2))
        if labels is None:
            label_array = np.ones(len(point_array), dtype=np.int64)
        else:
            label_array = np.asarray(labels)
            if label_array.shape != (len(point_array),):
                raise ValueError(
                    f"labels must have shape ({len(point_array)},) to match points, "
                    f"got {label_array.shape}"
                )
        radius = max(3, round(min(height, width) / 150))
        border = max(1, radius // 3)
        for (x, y), label in zip(point_array, label_array, strict=True):
            if label == 1:
                fill = POSITIVE_COLOR
            elif label == 0:
                fill = NEGATIVE_COLOR
            else:
                continue
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=fill,
                outline=_POINT_BORDER,
                width=border,
            )
    return np.array(canvas, dtype=np.uint8)
