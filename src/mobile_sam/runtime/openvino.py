"""The "openvino" backend: the exported image encoder compiled by OpenVINO, and the decoder's
prompt-dependent work converted from the model's own torch modules and compiled.

`PromptDecoder` and `MaskHead` (`mobile_sam.modeling.fast_decoder`) are converted, so there
is one implementation of the decoder; OpenVINO fuses its many small operations, which in
eager torch cost as much as the arithmetic. Batch size and prompt token count are dynamic.
The converted graphs are cached on disk (conversion takes seconds, loading a fraction of one;
see `mobile_sam.runtime.cache`). The per-image inputs (`DecoderImageCache`) are handed over
once per image without a copy. The `openvino` package is imported only when one of these
runs.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..modeling import Sam
from ..modeling.fast_decoder import DecoderImageCache, FullDecoder
from ..weights import cache_dir
from .cache import check_unchanged, exporting, graph_key, stage, weights_fingerprint
from .encoders import Encoder

DECODER_GRAPHS = ("prompt", "masks", "full", "full1")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ encoder
def openvino_encoder(path: Path, threads: int, precision: str) -> Encoder:
    """The exported encoder at `path` (ONNX or OpenVINO IR) compiled for the CPU in fp32 or
    bf16; an int8 model (`cached_encoder_int8`) runs its quantized parts in int8 and the rest
    in fp32."""
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


# ------------------------------------------------------------------ int8 encoder (NNCF)
def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package).split("-")[0].split("+")[0]


def encoder_int8_path(model: Sam) -> Path:
    """Where `cached_encoder_int8` keeps the int8 encoder (OpenVINO IR): keyed by the
    encoder's weights, the source files of the export and the quantization, and the torch,
    OpenVINO and NNCF versions."""
    from ..onnx.export import export_encoder
    from .calibration import generated_images

    encoder = model.image_encoder
    key = graph_key([encoder], [encoder], [export_encoder, quantize_int8, generated_images])
    name = (f"encoder-int8-{key}-torch{torch.__version__}-ov{_version('openvino')}"
            f"-nncf{_version('nncf')}")
    return cache_dir() / "openvino" / name / "encoder_int8.xml"


def cached_encoder_int8(model: Sam, images: list[np.ndarray] | None = None,
                        overwrite: bool = False) -> Path:
    """The model's image encoder quantized to int8 by NNCF (`quantize_int8`), made once per
    set of weights and cached (the ONNX export it starts from is cached too).

    images: H, W, 3 uint8 RGB photos to calibrate on (with crops and flips), instead of the
    generated scenes of `mobile_sam.runtime.calibration`; overwrite: quantize again even if
    cached (to recalibrate on one's own photos: the cache holds one int8 encoder per weights).
    """
    import openvino as ov

    from ..transforms import prepare_image
    from .cache import cached_encoder_onnx
    from .calibration import augmented, generated_images

    fingerprint = weights_fingerprint(model.image_encoder)
    target = encoder_int8_path(model)
    if target.is_file() and not overwrite:
        return target
    fp32 = cached_encoder_onnx(model)
    with exporting(target.parent) as tmp:
        if target.is_file() and not overwrite:  # made by another process while this one waited
            return target
        photos = augmented(images if images is not None else generated_images())
        inputs = [prepare_image(p, model.img_size, *model.normalization)[0] for p in photos]
        with stage(f"quantizing the image encoder to int8 with NNCF once ({len(inputs)} "
                   f"calibration images; cached in {target.parent})"):
            quantized = quantize_int8(ov.Core().read_model(str(fp32)), inputs)
            # Weights left in float stay float32 (save_model would halve them by default).
            ov.save_model(quantized, tmp / target.name, compress_to_fp16=False)
        check_unchanged(model.image_encoder, fingerprint)
        os.replace(tmp / target.with_suffix(".bin").name, target.with_suffix(".bin"))
        os.replace(tmp / target.name, target)
    return target


# Kept in float by `quantize_int8`: the convolutional stem (patch embedding and the first,
# convolutional stage with its downsampling), by the exported encoder's node names.
INT8_FLOAT_SCOPES = (r".*/patch_embed/.*", r".*/layers\.0/.*")


def quantize_int8(model, inputs: list[np.ndarray]):
    """NNCF post-training quantization of the exported encoder (an `openvino.Model`) on the
    calibration inputs (1, 3, S, S float32, normalised and padded).

    In int8 (weights per channel, activations per tensor, on the CPU's int8 dot-product units:
    VNNI, AMX-INT8): every linear layer of the attention stages, the query·key products, their
    depthwise "local" convolutions and downsampling, and the neck. In float: softmax and the
    product of its weights with the values, LayerNorm and GELU (`model_type=TRANSFORMER`),
    and the convolutional stem (`INT8_FLOAT_SCOPES`).

    Why, as measured on the fixture (mask IoU against fp32 over its photos and prompts; speed
    in docs/performance.md): the stem works on 512² and 256² maps whose cost is memory
    traffic, so int8 saved it nothing measurable, and quantizing it cost the most agreement
    (mean 0.88-0.93, minimum 0.44-0.75). Quantizing the neck raised the agreement (0.956 /
    0.840 to 0.980 / 0.939 with the other convolutions in float; bias correction at the last
    layer probably absorbs the shift left by the layers before it). SmoothQuant is off: it
    lowered the agreement (0.949 / 0.801 with it, 0.957 / 0.848 without, convolutions in
    float)."""
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    no_smoothing = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    # NNCF notes every layer it leaves in float at INFO; keep the log to our one line per stage.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        return nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs),
                             model_type=nncf.ModelType.TRANSFORMER,
                             ignored_scope=nncf.IgnoredScope(patterns=list(INT8_FLOAT_SCOPES),
                                                             validate=False),
                             advanced_parameters=no_smoothing)
    finally:
        nncf_log.setLevel(level)


# ------------------------------------------------------------------ decoder graphs
def _graphs(model: Sam) -> dict[str, tuple[torch.nn.Module, tuple, list[list[int]]]]:
    """Each graph's module, example inputs and input shapes (-1: dynamic)."""
    decoder, encoder = model.mask_decoder, model.prompt_encoder
    dim, size = decoder.transformer_dim, tuple(encoder.image_embedding_size)
    with torch.no_grad():
        cache = DecoderImageCache.build(torch.zeros(1, dim, *size), encoder, decoder)
    points, labels = torch.zeros(2, 2, 2), torch.tensor([[1, -1], [2, 3]])
    cache_shapes = [[-1, *t.shape[1:]] for t in cache.tensors()]
    cache_shapes[1][0] = 1  # key_pe is shared by every prompt
    prompt_shapes = [[-1, -1, 2], [-1, -1]] + cache_shapes
    src = torch.zeros(2, *size, dim)
    hyper = torch.zeros(2, 3, dim // 8)
    full = FullDecoder(decoder, encoder)
    return {
        "prompt": (full.prompt_decoder, (points, labels, *cache.tensors()), prompt_shapes),
        "masks": (full.mask_head, (src, hyper, torch.tensor(size)),
                  [[-1, *src.shape[1:]], [-1, -1, hyper.shape[2]], [2]]),
        "full": (full, (points, labels, *cache.tensors()), prompt_shapes),
        # One prompt, no mask input (what `predict` runs): with the batch fixed to 1, OpenVINO
        # plans plain matrix products instead of broadcast batched ones, ~10 % faster.
        "full1": (full, (points[:1], labels[:1], *cache.tensors()),
                  [[1, *shape[1:]] for shape in prompt_shapes]),
    }


def _convert(module: torch.nn.Module, example: tuple, shapes: list[list[int]]):
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        # The graph is traced once (constant head counts and sizes are intended).
        warnings.simplefilter("ignore")
        return ov.convert_model(module.eval(), example_input=example,
                                input=[ov.PartialShape(s) for s in shapes])


def decoder_graphs_folder(model: Sam) -> Path:
    """The cache folder of `model`'s converted decoder graphs (`cached_decoder_graphs`): keyed
    by the decoder's and prompt encoder's weights, the graphs' source files, and the torch
    and OpenVINO versions (read from the package metadata: no import of openvino only to find
    out whether the graphs are cached)."""
    decoder, encoder = model.mask_decoder, model.prompt_encoder
    key = graph_key([decoder, encoder], [FullDecoder(decoder, encoder)], [_graphs, _convert],
                    length=24)
    return cache_dir() / "openvino" / (f"decoder-{key}-torch{torch.__version__}"
                                       f"-ov{_version('openvino')}")


def cached_decoder_graphs(model: Sam) -> dict[str, Path]:
    """The decoder graphs as OpenVINO IR files in the cache folder, converted once."""
    import openvino as ov

    fingerprint = _decoder_fingerprint(model)
    paths = decoder_graph_paths(model)
    if all(p.is_file() for p in paths.values()):
        return paths
    folder = next(iter(paths.values())).parent
    with exporting(folder) as tmp:
        for name, (module, example, shapes) in _graphs(model).items():
            if paths[name].is_file():  # made by another process while this one waited
                continue
            with stage(f"converting the mask decoder's {name!r} graph for OpenVINO once "
                       f"(cached in {folder})"):
                ov.save_model(_convert(module, example, shapes), tmp / f"{name}.xml")
            check_unchanged(model.mask_decoder, fingerprint[0])
            check_unchanged(model.prompt_encoder, fingerprint[1])
            # The .xml names the graph as made: it goes last, after its weights.
            os.replace(tmp / f"{name}.bin", folder / f"{name}.bin")
            os.replace(tmp / f"{name}.xml", paths[name])
    return paths


def decoder_graph_paths(model: Sam) -> dict[str, Path]:
    """Where `cached_decoder_graphs` keeps each graph (files that may not exist yet)."""
    folder = decoder_graphs_folder(model)
    return {name: folder / f"{name}.xml" for name in DECODER_GRAPHS}


def _decoder_fingerprint(model: Sam) -> tuple[tuple, tuple]:
    return weights_fingerprint(model.mask_decoder), weights_fingerprint(model.prompt_encoder)


class OpenVINODecoderRunner:
    """`DecoderRunner` on OpenVINO: fp32 (results agree with torch to float rounding), or
    float16 with `half=True` on CPUs that compute it natively (`precision` tells which ran).
    The mask head ("masks") stays fp32 either way: in float16 it ran 1.23× slower on an
    AVX512-FP16 Xeon (its GEMMs are large enough to run at the fp32 rate), and it is the part
    whose output is thresholded into masks.

    One runner serves every predictor of a model: the graphs are compiled once, on first use
    (memory only for what runs), and each thread gets its own infer requests, so threads never
    share buffers. `prompt()` returns its image tokens without a copy (8 prompts: 32 MB, most
    of which the automatic generator drops): they are valid until the calling thread's next
    `prompt()`, which is how `decode_masks` uses them.
    """

    def __init__(self, model: Sam, threads: int, half: bool = False) -> None:
        import openvino as ov

        self._core = ov.Core()
        native_f16 = "FP16" in self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision = "f16" if half and native_f16 else "f32"
        self._config = {"INFERENCE_PRECISION_HINT": self.precision,
                        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        self._paths = cached_decoder_graphs(model)
        self._compiled: dict[str, object] = {}
        self._compile_lock = threading.Lock()
        self._local = threading.local()  # .requests: name -> (infer request, cache handed over)

    def _graph_config(self, name: str) -> dict:
        if name == "masks":
            return dict(self._config, INFERENCE_PRECISION_HINT="f32")
        return self._config

    def _request(self, name: str, cache: DecoderImageCache | None = None):
        import openvino as ov

        requests = self._local.__dict__.setdefault("requests", {})
        if name not in requests:
            with self._compile_lock:
                if name not in self._compiled:
                    # From the file: OpenVINO maps its weights instead of copying them.
                    self._compiled[name] = self._core.compile_model(
                        str(self._paths[name]), "CPU", self._graph_config(name))
            requests[name] = [self._compiled[name].create_infer_request(), None]
        entry = requests[name]
        if cache is not None and cache is not entry[1]:
            # Hand the per-image tensors over once, without a copy (the entry keeps them alive).
            for i, t in enumerate(cache.tensors(), start=2):
                array = t.detach().float().contiguous().numpy()
                entry[0].set_input_tensor(i, ov.Tensor(array, shared_memory=True))
            entry[1] = cache
        return entry[0]

    def _run(self, name: str, points: torch.Tensor, labels: torch.Tensor,
             cache: DecoderImageCache, copy: tuple[bool, ...]) -> list[torch.Tensor]:
        inputs = {0: points.float().contiguous().numpy(),
                  1: labels.to(torch.int64).contiguous().numpy()}
        out = self._request(name, cache).infer(inputs, share_outputs=True)
        return [torch.from_numpy(np.array(out[i]) if c else out[i]) for i, c in enumerate(copy)]

    def prompt(self, points, labels, cache):
        return tuple(self._run("prompt", points, labels, cache, (False, True, True)))

    def full(self, points, labels, cache):
        name = "full1" if points.shape[0] == 1 and cache.keys.shape[0] == 1 else "full"
        return tuple(self._run(name, points, labels, cache, (True, True)))

    def masks(self, src: torch.Tensor, hyper: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        # The inputs are read in place and the logits copied once, out of the reused buffer.
        out = self._request("masks").infer([src.float().contiguous().numpy(),
                                            hyper.float().contiguous().numpy(),
                                            extent.to(torch.int64).numpy()],
                                           share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(out[0]))
