"""Known checkpoints, the local cache, and a careful downloader.

Checkpoints are data: one frozen :class:`CheckpointSpec` per variant holding the file name,
its exact size and sha256, and the URLs to try in order. A model argument such as
``"mobile_sam.pt"``, ``"vit_t"`` or ``"/data/sam_vit_b_01ec64.pth"`` is turned into a local
file by :func:`resolve_checkpoint`:

* an existing path is used as is;
* a known variant or file name is looked up in the cache folder (:func:`cache_dir`) and
  downloaded there when absent;
* anything else raises ``FileNotFoundError`` listing the known names.

Downloads stream into ``<cache>/<file name>.part`` (so an interrupted download resumes with an
HTTP ``Range`` request), are checked against the expected size and sha256, and are renamed into
place atomically; the final file name therefore only ever holds a verified checkpoint. Network
failures raise :class:`WeightsDownloadError` with a one-line message naming the URLs tried and
the path where the file can be put by hand.

Only the standard library (``urllib``) talks to the network; proxies from the usual
``*_proxy`` environment variables are honoured by it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "ALIASES",
    "CHECKPOINTS",
    "CheckpointSpec",
    "WeightsChecksumError",
    "WeightsDownloadError",
    "cache_dir",
    "download_checkpoint",
    "ensure_checkpoint",
    "find_checkpoint",
    "list_cached",
    "resolve_checkpoint",
    "variant_for",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a connection or for the next bytes of a response."""

_CHUNK = 1 << 20
# A dropped connection that still delivered bytes is retried on the same URL (resuming) at
# most this many times in a row before moving on to the next URL.
_MAX_RESUMES_PER_URL = 5
_USER_AGENT = "mobile_sam-weights/0.1 (+urllib)"


class WeightsDownloadError(RuntimeError):
    """A checkpoint could not be downloaded; the message says where to put it by hand."""


class WeightsChecksumError(WeightsDownloadError):
    """A downloaded (or cached) checkpoint does not have the expected size or sha256."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One published checkpoint.

    ``urls`` are tried in order. Tests and mirrors can point a spec elsewhere with
    ``dataclasses.replace(spec, urls=(...,))``.
    """

    variant: str
    file_name: str
    size: int
    sha256: str
    urls: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"checkpoint {self.file_name!r} needs at least one URL")
        if len(self.sha256) != 64:
            raise ValueError(f"sha256 of {self.file_name!r} must be 64 hex digits: {self.sha256!r}")


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"

CHECKPOINTS: dict[str, CheckpointSpec] = {
    "vit_t": CheckpointSpec(
        variant="vit_t",
        file_name="mobile_sam.pt",
        size=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        urls=(
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "https://huggingface.co/dhkim2810/MobileSAM/resolve/main/mobile_sam.pt",
        ),
    ),
    "vit_b": CheckpointSpec(
        variant="vit_b",
        file_name="sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        urls=(_SAM_BASE + "sam_vit_b_01ec64.pth",),
    ),
    "vit_l": CheckpointSpec(
        variant="vit_l",
        file_name="sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        urls=(_SAM_BASE + "sam_vit_l_0b3195.pth",),
    ),
    "vit_h": CheckpointSpec(
        variant="vit_h",
        file_name="sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        urls=(_SAM_BASE + "sam_vit_h_4b8939.pth",),
    ),
}
"""Known checkpoints by variant name."""

ALIASES: dict[str, str] = {"sam_b.pt": "vit_b", "sam_l.pt": "vit_l", "sam_h.pt": "vit_h"}
"""Ultralytics' names of the SAM checkpoints, by variant (its ``mobile_sam.pt`` is ours)."""


def cache_dir() -> Path:
    """The folder holding downloaded checkpoints.

    ``$MOBILE_SAM_HOME`` if set, else ``$XDG_CACHE_HOME/mobile_sam`` (when that variable holds
    an absolute path, as the XDG spec requires), else ``~/.cache/mobile_sam``. The folder is
    not created here.
    """
    home = os.environ.get("MOBILE_SAM_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "mobile_sam"
    return Path.home() / ".cache" / "mobile_sam"


def _known_names() -> list[str]:
    names: list[str] = []
    for variant, spec in CHECKPOINTS.items():
        names += [variant, spec.file_name]
    return names + list(ALIASES)


def find_checkpoint(name: str | os.PathLike[str]) -> CheckpointSpec | None:
    """The spec a variant name (``"vit_t"``), file name (``"mobile_sam.pt"``) or Ultralytics
    name (``"sam_b.pt"``, see :data:`ALIASES`) refers to.

    Only the last path component is compared, so ``"weights/mobile_sam.pt"`` also matches.
    Returns None for anything else.
    """
    base = os.path.basename(os.fspath(name))
    if base in ALIASES:
        return CHECKPOINTS[ALIASES[base]]
    for variant, spec in CHECKPOINTS.items():
        if base in (variant, spec.file_name):
            return spec
    return None


def variant_for(name: str | os.PathLike[str]) -> str:
    """The model variant (``"vit_t"``, ``"vit_b"``, ...) a known name or file name means.

    ``variant_for("mobile_sam.pt") == "vit_t"``. Raises ``ValueError`` for unknown names.
    """
    spec = find_checkpoint(name)
    if spec is None:
        raise ValueError(
            f"unknown checkpoint name {os.fspath(name)!r}; known names: "
            + ", ".join(_known_names())
        )
    return spec.variant


def list_cached(directory: str | os.PathLike[str] | None = None) -> list[
    tuple[CheckpointSpec, Path | None]
]:
    """Every known checkpoint with its cached path, or None when it is not (fully) cached.

    A file counts as cached when it exists with the expected size. ``directory`` defaults to
    :func:`cache_dir`.
    """
    folder = Path(directory) if directory is not None else cache_dir()
    result: list[tuple[CheckpointSpec, Path | None]] = []
    for spec in CHECKPOINTS.values():
        path = folder / spec.file_name
        ok = path.is_file() and path.stat().st_size == spec.size
        result.append((spec, path if ok else None))
    return result


def resolve_checkpoint(
    model: str | os.PathLike[str],
    *,
    download: bool = True,
    progress: bool = True,
    verify_hash: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Turn a model argument into the path of a local checkpoint file.

    An existing file path is returned unchanged (no checksum: it is the user's file). A bare
    known name (``"vit_t"``, ``"mobile_sam.pt"``, ``"vit_b"``, ``"sam_vit_b_01ec64.pth"``, ...)
    is looked up in :func:`cache_dir` and downloaded when absent (see
    :func:`ensure_checkpoint`). A path with folders that does not exist is not downloaded:
    that is almost always a typo, so it raises like an unknown name does.

    Raises ``FileNotFoundError`` naming the path and listing the known names,
    :class:`WeightsDownloadError` when a download fails.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise IsADirectoryError(f"checkpoint path {text!r} is not a file")
    spec = find_checkpoint(text) if os.path.basename(text) == text else None
    if spec is None:
        known = find_checkpoint(text)
        if known is not None:
            reason = f"(pass just {known.file_name!r} to use the download cache {cache_dir()})"
        else:
            reason = "and it is not a known checkpoint name"
        raise FileNotFoundError(
            f"checkpoint {text!r} not found: the path {str(path.absolute())!r} does not exist "
            f"{reason}; known names: " + ", ".join(_known_names())
        )
    return ensure_checkpoint(
        spec, download=download, progress=progress, verify_hash=verify_hash, timeout=timeout
    )


def ensure_checkpoint(
    spec: CheckpointSpec,
    directory: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
    verify_hash: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """The cached file of ``spec`` in ``directory`` (default :func:`cache_dir`), downloaded
    when absent.

    A cache hit makes no network request. It checks the size only, unless ``verify_hash`` is
    set (hashing the 2.5 GB ViT-H file takes seconds, too slow for every run). A cached file of
    the wrong size or hash is not overwritten silently: it raises
    :class:`WeightsChecksumError` telling the user to delete it. With ``download=False`` a
    missing file raises ``FileNotFoundError`` saying where to put it.
    """
    folder = Path(directory) if directory is not None else cache_dir()
    path = folder / spec.file_name
    if path.is_file():
        size = path.stat().st_size
        if size != spec.size:
            raise WeightsChecksumError(
                f"cached checkpoint {path} has the wrong size: expected {spec.size} bytes, "
                f"got {size}; delete it to download it again"
            )
        if verify_hash:
            digest = sha256_of(path)
            if digest != spec.sha256:
                raise WeightsChecksumError(
                    f"cached checkpoint {path} has the wrong sha256: expected {spec.sha256}, "
                    f"got {digest}; delete it to download it again"
                )
        return path
    if not download:
        raise FileNotFoundError(
            f"checkpoint {spec.file_name} is not in the cache and downloading is off; "
            f"download it from {' or '.join(spec.urls)} and save it as {path}"
        )
    return download_checkpoint(spec, folder, progress=progress, timeout=timeout)


def sha256_of(path: Path, hasher: hashlib._Hash | None = None) -> str:
    h = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Mismatch(Exception):
    """The downloaded bytes are complete but wrong (internal)."""

    def __init__(self, message: str, resumed: bool) -> None:
        super().__init__(message)
        self.resumed = resumed  # the bytes began with a partial file from earlier


class _Dropped(Exception):
    """The connection ended early after delivering some bytes (internal)."""


class _LocalError(Exception):
    """Writing the partial file failed: no other URL will help (internal)."""


def download_checkpoint(
    spec: CheckpointSpec,
    dest_dir: str | os.PathLike[str],
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``spec`` into ``dest_dir`` and return the path of the verified file.

    The bytes go to ``<dest_dir>/<file name>.part``. An existing ``.part`` file (from an
    interrupted run) is resumed with a ``Range: bytes=N-`` request; a server that ignores the
    range and answers 200 makes the download restart from zero. A connection that drops after
    delivering bytes is resumed on the same URL; other failures move on to the next URL. The
    finished file must match ``spec.size`` and ``spec.sha256`` (hashed while streaming);
    then it is renamed into place with ``os.replace``, replacing any file of that name. On a
    mismatch the partial file is deleted (and, when the bytes began with a partial file from
    earlier, the same URL is tried once more from zero). Two processes must not download the
    same file into the same folder at the same time.

    Raises :class:`WeightsChecksumError` when a URL delivered wrong bytes and no URL delivered
    right ones, :class:`WeightsDownloadError` for every other failure (no network, timeouts,
    HTTP errors); either message is one line naming each URL tried with its failure and the
    path where the file can be put by hand.
    """
    folder = Path(dest_dir)
    final = folder / spec.file_name
    part = folder / (spec.file_name + ".part")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsDownloadError(
            f"cannot create the checkpoint folder {folder} ({exc.strerror or exc}); "
            f"download {spec.file_name} from {' or '.join(spec.urls)} and save it elsewhere, "
            "then pass its path"
        ) from exc

    failures: list[str] = []
    mismatch = False
    with tqdm(
        total=spec.size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=spec.file_name,
        disable=not progress,
    ) as bar:
        for url in spec.urls:
            resumes = 0
            restarted = False
            while True:
                try:
                    _fetch(url, spec, part, bar, timeout)
                except _Dropped as exc:
                    resumes += 1
                    if resumes <= _MAX_RESUMES_PER_URL:
                        continue
                    failures.append(f"{url}: {exc}")
                except _Mismatch as exc:
                    part.unlink(missing_ok=True)
                    if exc.resumed and not restarted:
                        # The old partial file may be the culprit: one fresh try.
                        restarted = True
                        continue
                    mismatch = True
                    failures.append(f"{url}: {exc}")
                except _NetworkError as exc:
                    failures.append(f"{url}: {exc}")
                except _LocalError as exc:
                    raise WeightsDownloadError(
                        f"could not download {spec.file_name}: {exc}; download it by hand "
                        f"from {' or '.join(spec.urls)} and save it as {final}"
                    ) from exc
                else:
                    os.replace(part, final)
                    return final
                break

    detail = "; ".join(failures).replace("\n", " ")
    kept = f" (partial download kept at {part} for resuming)" if part.exists() else ""
    cls = WeightsChecksumError if mismatch else WeightsDownloadError
    raise cls(
        f"could not download {spec.file_name}: {detail}{kept}; "
        f"download it by hand from {' or '.join(spec.urls)} and save it as {final}"
    )


class _NetworkError(Exception):
    """A failure to get bytes from one URL (internal)."""


_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    http.client.HTTPException,
    OSError,  # includes TimeoutError, socket.timeout, ConnectionResetError
    ValueError,  # malformed URL
)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if not isinstance(exc, urllib.error.URLError):
            return _describe(exc)
        return f"URL error: {exc.reason}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _fetch(
    url: str, spec: CheckpointSpec, part: Path, bar: tqdm, timeout: float
) -> None:
    """One request to ``url``, appending to ``part``; returns when ``part`` is verified.

    Raises _Dropped (bytes arrived, then the connection ended), _Mismatch (complete but
    wrong), _NetworkError (nothing usable arrived) or _LocalError (the disk refused).
    """
    have = part.stat().st_size if part.is_file() else 0
    if have > spec.size:
        part.unlink()
        have = 0
    resumed = have > 0
    hasher = hashlib.sha256()
    if have:
        # Hash what is already there so the final digest covers the whole file.
        sha256_of(part, hasher)
    bar.reset(total=spec.size)
    bar.update(have)
    if have == spec.size:
        _verify(spec, have, hasher, resumed)
        return

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            if have and status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != have:
                    raise _NetworkError(
                        f"server answered range {have}- with Content-Range "
                        f"{response.headers.get('Content-Range')!r}"
                    )
                mode = "ab"
            elif status == 200:
                # No range asked, or the server ignored it: start over.
                if have:
                    have = 0
                    resumed = False
                    hasher = hashlib.sha256()
                    bar.reset(total=spec.size)
                mode = "wb"
            else:
                raise _NetworkError(f"unexpected HTTP {status} {response.reason}")
            # Refuse a wrong file before downloading it, when the server says its size.
            declared = _declared_size(response.headers, status)
            if declared is not None and declared != spec.size:
                raise _Mismatch(
                    f"size mismatch: expected {spec.size} bytes, server reports {declared}",
                    resumed,
                )
            try:
                f = open(part, mode)
            except OSError as exc:
                raise _LocalError(f"cannot open {part}: {exc.strerror or exc}") from exc
            with f:
                while have + received <= spec.size:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    try:
                        f.write(chunk)
                    except OSError as exc:
                        raise _LocalError(f"cannot write {part}: {exc.strerror or exc}") from exc
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as exc:
                    raise _LocalError(f"cannot write {part}: {exc.strerror or exc}") from exc
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # The range starts at or past the server's end: our partial file is not usable.
            part.unlink(missing_ok=True)
            raise _Dropped("HTTP 416 for the resumed range; restarting from zero") from exc
        raise _NetworkError(_describe(exc)) from exc
    except (_NetworkError, _Dropped, _LocalError, _Mismatch):
        raise
    except _NETWORK_ERRORS as exc:
        if received:
            raise _Dropped(
                f"connection lost after {have + received} bytes: {_describe(exc)}"
            ) from exc
        raise _NetworkError(_describe(exc)) from exc

    total = have + received
    if total < spec.size:
        if received:
            raise _Dropped(f"connection closed after {total} of {spec.size} bytes")
        raise _NetworkError(f"connection closed after {total} of {spec.size} bytes")
    _verify(spec, total, hasher, resumed)


def _verify(spec: CheckpointSpec, total: int, hasher: hashlib._Hash, resumed: bool) -> None:
    if total != spec.size:
        raise _Mismatch(f"size mismatch: expected {spec.size} bytes, got {total}", resumed)
    digest = hasher.hexdigest()
    if digest != spec.sha256:
        raise _Mismatch(f"sha256 mismatch: expected {spec.sha256}, got {digest}", resumed)


def _declared_size(headers: http.client.HTTPMessage, status: int) -> int | None:
    """The full file size a response announces, if it does."""
    if status == 206:
        total = (headers.get("Content-Range") or "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = (headers.get("Content-Length") or "").strip()
    return int(length) if length.isdigit() else None


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    first = value[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None
