"""Training data: image folders and the SA-1B layout, a seeded split, exact preprocessing.

- An image folder is searched recursively for .jpg/.jpeg/.png (any case) and for
  WebDataset-style .tar shards, whose image members count as images at `<shard>.tar/<member>`
  (read straight from the tar, nothing unpacked); items are sorted by their path relative to
  the root (POSIX separators), so every machine lists them alike. A .txt/.lst file list
  names images instead. Folders, lists and shards may be fsspec URLs (`s3://bucket/train`,
  `gs://...`, `file://...`; see `sources`).
- SA-1B layout: `sa_123.jpg` next to `sa_123.json` holding `{"image": ..., "annotations":
  [{"segmentation": <COCO RLE>, ...}]}`; such an image's item carries the JSON's path.
- Images go through exactly the predictor's preprocessing: `mobile_sam.io.load_image`, then
  `mobile_sam.transforms.prepare_image` (longest side to the model size, Pillow bilinear,
  normalise, zero-pad bottom/right).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import ImageLoadError, load_image
from ..transforms import prepare_image
from .sources import (
    Location,
    as_location,
    find_files,
    is_url,
    join,
    open_url,
    parent,
    read_url,
    suffix,
    url_is_file,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageItem:
    """One image: `rel` is its POSIX path relative to the folder that was listed; `path` a
    local path or a URL."""

    path: Location
    rel: str
    annotation: Path | None = None


FILE_LIST_SUFFIXES = (".txt", ".lst")


def _is_file(location: Location) -> bool:
    return url_is_file(location) if isinstance(location, str) else location.is_file()


def images_root(spec: str | os.PathLike[str]) -> Location:
    """The folder image paths are relative to: `spec` itself, or a file list's folder."""
    loc = as_location(spec)
    if suffix(loc) in FILE_LIST_SUFFIXES and _is_file(loc):
        return parent(loc) if isinstance(loc, str) else loc.parent
    return loc


def read_file_list(path: Location) -> list[ImageItem]:
    """A file list: one image path per line (blank lines and `#` comments skipped), relative
    to the list's folder or absolute; sorted by that path. Files are not opened here (an
    unreadable one is reported where it is read). Raises ValueError for an empty list or a
    path listed twice."""
    if isinstance(path, str):
        base: Location = parent(path)
        text = read_url(path).decode("utf-8")
    else:
        base, text = path.parent, path.read_text(encoding="utf-8")
    rels = [line.strip() for line in text.splitlines()]
    rels = [r for r in rels if r and not r.startswith("#")]
    if not rels:
        raise ValueError(f"file list {path} names no image")
    dupes = sorted({r for r in rels if rels.count(r) > 1})
    if dupes:
        raise ValueError(f"file list {path} names {dupes[0]!r} more than once")
    items = []
    for rel in rels:
        if isinstance(base, str):  # URL lists name images relative to the list (no sidecars)
            items.append(ImageItem(join(base, rel), rel))
            continue
        image = base / rel
        ann = image.with_suffix(".json")
        items.append(ImageItem(image, Path(rel).as_posix(), ann if ann.is_file() else None))
    return sorted(items, key=lambda item: item.rel)


def list_images(root: str | os.PathLike[str]) -> list[ImageItem]:
    """Every .jpg/.jpeg/.png under `root` (recursively), sorted by relative path; or, when
    `root` is a `.txt`/`.lst` file, the images it lists (`read_file_list`).

    An image with a sibling `<stem>.json` (the SA-1B layout) gets it as `annotation`.
    Raises FileNotFoundError / NotADirectoryError for a bad root and ValueError when it holds
    no image.
    """
    root = as_location(root)
    if suffix(root) in FILE_LIST_SUFFIXES and _is_file(root):
        return read_file_list(root)
    if isinstance(root, str):
        return _list_url(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"--images must be a folder of images, got a file: {root}")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.lower().endswith(".tar") and not name.startswith("."):
                items += _tar_items(Path(dirpath) / name, root=root)
                continue
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(dirpath) / name
            ann = path.with_suffix(".json")
            items.append(ImageItem(path, path.relative_to(root).as_posix(),
                                   ann if ann.is_file() else None))
    if not items:
        raise ValueError(f"no images (.jpg, .jpeg, .png) found under {root} (searched recursively)")
    return sorted(items, key=lambda item: item.rel)


def _list_url(root: str) -> list[ImageItem]:
    """`list_images` for a folder URL: its images and tar shards' images, recursively."""
    items = []
    for rel in find_files(root):
        if rel.lower().endswith(".tar"):
            items += _tar_items(join(root, rel), rel)
        elif rel.lower().endswith(IMAGE_SUFFIXES):
            items.append(ImageItem(join(root, rel), rel))
    if not items:
        raise ValueError(f"no images (.jpg, .jpeg, .png) found under {root} (searched recursively)")
    return sorted(items, key=lambda item: item.rel)


def _tar_items(tar: Location, tar_rel: str | None = None, root: Path | None = None
               ) -> list[ImageItem]:
    """The images inside a WebDataset-style tar shard (`key.jpg`, `key.json`, ... members), as
    items whose path is `<shard>.tar/<member>`; `tar_rel` is the shard's relative name (or
    give the local `root` it is under)."""
    import tarfile

    if tar_rel is None:
        assert root is not None and isinstance(tar, Path)
        tar_rel = tar.relative_to(root).as_posix()
    try:
        names = [m.name for m in _open_tar(tar).getmembers() if m.isfile()]
    except (OSError, tarfile.TarError) as exc:
        raise ValueError(f"cannot read tar shard {tar}: {exc}") from None
    return [ImageItem(join(tar, name), f"{tar_rel}/{name}") for name in names
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")]


_TARS: dict[str, Any] = {}


def _open_tar(path: Location) -> Any:
    """An open TarFile per shard and process (its member index is read once; keyed by the
    process id too, since forked loader workers must not share a file offset)."""
    import tarfile

    key = f"{os.getpid()}:{path}"
    if key not in _TARS:
        if not _TARS:
            import atexit

            atexit.register(close_tars)
        if isinstance(path, str):  # members are read by range, the shard is not downloaded
            _TARS[key] = tarfile.open(fileobj=open_url(path))  # noqa: SIM115
        else:
            _TARS[key] = tarfile.open(path)  # noqa: SIM115  (kept open for the process)
    return _TARS[key]


def close_tars() -> None:
    """Close the tar shards this process opened (at exit, or to free their handles)."""
    for key in [k for k in _TARS if k.startswith(f"{os.getpid()}:")]:
        _TARS.pop(key).close()


def _in_tar(path: Location) -> tuple[Location, str] | None:
    """(shard, member) when `path` names a member of a .tar shard, else None."""
    if isinstance(path, str):
        cut = path.lower().find(".tar/")
        if cut < 0 or not url_is_file(path[:cut + 4]):
            return None
        return path[:cut + 4], path[cut + 5:]
    for folder in path.parents:
        if folder.suffix.lower() == ".tar" and folder.is_file():
            return folder, path.relative_to(folder).as_posix()
    return None


def image_exists(path: str | os.PathLike[str]) -> bool:
    """True for an image file, or a member of a tar shard (`shard.tar/key.jpg`)."""
    path = _location(path)
    if _is_file(path):
        return True
    where = _in_tar(path)
    if where is None:
        return False
    try:
        _open_tar(where[0]).getmember(where[1])
    except KeyError:
        return False
    return True


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file or of a tar shard member; FileNotFoundError naming it."""
    path = _location(path)
    try:
        return read_url(path) if isinstance(path, str) else path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        where = _in_tar(path)
        if where is None:
            raise FileNotFoundError(f"image file not found: {path}") from None
    try:
        member = _open_tar(where[0]).extractfile(where[1])
    except KeyError:
        member = None
    if member is None:
        raise FileNotFoundError(f"image file not found: {where[1]} is not in {where[0]}")
    return member.read()


def _location(path: str | os.PathLike[str]) -> Location:
    return path if is_url(path) else Path(path)  # type: ignore[return-value]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/val split of range(n): a seeded permutation, the first
    round(n·val_fraction) indices (at least 1 when the fraction is > 0 and n > 1) go to val.
    Both lists come back sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1) if n > 0 else 0
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def decode_image(data: bytes, long_side: int | None = None) -> np.ndarray:
    """Image bytes -> H, W, 3 uint8 RGB (`mobile_sam.io.load_image`).

    With `long_side`, a JPEG whose longest side exceeds it is decoded at a reduced DCT scale
    (1/2, 1/4 or 1/8, Pillow's `draft`): the smallest that keeps the longest side >=
    `long_side`. Several times cheaper for large photos, and not pixel-identical to a full
    decode followed by the model's resize. Other formats are decoded whole."""
    from PIL import Image, UnidentifiedImageError

    if long_side is not None:
        try:
            im = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError):
            im = None  # the full decode below reports it
        if im is not None and im.format == "JPEG" and max(im.size) > long_side:
            scale = long_side / max(im.size)
            im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
            return load_image(im)
    return load_image(data)


def read_image(path: str | os.PathLike[str],
               long_side: int | None = None) -> tuple[np.ndarray, str]:
    """(H, W, 3 uint8 RGB, sha256 of the file's bytes); the file is read once. `long_side`:
    decode a large JPEG at a reduced scale (`decode_image`).

    Raises FileNotFoundError or ImageLoadError naming the file.
    """
    path = _location(path)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    try:
        rgb = decode_image(data, long_side)
    except ImageLoadError as exc:
        raise type(exc)(str(exc).replace("<image bytes>", str(path))) from None
    return rgb, hashlib.sha256(data).hexdigest()


def model_input(rgb: np.ndarray, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """H, W, 3 uint8 -> (3, S, S float32 normalised and padded, (h', w') resized size)."""
    batch, resized = prepare_image(rgb, image_size)
    return batch[0], (int(resized[0]), int(resized[1]))


def load_annotation_masks(path: str | os.PathLike[str], image_hw: tuple[int, int] | None = None,
                          limit: int | None = None) -> np.ndarray:
    """An SA-1B JSON's masks as (N, H, W) bool, in file order (at most `limit`).

    Raises ValueError naming the file when it is not in the SA-1B layout or its mask size
    differs from `image_hw`.
    """
    from ..masks import coco_to_mask

    path = Path(path)
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read annotation file {path}: {exc}") from None
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(anns, list):
        raise ValueError(f"{path} is not an SA-1B annotation file (no 'annotations' list)")
    masks = []
    for i, ann in enumerate(anns[:limit] if limit is not None else anns):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            raise ValueError(f"{path}: annotation {i} has no COCO RLE 'segmentation'")
        mask = coco_to_mask(seg)
        if image_hw is not None and mask.shape != tuple(image_hw):
            raise ValueError(f"{path}: annotation {i} is {mask.shape[0]}x{mask.shape[1]} but the "
                             f"image is {image_hw[0]}x{image_hw[1]}")
        masks.append(mask)
    if not masks:
        h, w = image_hw or (0, 0)
        return np.zeros((0, h, w), bool)
    return np.stack(masks)


class CachedEmbeddingDataset:
    """Items `{"image": 3×S×S float32, "target": C×h×w float32 teacher embedding, "index":
    cache entry, "input_hw": (h', w') size of the image inside the padded input}`.

    Each image is re-read and its sha256 compared with the manifest's, so an image changed
    since the cache was built is an error, not silent noise in the targets.
    """

    def __init__(self, cache: Any, indices: Sequence[int],
                 image_root: str | os.PathLike[str] | None = None) -> None:
        self.cache = cache
        self.indices = list(indices)
        self.root = as_location(image_root) if image_root is not None else cache.image_root
        # Decode as the cache did, so the student sees the pixels the teacher saw.
        self.long_side = cache.image_size if cache.manifest.get("decode") == "at_size" else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        index = self.indices[i]
        entry = self.cache.entries[index]
        path = join(self.root, entry.rel)
        rgb, sha = read_image(path, self.long_side)
        if sha != entry.sha256:
            raise ValueError(f"{path} changed since the cache was built (sha256 {sha[:12]}… vs "
                             f"{entry.sha256[:12]}… in the manifest); rebuild the cache")
        image, input_hw = model_input(self.cache.view_pixels(index, rgb), self.cache.image_size)
        target = self.cache.embedding(index).astype(np.float32)
        return {"image": torch.from_numpy(image), "target": torch.from_numpy(target),
                "index": index, "input_hw": torch.tensor(input_hw)}
