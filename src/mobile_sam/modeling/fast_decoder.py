"""The mask decoder computed with fewer FLOPs, for inference.

Same function as `MaskDecoder` + `TwoWayTransformer` (results agree to float rounding), with
rewrites that matter on a CPU:

- Work that does not depend on the prompt is done once per image (`DecoderImageCache`): the
  dense positional encoding, the image tokens plus the "no mask" embedding, and the first
  layer's projections of the image tokens (its keys, values and image-side queries).
- In the later layers, attention between the few prompt tokens (n ≈ 2-7) and the 4096 image
  tokens never projects the image tokens. For token->image attention, scores = (q·W_k)·X^T
  (q·b_k is constant along the softmax: dropped) and output = (A·X)·W_v^T + b_v (softmax
  rows sum to 1); for image->token attention, scores = X·(W_q^T·k) + b_q·k and
  output = A·(v·W_out^T) + b_out. Each becomes one GEMM of width heads·n instead of
  projections of width 128-256 over 4096 tokens: half the work.
- The upscaling's 2×2 stride-2 transposed convolutions are GEMMs on channels-last tokens.

The prompt-dependent work is two modules, `PromptDecoder` (transformer, IoU head,
hypernetworks) and `MaskHead` (upscaling and the hypernetwork product), so that a caller can
skip the second for prompts it will drop, and so that both can be compiled by another runtime
(see `mobile_sam.runtime`) from this one implementation. `DecoderImageCache` holds the
prompt-independent inputs of `PromptDecoder`: tensors computed from the image embedding and
the modules' weights, nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention


@dataclass
class DecoderImageCache:
    """Prompt-independent decoder inputs for one image (token layout: batch, L, C).

    The batch is 1 (shared by every prompt) or B when a mask input adds a dense embedding
    per prompt.
    """

    keys: torch.Tensor  # image tokens + dense prompt embedding: 1|B, L, C
    key_pe: torch.Tensor  # positional encoding of the image tokens: 1, L, C
    first_q: torch.Tensor  # layer 0 image->token queries, projected and scaled: 1|B, L, C'
    first_k: torch.Tensor  # layer 0 token->image keys, projected and scaled: 1|B, heads, d, L
    first_v: torch.Tensor  # layer 0 token->image values, projected: 1|B, heads, L, d
    size: tuple[int, int]  # h, w of the embedding grid

    @classmethod
    def build(cls, image_embedding: torch.Tensor, prompt_encoder: PromptEncoder,
              decoder: MaskDecoder, dense: torch.Tensor | None = None) -> DecoderImageCache:
        """image_embedding: 1, C, h, w; dense: B, C, h, w embedded mask input, or None."""
        _, c, h, w = image_embedding.shape
        dtype = image_embedding.dtype
        image = image_embedding.flatten(2).transpose(1, 2)
        if dense is None:
            keys = image + prompt_encoder.no_mask_embed.weight.to(dtype).reshape(1, 1, c)
        else:
            keys = image + dense.to(dtype).flatten(2).transpose(1, 2)
        key_pe = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2).contiguous()
        keys_with_pe = keys + key_pe
        first = decoder.transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        b, length, _ = keys.shape
        heads = t2i.num_heads
        d = t2i.k_proj.out_features // heads
        first_k = (t2i.k_proj(keys_with_pe) / math.sqrt(d)).view(b, length, heads, d)
        first_v = t2i.v_proj(keys).view(b, length, heads, d)
        d_q = i2t.q_proj.out_features // i2t.num_heads
        return cls(keys=keys.contiguous(), key_pe=key_pe,
                   first_q=(i2t.q_proj(keys_with_pe) / math.sqrt(d_q)).contiguous(),
                   first_k=first_k.permute(0, 2, 3, 1).contiguous(),
                   first_v=first_v.transpose(1, 2).contiguous(), size=(h, w))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The `PromptDecoder` inputs after the tokens, in order."""
        return self.keys, self.key_pe, self.first_q, self.first_k, self.first_v


# ------------------------------------------------------------------ attention forms
def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads)  # B, n, heads, d


def _token_softmax(scores: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    """Softmax of image->token scores B, L, n·heads over the n tokens of each head.

    The columns are token-major (n, heads), so the reductions run across contiguous rows of
    `heads` values rather than along millions of rows of n ≈ 2-7: the same in eager torch,
    about 10 % less decoder time in OpenVINO (whose softmax kernel handles tiny rows badly)."""
    b, length, _ = scores.shape
    x = scores.view(b, length, n, heads)
    e = (x - x.amax(dim=2, keepdim=True)).exp()
    return (e / e.sum(dim=2, keepdim=True)).view(b, length, n * heads)


def _mix_values(attn: Attention, probs: torch.Tensor, tokens_v: torch.Tensor) -> torch.Tensor:
    """Image->token output A·(v·W_out^T) + b_out. probs: B, L, n·heads; tokens_v: B, n, C."""
    heads = attn.num_heads
    b, n, c = tokens_v.shape
    v = _split_heads(attn.v_proj(tokens_v), heads)
    w_o = attn.out_proj.weight.view(c, heads, -1)
    v_out = torch.einsum("bnhd,chd->bnhc", v, w_o).reshape(b, n * heads, c)
    return torch.matmul(probs, v_out) + attn.out_proj.bias


def first_token_to_image(attn: Attention, tokens_q: torch.Tensor, keys_t: torch.Tensor,
                         values: torch.Tensor) -> torch.Tensor:
    """Token->image attention on cached projections. keys_t: 1|B, heads, d, L (scaled);
    values: 1|B, heads, L, d. Returns B, n, C."""
    b, n, _ = tokens_q.shape
    q = _split_heads(attn.q_proj(tokens_q), attn.num_heads).transpose(1, 2)  # B, heads, n, d
    out = torch.matmul(torch.matmul(q, keys_t).softmax(dim=-1), values)
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, -1))


def first_image_to_token(attn: Attention, image_q: torch.Tensor, tokens_k: torch.Tensor,
                         tokens_v: torch.Tensor) -> torch.Tensor:
    """Image->token attention on cached image queries (1|B, L, C', projected and scaled).

    Each head's scores use its own slice of the queries: with the keys laid out block-diagonally
    (C', n·heads), all heads are one GEMM. Returns B, L, C.
    """
    heads = attn.num_heads
    b, n, _ = tokens_k.shape
    k = _split_heads(attn.k_proj(tokens_k), heads)  # B, n, heads, d
    eye = torch.eye(heads, dtype=k.dtype, device=k.device)
    k_blocks = torch.einsum("bnhd,hg->bhdng", k, eye).reshape(b, -1, n * heads)
    scores = torch.matmul(image_q, k_blocks)  # B, L, n·heads
    return _mix_values(attn, _token_softmax(scores, n, heads), tokens_v)


def token_to_image(attn: Attention, tokens_q: torch.Tensor, image_k: torch.Tensor,
                   image_v: torch.Tensor) -> torch.Tensor:
    """Attention of n prompt tokens over L image tokens without projecting the image tokens.

    tokens_q: B, n, C; image_k, image_v: B or 1, L, C. Returns B, n, C.
    """
    heads = attn.num_heads
    b, n, c = tokens_q.shape
    q = _split_heads(attn.q_proj(tokens_q), heads)  # B, n, h, d
    d = q.shape[-1]
    q = q / math.sqrt(d)
    w_k = attn.k_proj.weight.view(heads, d, c)
    q_k = torch.einsum("bnhd,hdc->bhnc", q, w_k).reshape(b, heads * n, c)
    # The key bias adds q·b_k, the same for every image token of a row: softmax ignores it.
    # L x h·n first (a tall GEMM runs several times faster than a wide one), then transposed.
    scores = torch.matmul(image_k, q_k.transpose(1, 2)).transpose(1, 2)  # B, h·n, L
    mixed = torch.matmul(scores.softmax(dim=-1), image_v).view(b, heads, n, c)  # A·X
    w_v = attn.v_proj.weight.view(heads, d, c)
    out = torch.einsum("bhnc,hdc->bnhd", mixed, w_v) + attn.v_proj.bias.view(heads, d)
    return attn.out_proj(out.reshape(b, n, heads * d))


def image_to_token(attn: Attention, image_q: torch.Tensor, tokens_k: torch.Tensor,
                   tokens_v: torch.Tensor) -> torch.Tensor:
    """Attention of L image tokens over n prompt tokens without projecting the image tokens.

    image_q: B, L, C; tokens_k, tokens_v: B, n, C. Returns B, L, C.
    """
    heads = attn.num_heads
    b, n, c = tokens_k.shape
    k = _split_heads(attn.k_proj(tokens_k), heads)  # B, n, h, d
    d = k.shape[-1]
    k = k / math.sqrt(d)
    w_q = attn.q_proj.weight.view(heads, d, c)
    q_k = torch.einsum("hdc,bnhd->bcnh", w_q, k).reshape(b, c, n * heads)
    bias = torch.einsum("hd,bnhd->bnh", attn.q_proj.bias.view(heads, d), k).reshape(b, 1, n * heads)
    scores = torch.matmul(image_q, q_k) + bias  # B, L, n·h
    return _mix_values(attn, _token_softmax(scores, n, heads), tokens_v)


# ------------------------------------------------------------------ modules
class PromptDecoder(nn.Module):
    """Prompt embedding, transformer, IoU head and hypernetworks for a batch of prompts.

    forward(points B,N,2, labels B,N, *DecoderImageCache.tensors()) -> image tokens B,L,C
    (for `MaskHead`), IoU predictions B,4 and hypernetwork weights B,4,C/8 (all mask tokens).
    Points are in the padded input frame with SAM's ONNX labels (-1 padding, 0/1 negative/
    positive, 2/3 box corners), see `prompt_points`.
    """

    def __init__(self, decoder: MaskDecoder, prompt_encoder: PromptEncoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.prompt_encoder = prompt_encoder

    def forward(self, points: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor,
                key_pe: torch.Tensor, first_q: torch.Tensor, first_k: torch.Tensor,
                first_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.prompt_encoder._embed_points(points, labels).to(keys.dtype)
        decoder, transformer = self.decoder, self.decoder.transformer
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(keys.dtype).unsqueeze(0).expand(sparse.shape[0], -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        query_pe = queries = tokens
        keys_with_pe = None  # layer 0 works on the cached projections
        for i, layer in enumerate(transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            if i == 0:
                update = first_token_to_image(layer.cross_attn_token_to_image,
                                              queries + query_pe, first_k, first_v)
            else:
                update = token_to_image(layer.cross_attn_token_to_image, queries + query_pe,
                                        keys_with_pe, keys)
            queries = layer.norm2(queries + update)
            queries = layer.norm3(queries + layer.mlp(queries))
            if i == 0:
                update = first_image_to_token(layer.cross_attn_image_to_token, first_q,
                                              queries + query_pe, queries)
            else:
                update = image_to_token(layer.cross_attn_image_to_token, keys_with_pe,
                                        queries + query_pe, queries)
            keys = layer.norm4(keys + update)
            keys_with_pe = keys + key_pe
        attn = token_to_image(transformer.final_attn_token_to_image, queries + query_pe,
                              keys_with_pe, keys)
        hs = transformer.norm_final_attn(queries + attn)
        iou = decoder.iou_prediction_head(hs[:, 0])
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in
                             enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        return keys, iou, hyper


class MaskHead(nn.Module):
    """Upscaling and hypernetwork product: image tokens as a channels-last map B,h,w,C and
    weights B,M,C/8 -> low-res mask logits B,M,4h,4w.

    A 2×2 stride-2 transposed convolution maps each pixel to its own 2×2 block, so it is one
    GEMM on channels-last tokens followed by a pixel shuffle; the shuffle is deferred to the
    M output masks instead of the 32-64 channel maps. Every pixel's output depends on that
    pixel alone, so with `extent` (rows, columns: an int64 tensor of 2) only the top-left
    part of the map is computed, giving that part of the logits B,M,4·rows,4·columns.
    """

    def __init__(self, decoder: MaskDecoder) -> None:
        super().__init__()
        self.upscaling = decoder.output_upscaling

    def forward(self, src: torch.Tensor, hyper: torch.Tensor,
                extent: torch.Tensor | None = None) -> torch.Tensor:
        conv1, norm, _, conv2, _ = self.upscaling
        if extent is not None:
            src = src[:, :extent[0], :extent[1]]
        b, h, w, _ = src.shape
        c1, c2 = conv1.out_channels, conv2.out_channels
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
        x = torch.addmm(conv1.bias.repeat(4), src.reshape(b * h * w, -1), w1)  # B·h·w, 2·2·c1
        x = F.gelu(F.layer_norm(x.view(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = F.gelu(torch.addmm(conv2.bias.repeat(4), x, w2))  # B·h·w·4, 2·2·c2
        m = hyper.shape[1]
        masks = torch.matmul(x.view(b, -1, c2), hyper.transpose(1, 2))  # B, h·w·16, M
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)


class FullDecoder(nn.Module):
    """`PromptDecoder` then `MaskHead` on all mask tokens: points, labels, *cache ->
    low-res logits B,4,4h,4w and IoU B,4 (one call when no prompt is skipped)."""

    def __init__(self, decoder: MaskDecoder, prompt_encoder: PromptEncoder) -> None:
        super().__init__()
        self.prompt_decoder = PromptDecoder(decoder, prompt_encoder)
        self.mask_head = MaskHead(decoder)
        self.size = tuple(prompt_encoder.image_embedding_size)  # h, w of the embedding grid

    def forward(self, points: torch.Tensor, labels: torch.Tensor, *cache: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        src, iou, hyper = self.prompt_decoder(points, labels, *cache)
        return self.mask_head(src.view(src.shape[0], *self.size, -1), hyper), iou
