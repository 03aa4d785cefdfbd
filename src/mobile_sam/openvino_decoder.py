"""The decoder's prompt-dependent work compiled by OpenVINO (the "openvino" backend).

`PromptDecoder` and `MaskHead` are converted from the model's own torch modules, so there is
one implementation of the decoder; OpenVINO fuses its many small operations, which in eager
torch cost as much as the arithmetic. Batch size and prompt token count are dynamic. The
converted graphs are cached next to the encoder's ONNX file (conversion takes seconds,
loading a fraction of one), keyed by the decoder's weights. The per-image inputs
(`DecoderImageCache`) are handed over once per image without a copy.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .modeling import Sam
from .modeling.fast_decoder import DecoderImageCache, MaskHead, PromptDecoder

log = logging.getLogger(__name__)


def _examples(model: Sam, size: tuple[int, int]) -> dict[str, tuple]:
    """Example inputs and input shapes (-1: dynamic) for each graph."""
    decoder, encoder = model.mask_decoder, model.prompt_encoder
    dim = decoder.transformer_dim
    with torch.no_grad():
        cache = DecoderImageCache.build(torch.zeros(1, dim, *size), encoder, decoder)
    tokens = torch.zeros(2, decoder.num_mask_tokens + 3, dim)
    prompt_shapes = [[-1, -1, dim]] + [[-1, *t.shape[1:]] for t in cache.tensors()]
    prompt_shapes[2][0] = 1  # key_pe is shared by every prompt
    src = torch.zeros(2, size[0] * size[1], dim)
    hyper = torch.zeros(2, 3, dim // 8)
    return {"prompt": ((tokens, *cache.tensors()), prompt_shapes),
            "masks": ((src, hyper), [[-1, *src.shape[1:]], [-1, -1, hyper.shape[2]]])}


def _convert(module: torch.nn.Module, example: tuple, shapes: list[list[int]]):
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        # The graph is traced once (constant head counts and sizes are intended).
        warnings.simplefilter("ignore")
        return ov.convert_model(module.eval(), example_input=example,
                                input=[ov.PartialShape(s) for s in shapes])


def cached_decoder_graphs(model: Sam, size: tuple[int, int]) -> dict[str, Path]:
    """The decoder graphs as OpenVINO IR files in the cache folder, converted once.

    Keyed by the decoder's and prompt encoder's weights and the torch and OpenVINO versions;
    written to a temporary folder and renamed into place.
    """
    import openvino as ov

    from .backends import weights_digest
    from .weights import cache_dir

    key = (weights_digest(model.mask_decoder) + weights_digest(model.prompt_encoder))[:40]
    folder = cache_dir() / "openvino" / (f"decoder-{key[:20]}-{key[20:28]}-torch{torch.__version__}"
                                         f"-ov{ov.__version__.split('-')[0]}")
    paths = {name: folder / f"{name}.xml" for name in ("prompt", "masks")}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder))
    try:
        log.warning("converting the mask decoder for OpenVINO once (cached in %s)", folder)
        modules = {"prompt": PromptDecoder(model.mask_decoder),
                   "masks": MaskHead(model.mask_decoder, size)}
        for name, (example, shapes) in _examples(model, size).items():
            ov.save_model(_convert(modules[name], example, shapes), tmp / f"{name}.xml")
            os.replace(tmp / f"{name}.bin", folder / f"{name}.bin")
            os.replace(tmp / f"{name}.xml", paths[name])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


class OpenVINODecoderRunner:
    """`DecoderRunner` on OpenVINO, fp32 (results agree with torch to float rounding)."""

    def __init__(self, model: Sam, size: tuple[int, int], threads: int) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        core = ov.Core()
        paths = cached_decoder_graphs(model, size)
        self._prompt = core.compile_model(str(paths["prompt"]), "CPU", config).create_infer_request()
        self._masks = core.compile_model(str(paths["masks"]), "CPU", config).create_infer_request()
        self._cache: DecoderImageCache | None = None

    def prompt(self, tokens: torch.Tensor, cache: DecoderImageCache
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import openvino as ov

        if cache is not self._cache:  # hand the per-image tensors over once, without a copy
            for i, t in enumerate(cache.tensors(), start=1):
                array = t.detach().float().contiguous().numpy()
                self._prompt.set_input_tensor(i, ov.Tensor(array, shared_memory=True))
            self._cache = cache
        out = self._prompt.infer({0: tokens.float().contiguous().numpy()})
        return tuple(torch.from_numpy(np.array(out[i])) for i in range(3))

    def masks(self, src: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        out = self._masks.infer([src.float().contiguous().numpy(), hyper.float().contiguous().numpy()])
        return torch.from_numpy(np.array(out[0]))
