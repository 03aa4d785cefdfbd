"""Where the model runs: torch eager, onnxruntime or OpenVINO, in fp32 or lower precision.

On CPUs the same graphs run several times faster in onnxruntime or OpenVINO than in eager
torch, so `backend="auto"` (the default) exports the model's encoder to ONNX once, caches the
file (`mobile_sam.runtime.cache`), and runs it there; on OpenVINO the decoder's
prompt-dependent work runs there too (`mobile_sam.runtime.openvino`). Pre- and
post-processing stay the shared numpy code; only the model calls change.

| backend | encoder precision | decoder | needs |
|---|---|---|---|
| torch | fp32 (or the model's dtype) | torch | nothing more |
| openvino | fp32, bf16, int8 (NNCF, static) | OpenVINO, fp32 | a dependency (`mobile_sam[openvino]` names it too; int8: `mobile_sam[int8]`) |
| onnxruntime | fp32, int8 (dynamic, MatMuls only) | torch | `pip install mobile_sam[onnx]` |

`auto` picks, for a model on the CPU: OpenVINO if installed, else onnxruntime, else torch
(fp32 fidelity in all three); for a model on a GPU, or cast to another dtype: torch. The
environment variable `MOBILE_SAM_BACKEND` overrides what `auto` means.

`precision="auto"` picks the fastest precision with fp32's masks on the CPU it runs on
(`resolve_precision`): bf16 where the CPU multiplies bf16 matrices in hardware (AMX, Xeon
Sapphire Rapids and later), where it is ~2x faster than fp32; fp32 elsewhere (without AMX,
bf16 runs slower than fp32, e.g. on AMD Zen 4/5 with AVX512-BF16). int8 is never chosen by
"auto": its agreement with fp32 depends on the weights and images, so it is opt-in
(`precision="int8"`), to be checked on one's own images (docs/performance.md).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import TypeVar

import torch

from ..modeling import Sam
from .background import (
    BackgroundDecoder,
    BackgroundEncoder,
    Job,
    check_conversion,
    shared_weights_copy,
)
from .cache import cached_encoder_onnx, encoder_onnx_folder, stage, weights_fingerprint
from .decoders import DecoderRunner, TorchDecoderRunner
from .encoders import Encoder, onnxruntime_encoder, torch_encoder
from .openvino import (
    OpenVINODecoderRunner,
    cached_decoder_graphs,
    cached_encoder_int8,
    decoder_graph_paths,
    encoder_int8_path,
    openvino_encoder,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "int8", "bf16")
_SUPPORTED = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8"),
              "openvino": ("fp32", "bf16", "int8")}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class BackendUnavailable(RuntimeError):
    """The backend asked for is not installed, or cannot run this precision."""


def installed(backend: str) -> bool:
    """Whether `backend` ("torch", "onnxruntime", "openvino") can be imported."""
    return backend == "torch" or importlib.util.find_spec(_MODULE[backend]) is not None


def _missing(backend: str, precision: str) -> str | None:
    """The extra to install for `precision` on `backend`, or None when it can run: OpenVINO's
    int8 encoder is made by NNCF's quantizer."""
    if not installed(backend):
        return _EXTRA[backend]
    if backend == "openvino" and precision == "int8" and importlib.util.find_spec("nncf") is None:
        return "int8"
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (`amx_bf16`, `avx512_vnni`, ...); empty
    where there is no /proc/cpuinfo (then "auto" keeps fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_is_fast(flags: frozenset[str]) -> bool:
    """Whether bf16 beats fp32 on a CPU with these flags: only with AMX's bf16 tiles. With
    AVX512-BF16 alone (AMD Zen 4/5, Cooper Lake) OpenVINO's bf16 encoder ran slower than fp32
    (821 ms against 695 ms on a Zen 5, same run): its window attention and the conversions
    cost more than the dot products save."""
    return "amx_bf16" in flags


def int8_is_fast(flags: frozenset[str]) -> bool:
    """Whether the int8 encoder clearly beats fp32 on a CPU with these flags: only with int8
    dot-product instructions (VNNI in AVX-512 or AVX, AMX-INT8). Measured on one Xeon with
    OpenVINO's kernels capped at each instruction set (encoder alone, paired with fp32):
    AVX-512 VNNI x1.61, AVX-VNNI x1.47, AVX-512 without VNNI x1.18, AVX2 without VNNI x0.75."""
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


# precision -> (whether this CPU runs it fast, what the CPU lacks otherwise)
_FAST_ON = {"bf16": (bf16_is_fast, "it has no AMX bf16 units"),
            "int8": (int8_is_fast, "it has no VNNI or AMX int8 instructions")}
_WARNED: set[str] = set()


def resolve_precision(precision: str, backend: str, flags: frozenset[str] | None = None) -> str:
    """The concrete precision for a resolved `backend`: "auto" becomes bf16 on OpenVINO where
    bf16 is fast (`bf16_is_fast`), fp32 otherwise. An explicit "bf16" or "int8" on OpenVINO on
    a CPU known to lack the instructions that make it pay (`bf16_is_fast`, `int8_is_fast`)
    warns once per process and precision, naming the precision to use instead."""
    flags = cpu_flags() if flags is None else flags
    if precision == "auto":
        return "bf16" if backend == "openvino" and bf16_is_fast(flags) else "fp32"
    if precision in _FAST_ON and backend == "openvino" and flags and precision not in _WARNED:
        is_fast, lacking = _FAST_ON[precision]
        if not is_fast(flags):
            _WARNED.add(precision)
            warnings.warn(f"precision={precision!r} runs slower than fp32 on this CPU, or "
                          f"hardly faster ({lacking}): use precision='fp32' (or 'auto', "
                          f"which picks bf16 only where it is faster)", RuntimeWarning,
                          stacklevel=3)
    return precision


def resolve_backend(backend: str, precision: str, device: torch.device) -> str:
    """The concrete backend for a request, or a clear error naming what to install.
    precision "auto" is resolved afterwards (`resolve_precision`): every backend takes it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "fp32"
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
            backend = next((b for b in candidates if _missing(b, precision) is None),
                           candidates[-1])
    if precision not in _SUPPORTED[backend]:
        options = [b for b, p in _SUPPORTED.items() if precision in p]
        raise BackendUnavailable(f"precision {precision!r} is not available on backend "
                                 f"{backend!r}; use backend {' or '.join(map(repr, options))}")
    extra = _missing(backend, precision)
    if extra is not None:
        what = f"backend {backend!r}" + (f" with precision {precision!r}" if extra == "int8" else "")
        raise BackendUnavailable(f"{what} is not installed: pip install 'mobile_sam[{extra}]'")
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


def _encoder_file(model: Sam, backend: str, precision: str, make: bool) -> Path:
    """The converted encoder's file for the backend and precision: made (once, cached) if
    `make`, else where it would be (it may not exist)."""
    if backend == "openvino" and precision == "int8":
        return cached_encoder_int8(model) if make else encoder_int8_path(model)
    if make:
        return cached_encoder_onnx(model, int8=(precision == "int8"))
    name = "encoder_int8.onnx" if precision == "int8" else "encoder.onnx"
    return encoder_onnx_folder(model) / name


def _converted_encoder(model: Sam, backend: str, precision: str, threads: int) -> Encoder:
    path = _encoder_file(model, backend, precision, make=True)
    with stage(f"compiling the image encoder for {backend} ({precision})"):
        if backend == "onnxruntime":
            return onnxruntime_encoder(path, threads)
        return openvino_encoder(path, threads, precision)


def make_encoder(model: Sam, backend: str, precision: str = "fp32",
                 threads: int | None = None, conversion: str = "wait") -> Encoder:
    """A callable running `model`'s image encoder on the resolved backend. On onnxruntime and
    OpenVINO the encoder is converted once and cached; when it is not cached yet,
    `conversion` says what to do meanwhile (`mobile_sam.runtime.background`)."""
    check_conversion(conversion)
    if backend == "torch":
        return torch_encoder(model)
    threads = threads or torch.get_num_threads()
    if _encoder_file(model, backend, precision, make=False).is_file():
        return _converted_encoder(model, backend, precision, threads)
    if conversion == "cached":
        log.info("the image encoder is not converted for %s yet: eager torch serves", backend)
        return torch_encoder(model)
    copied = shared_weights_copy(model)
    job: Job[Encoder] = Job(f"converting the image encoder for {backend} ({precision}) once",
                            lambda: _converted_encoder(copied, backend, precision, threads))
    if conversion == "wait":
        return _waited(job)
    return BackgroundEncoder(torch_encoder(model), job)


def _waited(job: Job[T]) -> T:
    """The job's result, waited for; its error raised if it failed."""
    result = job.wait()
    if result is None:
        raise job.error or RuntimeError(f"{job.name} failed")
    return result


def _converted_decoder(model: Sam, threads: int, half: bool) -> DecoderRunner:
    cached_decoder_graphs(model)  # converted first, a log line per graph
    with stage("loading the mask decoder's OpenVINO graphs"):
        return OpenVINODecoderRunner(model, threads, half=half)


def make_decoder(model: Sam, backend: str, half: bool = False,
                 conversion: str = "wait") -> DecoderRunner:
    """The prompt-dependent decoder work (`PromptDecoder`, `MaskHead`) on the backend: compiled
    by OpenVINO for "openvino", eager torch otherwise (onnxruntime runs the encoder only).

    half: compute in float16 where the CPU does so natively (OpenVINO on CPUs with AVX512-FP16,
    e.g. Xeon Sapphire Rapids and later; about 1.4x faster per prompt there); fp32 elsewhere
    and on the other backends. Used by the automatic generator's fast mode.
    conversion: what to do while the OpenVINO graphs are not cached yet
    (`mobile_sam.runtime.background`)."""
    check_conversion(conversion)
    eager = TorchDecoderRunner(model.mask_decoder, model.prompt_encoder)
    if backend != "openvino":
        return eager
    threads = torch.get_num_threads()
    if all(p.is_file() for p in decoder_graph_paths(model).values()):
        return _converted_decoder(model, threads, half)
    if conversion == "cached":
        log.info("the mask decoder is not converted for OpenVINO yet: eager torch serves")
        return eager
    copied = shared_weights_copy(model)
    job: Job[DecoderRunner] = Job("converting the mask decoder for OpenVINO once",
                                  lambda: _converted_decoder(copied, threads, half))
    if conversion == "wait":
        return _waited(job)
    return BackgroundDecoder(eager, job)


# model -> (backend, half, conversion) -> (weights fingerprint, runner)
_DECODERS: weakref.WeakKeyDictionary[Sam, dict[tuple[str, bool, str],
                                               tuple[tuple, DecoderRunner]]] \
    = weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


def shared_decoder(model: Sam, backend: str, half: bool = False,
                   conversion: str = "wait") -> DecoderRunner:
    """The decoder runner of `model` on `backend`, shared by every predictor of the model (a
    compiled graph is made once, not per predictor) and rebuilt when the decoder's weights
    change. `half`, `conversion`: see `make_decoder`."""
    fingerprint = (weights_fingerprint(model.mask_decoder),
                   weights_fingerprint(model.prompt_encoder))
    key = (backend, half, conversion)
    with _DECODERS_LOCK:
        runners = _DECODERS.setdefault(model, {})
        known = runners.get(key)
        if known is None or known[0] != fingerprint:
            runner = make_decoder(model, backend, half, conversion)
            known = runners[key] = (fingerprint, runner)
        return known[1]
