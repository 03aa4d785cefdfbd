"""Decoder runners: who runs the decoder modules of `mobile_sam.modeling.fast_decoder`, and
`decode_masks`, the one decoding routine every predictor path calls."""
from __future__ import annotations

from typing import Protocol

import torch

from ..modeling.fast_decoder import DecoderImageCache, FullDecoder
from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder


class DecoderRunner(Protocol):
    """Runs `PromptDecoder`, `MaskHead` and `FullDecoder`: the torch modules or a compiled
    copy of them. Inputs and outputs are torch tensors; the image tokens `prompt()` returns
    may be the runner's own buffer, valid until the calling thread's next `prompt()`."""

    def prompt(self, points: torch.Tensor, labels: torch.Tensor, cache: DecoderImageCache
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def masks(self, src: torch.Tensor, hyper: torch.Tensor, extent: torch.Tensor
              ) -> torch.Tensor: ...  # src B,h,w,C; extent: rows, columns (see MaskHead)

    def full(self, points: torch.Tensor, labels: torch.Tensor, cache: DecoderImageCache
             ) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchDecoderRunner:
    """The decoder modules in eager torch."""

    def __init__(self, decoder: MaskDecoder, prompt_encoder: PromptEncoder) -> None:
        self.full_decoder = FullDecoder(decoder, prompt_encoder)

    def prompt(self, points, labels, cache):
        return self.full_decoder.prompt_decoder(points, labels, *cache.tensors())

    def masks(self, src, hyper, extent):
        return self.full_decoder.mask_head(src, hyper, extent)

    def full(self, points, labels, cache):
        return self.full_decoder(points, labels, *cache.tensors())


def decode_masks(runner: DecoderRunner, cache: DecoderImageCache, points: torch.Tensor,
                 labels: torch.Tensor, multimask_output: bool, min_iou: float | None = None,
                 extent: tuple[int, int] | None = None, out: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same outputs as `MaskDecoder.forward`: low-res logits B, M, 4h, 4w and IoU B, M.

    points, labels: from `prompt_points` (the cache holds the dense embedding).
    min_iou: skip the upscaling (a third of the per-prompt work) of prompts none of whose
    masks has a predicted IoU above it; their logits are returned as zeros. The automatic
    mask generator drops those masks anyway, so this is exact there.
    extent: with `min_iou`, the rows and columns of the embedding grid whose logits are
    needed (the image; the rest is padding that upscaling to the image never reads): the
    logits returned are then the top-left B, M, 4·rows, 4·columns. A 4:3 photo needs 49 of
    64 rows.
    out: with `min_iou`, a zero tensor of that shape (on any device) to write the kept
    prompts' logits into and return. Zeros from `numpy.zeros` are pages the system has not
    handed out yet: the skipped prompts' logits then cost neither time nor memory (most
    prompts, in the generator).
    """
    selected = slice(1, None) if multimask_output else slice(0, 1)
    if min_iou is None:
        masks, iou = runner.full(points, labels, cache)
        return masks[:, selected], iou[:, selected]
    src, iou, hyper = runner.prompt(points, labels, cache)
    iou, hyper = iou[:, selected], hyper[:, selected].contiguous()
    h, w = cache.size
    rows, cols = extent or (h, w)
    src = src.view(len(iou), h, w, -1)
    extent_t = torch.tensor([rows, cols])
    needed = torch.nonzero((iou > min_iou).any(dim=1)).flatten()
    if out is None:
        if len(needed) == len(iou):
            return runner.masks(src, hyper, extent_t), iou
        out = src.new_zeros(len(iou), hyper.shape[1], 4 * rows, 4 * cols)
    if len(needed) == len(iou):
        out[:] = runner.masks(src, hyper, extent_t)
    elif len(needed):
        out[needed.to(out.device)] = runner.masks(src[needed], hyper[needed], extent_t).to(out)
    return out, iou
