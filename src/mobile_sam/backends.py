"""Where the model runs: torch eager, onnxruntime or OpenVINO, in fp32 or lower precision.

On CPUs the same graphs run several times faster in onnxruntime or OpenVINO than in eager
torch, so `backend="auto"` (the default) exports the model's encoder to ONNX once, caches the
file next to the weights, and runs it there; on OpenVINO the decoder's prompt-dependent work
runs there too (`mobile_sam.openvino_decoder`). Pre- and post-processing stay the shared
numpy code; only the model calls change.

| backend | encoder precision | decoder | needs |
|---|---|---|---|
| torch | fp32 (or the model's dtype) | torch | nothing more |
| openvino | fp32, bf16 | OpenVINO, fp32 | a dependency of mobile_sam (`mobile_sam[openvino]` names it too) |
| onnxruntime | fp32, int8 (dynamic quantization of the MatMuls) | torch | `pip install mobile_sam[onnx]` |

`auto` picks, for a model on the CPU: OpenVINO if installed, else onnxruntime, else torch
(fp32 fidelity in all three); for a model on a GPU, or cast to another dtype: torch. The environment variable
`MOBILE_SAM_BACKEND` overrides what `auto` means.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import torch

from .modeling import Sam
from .modeling.fast_decoder import DecoderRunner, TorchDecoderRunner

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")
_SUPPORTED = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
ENCODER_OPSET = 17

log = logging.getLogger(__name__)


class Encoder:
    """The image encoder on a backend: 1x3xSxS float32 numpy -> 1xCxhxw embedding tensor.

    `release_memory()` gives back the backend's work buffers until the next call (OpenVINO
    holds ~180 MB in fp32 at 1024² between calls, which stay resident unless the C heap is
    trimmed too; the other backends hold nothing). Giving them back costs the next call ~10 %
    (fresh pages), so the predictor does it only once an image's prompts start, not between
    images encoded back to back.
    """

    def __init__(self, run: Callable[[np.ndarray], torch.Tensor],
                 release_memory: Callable[[], None] | None = None) -> None:
        self._run = run
        self._release = release_memory

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self._run(image)

    def release_memory(self) -> None:
        if self._release is not None:
            self._release()


class BackendUnavailable(RuntimeError):
    """The backend asked for is not installed, or cannot run this precision."""


def installed(backend: str) -> bool:
    return backend == "torch" or importlib.util.find_spec(_MODULE[backend]) is not None


def resolve_backend(backend: str, precision: str, device: torch.device) -> str:
    """The concrete backend for a request, or a clear error naming what to install."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend == "auto":
        backend = os.environ.get("MOBILE_SAM_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"MOBILE_SAM_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cpu":
            backend = "torch"
        else:
            candidates = [b for b in ("openvino", "onnxruntime", "torch") if precision in _SUPPORTED[b]]
            backend = next((b for b in candidates if installed(b)), candidates[-1])
    if precision not in _SUPPORTED[backend]:
        options = [b for b, p in _SUPPORTED.items() if precision in p]
        raise BackendUnavailable(f"precision {precision!r} is not available on backend "
                                 f"{backend!r}; use backend {' or '.join(map(repr, options))}")
    if not installed(backend):
        raise BackendUnavailable(f"backend {backend!r} is not installed: "
                                 f"pip install 'mobile_sam[{_EXTRA[backend]}]'")
    if backend != "torch" and device.type != "cpu":
        raise BackendUnavailable(f"backend {backend!r} runs on the CPU; the model is on {device}")
    return backend


def default_backend(model: Sam, backend: str, precision: str) -> str:
    """`resolve_backend` for a model: a model cast to another dtype stays on torch in auto."""
    param = next(model.image_encoder.parameters())
    if backend == "auto" and os.environ.get("MOBILE_SAM_BACKEND", "auto") == "auto" \
            and param.dtype != torch.float32:
        return "torch"
    return resolve_backend(backend, precision, param.device)


def weights_fingerprint(module: torch.nn.Module) -> tuple:
    """Cheap identity of a module's current weights: changes when any tensor is replaced or
    modified in place (load_state_dict, .to(), optimizer steps), without reading the values."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


def make_encoder(model: Sam, backend: str, precision: str = "fp32",
                 threads: int | None = None) -> Encoder:
    """A callable running `model`'s image encoder on the resolved backend."""
    if backend == "torch":
        return _torch_encoder(model)
    threads = threads or torch.get_num_threads()
    path = cached_encoder_onnx(model, int8=(precision == "int8"))
    if backend == "onnxruntime":
        return _onnxruntime_encoder(path, threads)
    return _openvino_encoder(path, threads, precision)


# model -> (backend, half) -> (weights fingerprint, runner)
_DECODERS: "weakref.WeakKeyDictionary[Sam, dict[tuple[str, bool], tuple[tuple, DecoderRunner]]]" = \
    weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


def shared_decoder(model: Sam, backend: str, half: bool = False) -> DecoderRunner:
    """The decoder runner of `model` on `backend`, shared by every predictor of the model (a
    compiled graph is made once, not per predictor) and rebuilt when the decoder's weights
    change. `half`: see `make_decoder`."""
    fingerprint = (weights_fingerprint(model.mask_decoder), weights_fingerprint(model.prompt_encoder))
    with _DECODERS_LOCK:
        runners = _DECODERS.setdefault(model, {})
        known = runners.get((backend, half))
        if known is None or known[0] != fingerprint:
            known = runners[(backend, half)] = (fingerprint, make_decoder(model, backend, half))
        return known[1]


def make_decoder(model: Sam, backend: str, half: bool = False) -> DecoderRunner:
    """The prompt-dependent decoder work (`PromptDecoder`, `MaskHead`) on the backend: compiled
    by OpenVINO for "openvino", eager torch otherwise (onnxruntime runs the encoder only).

    half: compute in float16 where the CPU does so natively (OpenVINO on CPUs with AVX512-FP16,
    e.g. Xeon Sapphire Rapids and later; about 1.4x faster per prompt there); fp32 elsewhere
    and on the other backends. Used by the automatic generator's fast mode."""
    if backend == "openvino":
        from .openvino_decoder import OpenVINODecoderRunner

        return OpenVINODecoderRunner(model, torch.get_num_threads(), half=half)
    return TorchDecoderRunner(model.mask_decoder, model.prompt_encoder)


def _torch_encoder(model: Sam) -> Encoder:
    def run(image: np.ndarray) -> torch.Tensor:
        param = next(model.image_encoder.parameters())
        x = torch.from_numpy(image).to(param.device, param.dtype)
        with torch.inference_mode():
            return model.image_encoder(x)
    return Encoder(run)


def _onnxruntime_encoder(path: Path, threads: int) -> Encoder:
    from .onnx.runtime import create_session

    session = create_session(path, threads)
    name = session.get_inputs()[0].name

    def run(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: image})[0])
    return Encoder(run)


def _openvino_encoder(path: Path, threads: int, precision: str) -> Encoder:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(image: np.ndarray) -> torch.Tensor:
        # The input is read in place (no 12 MB copy alive beside it while encoding).
        out = request.infer({0: np.ascontiguousarray(image, dtype=np.float32)},
                            share_inputs=True, share_outputs=True)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # one copy: the buffer is reused

    def release_memory() -> None:
        compiled.release_memory()
        return_free_heap()
    return Encoder(run, release_memory)


def return_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`; elsewhere
    nothing). OpenVINO's released work buffers otherwise stay resident, fragmented, and the
    next image's buffers come on top: in a set_image / predict cycle the peak was ~35 MB
    higher without it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:  # no C library handle on this platform
        return None


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_digest(*modules: ModuleType) -> str:
    """sha256 of the modules' source files: part of the key of a graph cached on disk, so that
    a change to the code that defines the graph never reuses a stale file."""
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()


def cached_encoder_onnx(model: Sam, int8: bool = False) -> Path:
    """The model's encoder as an ONNX file, exported once and kept in the cache folder.

    The cache key is the encoder's weights digest, the code that defines the graph, the torch
    version and the opset, so a changed checkpoint, torch or graph never reuses a stale file.
    Written to a temporary folder and renamed into place: concurrent or interrupted exports
    leave no partial file.
    """
    from .modeling import tiny_vit
    from .onnx import export as export_module
    from .onnx.export import export_encoder, quantize_encoder
    from .weights import cache_dir

    code = source_digest(tiny_vit, export_module)
    key = hashlib.sha256((weights_digest(model.image_encoder) + code).encode()).hexdigest()[:20]
    folder = cache_dir() / "onnx" / f"encoder-{key}-torch{torch.__version__}-opset{ENCODER_OPSET}"
    name = "encoder_int8.onnx" if int8 else "encoder.onnx"
    target = folder / name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        fp32 = folder / "encoder.onnx"
        if not fp32.is_file():
            log.warning("exporting the image encoder to ONNX once (cached in %s)", folder)
            export_encoder(model, tmp / "encoder.onnx", ENCODER_OPSET)
            os.replace(tmp / "encoder.onnx", fp32)
        if int8:
            quantize_encoder(fp32, tmp / name)
            os.replace(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
