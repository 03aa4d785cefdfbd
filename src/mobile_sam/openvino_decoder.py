"""The decoder's prompt-dependent work compiled by OpenVINO (the "openvino" backend).

`PromptDecoder` and `MaskHead` are converted from the model's own torch modules, so there is
one implementation of the decoder; OpenVINO fuses its many small operations, which in eager
torch cost as much as the arithmetic. Batch size and prompt token count are dynamic. The
converted graphs are cached next to the encoder's ONNX file (conversion takes seconds,
loading a fraction of one), keyed by the decoder's weights. The per-image inputs
(`DecoderImageCache`) are handed over once per image without a copy.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from .modeling import Sam, fast_decoder
from .modeling.fast_decoder import DecoderImageCache, FullDecoder, MaskHead, PromptDecoder

log = logging.getLogger(__name__)


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
    prompt_decoder, mask_head = PromptDecoder(decoder, encoder), MaskHead(decoder)
    full = FullDecoder(prompt_decoder, mask_head, size)
    return {
        "prompt": (prompt_decoder, (points, labels, *cache.tensors()), prompt_shapes),
        "masks": (mask_head, (src, hyper, torch.tensor(size)),
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


def cached_decoder_graphs(model: Sam) -> dict[str, Path]:
    """The decoder graphs as OpenVINO IR files in the cache folder, converted once.

    Keyed by the decoder's and prompt encoder's weights, the code of the graphs and the torch
    and OpenVINO versions; written to a temporary folder and renamed into place.
    """
    import openvino as ov

    from .backends import source_digest, weights_digest
    from .weights import cache_dir

    # The graphs depend on the weights and on the code that defines them.
    code = source_digest(fast_decoder, sys.modules[__name__])
    key = hashlib.sha256((weights_digest(model.mask_decoder) + weights_digest(model.prompt_encoder)
                          + code).encode()).hexdigest()[:24]
    folder = cache_dir() / "openvino" / (f"decoder-{key}-torch{torch.__version__}"
                                         f"-ov{ov.__version__.split('-')[0]}")
    paths = {name: folder / f"{name}.xml" for name in ("prompt", "masks", "full", "full1")}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder))
    try:
        log.warning("converting the mask decoder for OpenVINO once (cached in %s)", folder)
        for name, (module, example, shapes) in _graphs(model).items():
            ov.save_model(_convert(module, example, shapes), tmp / f"{name}.xml")
            os.replace(tmp / f"{name}.bin", folder / f"{name}.bin")
            os.replace(tmp / f"{name}.xml", paths[name])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


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
        return dict(self._config, INFERENCE_PRECISION_HINT="f32") if name == "masks" else self._config

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
        out = self._request(name, cache).infer(
            {0: points.float().contiguous().numpy(), 1: labels.to(torch.int64).contiguous().numpy()},
            share_outputs=True)
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
