"""Where training images live: a local path, or any fsspec URL (`s3://`, `gs://`, `file://`,
`memory://`, ...).

A *location* is a `Path` (local) or a URL string. URLs need the optional `fsspec` package
(`pip install 'mobile-sam[cloud]'`, plus the protocol's own package, e.g. `s3fs` or `gcsfs`);
local paths never import it. URL paths always use `/`, so relative names are the same on
every machine.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .._optional import MissingDependencyError

Location = Path | str
"""A local path or an fsspec URL."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
CLOUD_EXTRA = "pip install 'mobile-sam[cloud]'"


def is_url(spec: object) -> bool:
    """True for `scheme://...` strings (a local path never has `://` after its first word)."""
    return isinstance(spec, str) and _URL.match(spec) is not None


def as_location(spec: str | os.PathLike[str]) -> Location:
    """A command-line source: URLs kept as given (trailing `/` dropped), paths expanded."""
    if is_url(spec):
        return str(spec).rstrip("/") if not str(spec).endswith("://") else str(spec)
    return Path(spec).expanduser()


def join(root: Location, rel: str) -> Location:
    """`root`/`rel` for a folder path or URL."""
    if isinstance(root, str) and is_url(root):
        return f"{root.rstrip('/')}/{rel}"
    return Path(root) / rel


def parent(url: str) -> str:
    """The URL of the folder holding `url`."""
    return url.rstrip("/").rsplit("/", 1)[0]


def suffix(location: Location) -> str:
    """The lower-case file extension (`.tar`, `.txt`, ...) of a path or URL."""
    name = str(location).rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[1].lower()


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; a clear error without fsspec or the
    protocol's package."""
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(f"reading {url} needs fsspec: {CLOUD_EXTRA}") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # e.g. s3:// without s3fs
        raise MissingDependencyError(f"reading {url}: {exc}") from None
    except ValueError as exc:  # unknown protocol
        raise ValueError(f"cannot read {url}: {exc}") from None


def read_url(url: str) -> bytes:
    """The bytes of the file at `url`; FileNotFoundError naming it."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)  # type: ignore[no-any-return]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"image file not found: {url}") from None


def url_is_file(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return bool(fs.isfile(path))
    except OSError:
        return False


def open_url(url: str) -> Any:
    """A seekable binary file object for `url` (read on demand, e.g. a tar shard's members)."""
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"file not found: {url}") from None


def find_files(url: str) -> list[str]:
    """Every file under the folder `url`, recursively, as POSIX paths relative to it (names
    starting with `.` and everything under such folders left out)."""
    fs, path = filesystem(url)
    if not fs.isdir(path):
        if fs.exists(path):
            raise NotADirectoryError(f"--images must be a folder of images, got a file: {url}")
        raise FileNotFoundError(f"image folder not found: {url}")
    base = path.rstrip("/")
    rels = []
    for found in fs.find(path):
        rel = found[len(base):].lstrip("/") if found.startswith(base) else found
        if rel and not any(part.startswith(".") for part in rel.split("/")):
            rels.append(rel)
    return rels
