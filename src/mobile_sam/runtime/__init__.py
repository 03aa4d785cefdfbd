"""Where the model runs: backends, decoder runners and the export caches.

- `backends`: the choice of backend (torch, onnxruntime, OpenVINO) and precision, and the
  encoder and decoder runner made for it (`make_encoder`, `shared_decoder`).
- `encoders`: `Encoder`, the image encoder as a callable, in torch and onnxruntime.
- `decoders`: the `DecoderRunner` protocol, `TorchDecoderRunner`, `decode_masks`.
- `openvino`: the encoder and the decoder graphs compiled by OpenVINO; the int8 encoder
  quantized by NNCF.
- `background`: the first calls served by eager torch while the conversion runs in a
  background thread (`conversion="background" | "wait" | "cached"`).
- `calibration`: generated and augmented images to calibrate the int8 encoder on.
- `cache`: weight fingerprints and digests, the source files behind each exported graph,
  the cache folders and atomic writes, the ONNX encoder cache.

The model itself (`mobile_sam.modeling`) knows nothing of these.
"""
from .backends import (
                       BACKENDS,
                       PRECISIONS,
                       BackendUnavailable,
                       cpu_flags,
                       default_backend,
                       installed,
                       make_decoder,
                       make_encoder,
                       resolve_backend,
                       resolve_precision,
                       shared_decoder,
)
from .background import CONVERSIONS
from .cache import cached_encoder_onnx, weights_fingerprint
from .decoders import DecoderRunner, TorchDecoderRunner, decode_masks
from .encoders import Encoder

__all__ = [
    "BACKENDS", "CONVERSIONS", "PRECISIONS", "BackendUnavailable", "DecoderRunner", "Encoder",
    "TorchDecoderRunner", "cached_encoder_onnx", "cpu_flags", "decode_masks", "default_backend",
    "installed", "make_decoder", "make_encoder", "resolve_backend", "resolve_precision",
    "shared_decoder", "weights_fingerprint",
]
