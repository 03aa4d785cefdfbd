"""TinyViT image encoder of MobileSAM (vit_t): 1024² image -> 256×64×64 embedding.

Parameter names and shapes match the official `mobile_sam.pt`, including the unused
ImageNet classifier head (`norm_head`, `head`) that the checkpoint carries.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .common import DropPath, LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    """A TinyViT encoder's architecture; `TinyViT(**asdict(config))` builds it."""

    img_size: int = 1024
    in_chans: int = 3
    num_classes: int = 1000
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    # Stride of the depthwise conv in each patch merging. The official model keeps the last
    # merging (into 320 channels) at stride 1, so the resolutions go 256 -> 128 -> 64 -> 64.
    merge_strides: tuple[int, ...] = (2, 2, 1)
    drop_path_rate: float = 0.0
    out_chans: int = 256
    local_conv_size: int = 3


def default_merge_strides(embed_dims: Sequence[int]) -> tuple[int, ...]:
    """The original's rule: a patch merging into 320, 448 or 576 channels keeps stride 1."""
    return tuple(1 if d in (320, 448, 576) else 2 for d in embed_dims[1:])


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (state-dict names `c` and `bn`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One Conv2d with a bias computing what this block computes in eval mode."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, bias=True,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


class PatchEmbed(nn.Module):
    """Two stride-2 3×3 convs: 1024² -> 256²."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2, 1), nn.GELU(), ConvBN(embed_dim // 2, embed_dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, 3×3 depthwise, 1×1 project, residual, GELU.

    In inference the expanded channels are computed in `hidden_groups` groups, each expanded,
    filtered and projected on its own, the projections summed: the 4×-expanded activations
    (64 MB each at 1024²) never exist whole. Same function (the projection's sum is split, so
    float rounding moves by ~1e-5); the exported encoder's peak memory is ~45 MB lower, and
    OpenVINO still fuses each convolution with its BatchNorm and GELU (with strips of rows it
    did not). `hidden_groups = 1` is the plain block; training always runs it.
    """

    def __init__(self, dim: int, expand_ratio: float, drop_path: float, hidden_groups: int = 4) -> None:
        super().__init__()
        self.hidden_groups = hidden_groups
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, 1)
        self.act3 = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1.c.out_channels
        groups = 1 if self.training else self.hidden_groups
        if groups <= 1 or hidden % groups:
            y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        else:
            step = hidden // groups
            y = self.conv3.bn(sum(self._projected_group(x, slice(i * step, (i + 1) * step))
                                  for i in range(groups)))
        return self.act3(x + self.drop_path(y))

    def _projected_group(self, x: torch.Tensor, channels: slice) -> torch.Tensor:
        """conv3's convolution (without its BatchNorm) of one group of hidden channels."""
        y = self.act1(_conv_bn_channels(self.conv1, x, channels))
        y = self.act2(_conv_bn_channels(self.conv2, y, channels))
        return F.conv2d(y, self.conv3.c.weight[:, channels])


def _conv_bn_channels(block: ConvBN, x: torch.Tensor, channels: slice) -> torch.Tensor:
    """The output `channels` of an inference-mode ConvBN (a depthwise one reads the same)."""
    conv, bn = block.c, block.bn
    groups = channels.stop - channels.start if conv.groups > 1 else 1
    y = F.conv2d(x, conv.weight[channels], None, conv.stride, conv.padding, conv.dilation, groups)
    return F.batch_norm(y, bn.running_mean[channels], bn.running_var[channels],
                        bn.weight[channels], bn.bias[channels], False, 0.0, bn.eps)


class PatchMerging(nn.Module):
    """1×1 conv, 3×3 depthwise conv with the given stride, 1×1 conv.

    Takes a B, C, H, W map or B, H·W, C tokens; returns B, H'·W', C' tokens.
    """

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # B, L, C tokens -> B, C, H, W
            b, _, c = x.shape
            x = x.view(b, self.resolution, self.resolution, c).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        # Channels last straight from the conv (not flatten, then transpose): in the exported
        # graph the conv's own NHWC output then needs no reorder and no transpose.
        return x.permute(0, 2, 3, 1).flatten(1, 2)


def attention_bias_index(window: int) -> torch.Tensor:
    """(window², window²) index into the per-head bias table for each pair of positions.

    Offsets (|Δrow|, |Δcol|) are numbered in order of first appearance, as TinyViT does.
    """
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per relative offset.

    The qkv projection's rows are laid out per head: (heads, q|k|v, head_dim).
    The bias table is indexed on every call (never cached), so weights loaded at any time,
    and any dtype the module is cast to, are used.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * self.head_dim * num_heads)
        self.proj = nn.Linear(self.head_dim * num_heads, dim)
        index = attention_bias_index(window)
        num_offsets = window * window  # distinct (|Δrow|, |Δcol|) pairs
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # B·windows, N tokens, C
        x = self.norm(x)
        # q, k and v as three projections with the rows of the per-head qkv weight: the same
        # numbers as projecting once and splitting the last axis, which OpenVINO runs with a
        # reference kernel (2-3 % of the encoder's time).
        heads, d, c = self.num_heads, self.head_dim, x.shape[-1]
        weight, bias = self.qkv.weight.view(heads, 3, d, c), self.qkv.bias.view(heads, 3, d)
        q, k, v = (F.linear(x, weight[:, i].reshape(heads * d, c), bias[:, i].reshape(heads * d))
                   .view(b, n, heads, d).transpose(1, 2) for i in range(3))  # B, heads, N, d
        # The scale on k rather than on the scores: the exported graph then transposes k in
        # two steps, the last of which folds into the product; one fused transpose would
        # run as OpenVINO's reference kernel (~1 % of the encoder).
        attn = q @ (k * self.scale).transpose(-2, -1)
        attn = attn + self.attention_biases[:, self.attention_bias_idxs]
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class TokenMLP(nn.Module):
    """LayerNorm, Linear, GELU, Linear (TinyViT's MLP carries its own norm)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm(x))))))


class TinyViTBlock(nn.Module):
    """Window attention + residual, 3×3 depthwise "local conv", MLP + residual."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int,
                 mlp_ratio: float, drop_path: float, drop: float = 0.0,
                 local_conv_size: int = 3) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio), drop)
        pad = local_conv_size // 2
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, pad, groups=dim)
        self.drop_path = DropPath(drop_path)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = w = self.resolution
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            # Zero tokens are padded in and take part in attention, as in the original.
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # tokens in row-major order
        x = x + self.drop_path(self._windowed_attention(x))
        # Tokens <-> map as a view and a permute next to the conv (see PatchMerging): in
        # OpenVINO the depthwise conv then reads and writes NHWC in place, ~5 % of the encoder.
        r = self.resolution
        x = self.local_conv(x.view(b, r, r, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.drop_path(self.mlp(x))


class Stage(nn.Module):
    """Blocks, then patch merging (none in the last stage).

    With `use_checkpoint`, each block's activations are recomputed in the backward pass
    instead of kept (training with gradients only).
    """

    blocks: nn.ModuleList
    downsample: nn.Module | None
    use_checkpoint: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class ConvStage(Stage):
    """Stage 0: MBConv blocks then patch merging."""

    def __init__(self, dim: int, out_dim: int, stride: int, resolution: int, depth: int,
                 expand_ratio: float, drop_paths: list[float], use_checkpoint: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, dp) for dp in drop_paths[:depth])
        self.downsample = PatchMerging(resolution, dim, out_dim, stride)
        self.use_checkpoint = use_checkpoint


class AttentionStage(Stage):
    """Stages 1-3: TinyViT blocks, then patch merging except in the last stage."""

    def __init__(self, dim: int, out_dim: int | None, stride: int, resolution: int, depth: int,
                 num_heads: int, window: int, mlp_ratio: float, drop_paths: list[float],
                 drop: float = 0.0, local_conv_size: int = 3, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio, dp, drop, local_conv_size)
            for dp in drop_paths[:depth]
        )
        self.downsample = (
            PatchMerging(resolution, dim, out_dim, stride) if out_dim is not None else None
        )
        self.use_checkpoint = use_checkpoint


class TinyViT(nn.Module):
    """MobileSAM's image encoder: B, 3, S, S normalised image -> B, 256, S/16, S/16 embedding.

    The arguments are the original's (its defaults are TinyViT-21M's; MobileSAM is
    `TinyViT(**asdict(TinyViTConfig()))`, i.e. img_size=1024, embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7]). Training
    options: `drop_rate` (MLP dropout), `drop_path_rate` (stochastic depth, rising linearly
    over the blocks), `use_checkpoint` (gradient checkpointing per block) and `layer_lr_decay`
    (see `set_layer_lr_decay`). `merge_strides` and `out_chans` are this package's additions
    for other students; by default the strides follow the original's rule.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (96, 192, 384, 768),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1, use_checkpoint: bool = False,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3,
                 layer_lr_decay: float = 1.0, *, merge_strides: Sequence[int] | None = None,
                 out_chans: int = 256) -> None:
        super().__init__()
        dims = list(embed_dims)
        strides = (default_merge_strides(dims) if merge_strides is None
                   else tuple(merge_strides))
        self.img_size = img_size
        self.num_classes = num_classes
        self.depths = list(depths)
        self.num_layers = len(self.depths)
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        resolution = img_size // 4
        self.patches_resolution = (resolution, resolution)
        n_blocks = sum(self.depths)
        drop_paths = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(self.depths):
            dp = drop_paths[start:start + depth]
            start += depth
            last = i == self.num_layers - 1
            out_dim = None if last else dims[i + 1]
            stride = 1 if last else strides[i]
            if i == 0:
                stage: nn.Module = ConvStage(dims[0], dims[1], stride, resolution, depth,
                                             mbconv_expand_ratio, dp, use_checkpoint)
            else:
                stage = AttentionStage(dims[i], out_dim, stride, resolution, depth, num_heads[i],
                                       window_sizes[i], mlp_ratio, dp, drop_rate,
                                       local_conv_size, use_checkpoint)
            self.layers.append(stage)
            resolution //= stride
        self.out_resolution = resolution
        self.norm_head = nn.LayerNorm(dims[-1])  # unused; kept for checkpoint compatibility
        self.head = (nn.Linear(dims[-1], num_classes) if num_classes > 0
                     else nn.Identity())  # unused; kept for checkpoint compatibility
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.set_layer_lr_decay(layer_lr_decay)

    def set_layer_lr_decay(self, layer_lr_decay: float) -> None:
        """Give every parameter an `lr_scale` attribute (and `param_name`), which optimizers
        built for TinyViT read: block i of n gets decay ** (n - 1 - i); the stem gets the
        first block's scale, a patch merging its stage's last block's, the heads and the neck
        the last block's (1.0)."""
        depth = sum(self.depths)
        scales = [layer_lr_decay ** (depth - i - 1) for i in range(depth)]

        def set_scale(module: nn.Module, scale: float) -> None:
            for p in module.parameters():
                p.lr_scale = scale  # type: ignore[attr-defined]

        set_scale(self.patch_embed, scales[0])
        i = 0
        for layer in self.layers:
            for block in layer.blocks:
                set_scale(block, scales[i])
                i += 1
            if layer.downsample is not None:
                set_scale(layer.downsample, scales[i - 1])
        for module in (self.norm_head, self.head, self.neck):
            set_scale(module, scales[-1])
        for name, p in self.named_parameters():
            p.param_name = name  # type: ignore[attr-defined]

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        """Parameters whose names contain these are trained without weight decay."""
        return {"attention_biases"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        r = self.out_resolution
        x = x.view(b, r, r, c).permute(0, 3, 1, 2)
        return self.neck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
