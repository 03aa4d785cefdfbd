"""Where the model runs: torch eager, onnxruntime or OpenVINO, in fp32 or lower precision.

On CPUs the same graphs run several times faster in onnxruntime or OpenVINO than in eager
torch, so `backend="auto"` (the default) exports the model's encoder to ONNX once, caches the
file (`mobile_sam.runtime.cache`), and runs it there; on OpenVINO the decoder's
prompt-dependent work runs there too (`mobile_sam.runtime.openvino`). Pre- and
post-processing stay the shared numpy code; only the model calls change.

| backend | encoder precision | decoder | needs |
|---|---|---|---|
| torch | fp32 (or the model's dtype) | torch | nothing more |
| openvino | fp32, bf16 | OpenVINO, fp32 | a dependency (`mobile_sam[openvino]` names it too) |
| onnxruntime | fp32, int8 (dynamic, MatMuls only) | torch | `pip install mobile_sam[onnx]` |

`auto` picks, for a model on the CPU: OpenVINO if installed, else onnxruntime, else torch
(fp32 fidelity in all three); for a model on a GPU, or cast to another dtype: torch. The
environment variable `MOBILE_SAM_BACKEND` overrides what `auto` means.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import weakref

import torch

from ..modeling import Sam
from .cache import cached_encoder_onnx, weights_fingerprint
from .decoders import DecoderRunner, TorchDecoderRunner
from .encoders import Encoder, onnxruntime_encoder, torch_encoder
from .openvino import OpenVINODecoderRunner, openvino_encoder

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")
_SUPPORTED = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class BackendUnavailable(RuntimeError):
    """The backend asked for is not installed, or cannot run this precision."""


def installed(backend: str) -> bool:
    """Whether `backend` ("torch", "onnxruntime", "openvino") can be imported."""
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
            candidates = [b for b in ("openvino", "onnxruntime", "torch")
                          if precision in _SUPPORTED[b]]
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


def make_encoder(model: Sam, backend: str, precision: str = "fp32",
                 threads: int | None = None) -> Encoder:
    """A callable running `model`'s image encoder on the resolved backend."""
    if backend == "torch":
        return torch_encoder(model)
    threads = threads or torch.get_num_threads()
    path = cached_encoder_onnx(model, int8=(precision == "int8"))
    if backend == "onnxruntime":
        return onnxruntime_encoder(path, threads)
    return openvino_encoder(path, threads, precision)


def make_decoder(model: Sam, backend: str, half: bool = False) -> DecoderRunner:
    """The prompt-dependent decoder work (`PromptDecoder`, `MaskHead`) on the backend: compiled
    by OpenVINO for "openvino", eager torch otherwise (onnxruntime runs the encoder only).

    half: compute in float16 where the CPU does so natively (OpenVINO on CPUs with AVX512-FP16,
    e.g. Xeon Sapphire Rapids and later; about 1.4x faster per prompt there); fp32 elsewhere
    and on the other backends. Used by the automatic generator's fast mode."""
    if backend == "openvino":
        return OpenVINODecoderRunner(model, torch.get_num_threads(), half=half)
    return TorchDecoderRunner(model.mask_decoder, model.prompt_encoder)


# model -> (backend, half) -> (weights fingerprint, runner)
_DECODERS: weakref.WeakKeyDictionary[Sam, dict[tuple[str, bool], tuple[tuple, DecoderRunner]]] \
    = weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


def shared_decoder(model: Sam, backend: str, half: bool = False) -> DecoderRunner:
    """The decoder runner of `model` on `backend`, shared by every predictor of the model (a
    compiled graph is made once, not per predictor) and rebuilt when the decoder's weights
    change. `half`: see `make_decoder`."""
    fingerprint = (weights_fingerprint(model.mask_decoder),
                   weights_fingerprint(model.prompt_encoder))
    with _DECODERS_LOCK:
        runners = _DECODERS.setdefault(model, {})
        known = runners.get((backend, half))
        if known is None or known[0] != fingerprint:
            known = runners[(backend, half)] = (fingerprint, make_decoder(model, backend, half))
        return known[1]
