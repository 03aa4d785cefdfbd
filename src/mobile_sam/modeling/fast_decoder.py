"""The mask decoder computed with fewer FLOPs, for inference.

Same function as `MaskDecoder` + `TwoWayTransformer` (results agree to float rounding), with
three rewrites that matter on a CPU:

- Attention between the few prompt tokens (n ≈ 2-7) and the 4096 image tokens never
  projects the image tokens. For token->image attention, scores = (q·W_k)·X^T + q·b_k and
  output = (A·X)·W_v^T + b_v (softmax rows sum to 1); for image->token attention,
  scores = X·(W_q^T·k) + b_q·k and output = A·(v·W_out^T) + b_out. Each becomes one GEMM of
  width heads·n instead of projections of width 128-256 over 4096 tokens: half the work.
- Work that does not depend on the prompt (the dense positional encoding, the image tokens
  plus the "no mask" embedding) is computed once per image (`DecoderImageCache`).
- Only the requested mask tokens go through the hypernetwork product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention, TwoWayTransformer


@dataclass
class DecoderImageCache:
    """Prompt-independent tensors for one image embedding (token layout: 1, L, C)."""

    image: torch.Tensor  # image embedding tokens
    keys: torch.Tensor  # image tokens + the "no mask" dense embedding
    key_pe: torch.Tensor  # positional encoding of the image tokens
    keys_with_pe: torch.Tensor  # keys + key_pe (first layer, no mask input)
    size: tuple[int, int]  # h, w of the embedding grid

    @classmethod
    def build(cls, image_embedding: torch.Tensor, prompt_encoder: PromptEncoder) -> "DecoderImageCache":
        """image_embedding: 1, C, h, w."""
        _, c, h, w = image_embedding.shape
        dtype = image_embedding.dtype
        image = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2).contiguous()
        keys = image + prompt_encoder.no_mask_embed.weight.to(dtype).reshape(1, 1, c)
        return cls(image=image, keys=keys, key_pe=key_pe, keys_with_pe=keys + key_pe, size=(h, w))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads)  # B, n, heads, d


def token_to_image(attn: Attention, tokens_q: torch.Tensor, image_k: torch.Tensor,
                   image_v: torch.Tensor) -> torch.Tensor:
    """Attention of n prompt tokens over L image tokens without projecting the image tokens.

    tokens_q: B, n, C; image_k, image_v: B or 1, L, C. Returns B, n, C.
    """
    heads = attn.num_heads
    b, n, c = tokens_q.shape
    q = _split_heads(attn.q_proj(tokens_q), heads)  # B, n, h, d
    d = q.shape[-1]
    w_k = attn.k_proj.weight.view(heads, d, c)
    b_k = attn.k_proj.bias.view(heads, d)
    q_k = torch.einsum("bnhd,hdc->bhnc", q, w_k).reshape(b, heads * n, c)
    bias = torch.einsum("bnhd,hd->bhn", q, b_k).reshape(b, heads * n, 1)
    scores = (torch.matmul(q_k, image_k.transpose(1, 2)) + bias) / math.sqrt(d)  # B, h·n, L
    mixed = torch.matmul(scores.softmax(dim=-1), image_v).view(b, heads, n, c)  # A·X
    w_v = attn.v_proj.weight.view(heads, d, c)
    out = torch.einsum("bhnc,hdc->bnhd", mixed, w_v) + attn.v_proj.bias.view(heads, d)
    return attn.out_proj(out.reshape(b, n, heads * d))


def _short_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a handful of tokens): a few elementwise passes are
    much faster than the generic kernel on millions of tiny rows."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def image_to_token(attn: Attention, image_q: torch.Tensor, tokens_k: torch.Tensor,
                   tokens_v: torch.Tensor) -> torch.Tensor:
    """Attention of L image tokens over n prompt tokens without projecting the image tokens.

    image_q: B or 1, L, C; tokens_k, tokens_v: B, n, C. Returns B, L, C.
    """
    heads = attn.num_heads
    b, n, c = tokens_k.shape
    k = _split_heads(attn.k_proj(tokens_k), heads)  # B, n, h, d
    v = _split_heads(attn.v_proj(tokens_v), heads)
    d = k.shape[-1]
    w_q = attn.q_proj.weight.view(heads, d, c)
    q_k = torch.einsum("hdc,bnhd->bchn", w_q, k).reshape(b, c, heads * n)
    bias = torch.einsum("hd,bnhd->bhn", attn.q_proj.bias.view(heads, d), k).reshape(b, 1, heads * n)
    scores = (torch.matmul(image_q, q_k) + bias) / math.sqrt(d)  # B, L, h·n
    lq = scores.shape[1]
    probs = _short_softmax(scores.view(b, lq, heads, n)).view(b, lq, heads * n)
    w_o = attn.out_proj.weight.view(c, heads, d)
    v_out = torch.einsum("bnhd,chd->bhnc", v, w_o).reshape(b, heads * n, c)  # v·W_out^T per head
    return torch.baddbmm(attn.out_proj.bias.expand(b, lq, c), probs, v_out)


def run_transformer(transformer: TwoWayTransformer, cache: DecoderImageCache,
                    tokens: torch.Tensor, dense: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer on prompt tokens B, n, C.

    `dense` (B, C, h, w) is the embedded mask input, or None for "no mask" (cached keys).
    Returns processed tokens B, n, C and image tokens B, L, C.
    """
    if dense is None:
        keys, keys_with_pe = cache.keys, cache.keys_with_pe
    else:
        keys = cache.image + dense.flatten(2).transpose(1, 2)
        keys_with_pe = keys + cache.key_pe
    query_pe = tokens
    queries = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        queries = layer.norm2(queries + token_to_image(layer.cross_attn_token_to_image,
                                                       queries + query_pe, keys_with_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + image_to_token(layer.cross_attn_image_to_token, keys_with_pe,
                                                 queries + query_pe, queries))
        keys_with_pe = keys + cache.key_pe
    attn = token_to_image(transformer.final_attn_token_to_image, queries + query_pe, keys_with_pe, keys)
    return transformer.norm_final_attn(queries + attn), keys


def decode_masks(decoder: MaskDecoder, cache: DecoderImageCache, sparse: torch.Tensor,
                 dense: torch.Tensor | None, multimask_output: bool,
                 min_iou: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same outputs as `MaskDecoder.forward`: low-res logits B, M, 4h, 4w and IoU B, M.

    sparse: B, n, C prompt embeddings; dense: B, C, h, w mask embedding or None (no mask).
    min_iou: skip the upscaling (most of the per-prompt work) of prompts none of whose masks
    has a predicted IoU above it; their logits are returned as zeros. The automatic mask
    generator drops those masks anyway, so this is exact there.
    """
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    hs, src = run_transformer(decoder.transformer, cache, tokens, dense)
    selected = range(1, decoder.num_mask_tokens) if multimask_output else range(0, 1)
    iou = decoder.iou_prediction_head(hs[:, 0])
    iou = iou[:, 1:] if multimask_output else iou[:, :1]
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in selected], dim=1)
    if min_iou is None:
        return upscale_and_project(decoder.output_upscaling, src, cache.size, hyper), iou
    h, w = cache.size
    masks = src.new_zeros(b, len(selected), 4 * h, 4 * w)
    needed = torch.nonzero((iou > min_iou).any(dim=1)).flatten()
    if len(needed):
        masks[needed] = upscale_and_project(decoder.output_upscaling, src[needed], cache.size,
                                            hyper[needed]).to(masks.dtype)
    return masks, iou


def upscale_and_project(upscaling, src: torch.Tensor, size: tuple[int, int],
                        hyper: torch.Tensor) -> torch.Tensor:
    """ConvT, LayerNorm2d, GELU, ConvT, GELU on image tokens, then the hypernetwork product.

    A 2×2 stride-2 transposed convolution maps each pixel to its own 2×2 block, so it is one
    GEMM on channels-last tokens followed by a pixel shuffle; the shuffle is deferred to the
    M output masks instead of the 32-64 channel maps. src: B, L, C tokens; hyper: B, M, 32.
    Returns B, M, 4h, 4w.
    """
    conv1, norm, _, conv2, _ = upscaling
    b = src.shape[0]
    h, w = size
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
    x = torch.addmm(conv1.bias.repeat(4), src.reshape(b * h * w, -1), w1)  # (B·h·w, 2·2·c1)
    x = F.gelu(F.layer_norm(x.view(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = F.gelu(torch.addmm(conv2.bias.repeat(4), x, w2))  # (B·h·w·4, 2·2·c2)
    m = hyper.shape[1]
    masks = torch.matmul(x.view(b, -1, c2), hyper.transpose(1, 2))  # B, h·w·16, M
    masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, m, 4 * h, 4 * w)
