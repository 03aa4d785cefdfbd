"""Keys and files of the runtime's caches.

In memory, a compiled encoder or decoder is reused while the weights it was made from are
unchanged (`weights_fingerprint`). On disk, an exported graph lives in the cache folder
(`mobile_sam.weights.cache_dir`, subfolders `onnx/` and `openvino/`) under a key over its
weights (`weights_digest`) and the source of every mobile_sam file its code comes from
(`graph_sources`), so that a changed checkpoint or a changed line of model code never reuses
a stale file; the torch and converter versions name the folder too. Files are exported into a
temporary folder and renamed into place (`exporting`): an interrupted export leaves no partial
file, and a lock on the folder makes a second process wait for the first one's files rather
than convert the same graphs beside it.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..modeling import Sam
from ..weights import cache_dir

ENCODER_OPSET = 17
_PACKAGE = __name__.split(".")[0]

log = logging.getLogger(__name__)


def weights_fingerprint(module: nn.Module) -> tuple:
    """Cheap identity of a module's current weights: changes when any tensor is replaced or
    modified in place (load_state_dict, .to(), optimizer steps), without reading the values."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _ours(name: str | None) -> bool:
    return isinstance(name, str) and (name == _PACKAGE or name.startswith(_PACKAGE + "."))


def _imported_code(module: types.ModuleType) -> set[str]:
    """Names of the mobile_sam modules whose functions (or which, as modules) `module` imports:
    code a forward defined in `module` can call. Packages are left out (a package's namespace
    holds every loaded submodule, not code of its own)."""
    names = set()
    for value in vars(module).values():
        if isinstance(value, types.FunctionType):
            names.add(value.__module__)
        elif isinstance(value, types.ModuleType) and not hasattr(value, "__path__"):
            names.add(value.__name__)
    return {n for n in names if _ours(n)}


def graph_sources(graphs: Iterable[nn.Module], tracers: Iterable[Callable] = ()) -> list[Path]:
    """The mobile_sam source files an exported graph is made from, sorted.

    graphs: the modules traced. Their files are those defining the class (and base classes) of
    every module in their trees, and, followed transitively, the mobile_sam files whose
    functions those files import (a forward may call them).
    tracers: the functions that trace the graphs (example inputs, dynamic shapes, export
    options); their own files are added.

    Derived from the objects rather than listed by hand, so a new module class or helper file
    is covered as soon as a graph uses it.
    """
    pending = {cls.__module__ for graph in graphs for m in graph.modules()
               for cls in type(m).__mro__ if _ours(cls.__module__)}
    seen = set(pending)
    while pending:
        found = _imported_code(sys.modules[pending.pop()]) - seen
        seen |= found
        pending |= found
    seen |= {f.__module__ for f in tracers if _ours(f.__module__)}
    return sorted(Path(inspect.getfile(sys.modules[name])).resolve() for name in seen)


def _source_bytes(path: Path) -> bytes:
    """A source file's contents: the one place `source_digest` reads files."""
    return path.read_bytes()


def source_digest(paths: Iterable[Path]) -> str:
    """sha256 over the files' names (relative to the package) and contents."""
    root = Path(inspect.getfile(sys.modules[_PACKAGE])).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(paths):
        content = _source_bytes(path)
        digest.update(f"{path.relative_to(root).as_posix()}:{len(content)};".encode())
        digest.update(content)
    return digest.hexdigest()


def graph_key(weights: Iterable[nn.Module], graphs: Iterable[nn.Module],
              tracers: Iterable[Callable] = (), length: int = 20) -> str:
    """Cache key of an exported graph: the digests of the modules whose weights it holds and
    of its source files (`graph_sources(graphs, tracers)`)."""
    digest = hashlib.sha256()
    for module in weights:
        digest.update(weights_digest(module).encode())
    digest.update(source_digest(graph_sources(graphs, tracers)).encode())
    return digest.hexdigest()[:length]


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` shared by every process (fcntl's advisory lock on
    `folder/.lock`; where fcntl is missing, no lock: the atomic renames still keep every
    file whole). Released when the process dies, so a crash never leaves it held."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exporting(folder: Path) -> Iterator[Path]:
    """A fresh temporary folder inside `folder` (created if needed) to export into; the caller
    renames each finished file into `folder` (atomic: same file system). Held under the
    folder's lock: callers check again, inside, whether another process made the files while
    they waited. Removed on exit, with whatever an interrupted export left in it."""
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """One step of a conversion: a log line when it starts and one with its time when it ends
    (logger `mobile_sam.runtime`, level INFO)."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)


def check_unchanged(module: nn.Module, fingerprint: tuple) -> None:
    """Refuse to cache a graph whose module's weights changed while it was exported (it may
    hold some of each): raises RuntimeError, and the export is not renamed into place."""
    if weights_fingerprint(module) != fingerprint:
        raise RuntimeError("the weights changed while the graph was exported; not cached")


def encoder_onnx_folder(model: Sam) -> Path:
    """The cache folder of `model`'s exported image encoder (`cached_encoder_onnx`)."""
    from ..onnx.export import export_encoder, quantize_encoder

    encoder = model.image_encoder
    key = graph_key([encoder], [encoder], [export_encoder, quantize_encoder])
    return cache_dir() / "onnx" / f"encoder-{key}-torch{torch.__version__}-opset{ENCODER_OPSET}"


def cached_encoder_onnx(model: Sam, int8: bool = False) -> Path:
    """The model's image encoder as an ONNX file (int8: MatMul weights quantized), exported
    once and kept in the cache folder (`encoder_onnx_folder`)."""
    from ..onnx.export import export_encoder, quantize_encoder

    fingerprint = weights_fingerprint(model.image_encoder)
    folder = encoder_onnx_folder(model)
    name = "encoder_int8.onnx" if int8 else "encoder.onnx"
    target = folder / name
    if target.is_file():
        return target
    with exporting(folder) as tmp:
        fp32 = folder / "encoder.onnx"
        if not fp32.is_file():
            with stage(f"exporting the image encoder to ONNX once (cached in {folder})"):
                export_encoder(model, tmp / "encoder.onnx", ENCODER_OPSET)
            check_unchanged(model.image_encoder, fingerprint)
            os.replace(tmp / "encoder.onnx", fp32)
        if int8 and not target.is_file():
            with stage("quantizing the ONNX image encoder to int8 once"):
                quantize_encoder(fp32, tmp / name)
            os.replace(tmp / name, target)
    return target
