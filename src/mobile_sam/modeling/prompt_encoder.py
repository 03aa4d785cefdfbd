"""SAM's prompt encoder: points, boxes and a low-res mask -> sparse and dense embeddings."""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


def prompt_points(points: tuple[torch.Tensor, torch.Tensor] | None,
                  boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> one point list per prompt in SAM's ONNX convention.

    points: (B,N,2, B,N labels) or None; boxes: B,4 XYXY or None (input frame). Points come
    first, then a padding point (label -1) when there is no box, or the box corners (labels 2
    and 3): the tokens `PromptEncoder` makes, in its order.
    """
    parts, part_labels = [], []
    if points is not None:
        coords, labels = points
        b = coords.shape[0]
        parts.append(coords.float())
        part_labels.append(labels.to(torch.int64))
        if boxes is None:
            parts.append(coords.new_zeros(b, 1, 2, dtype=torch.float))
            part_labels.append(torch.full((b, 1), -1, dtype=torch.int64, device=coords.device))
    if boxes is not None:
        b = boxes.shape[0]
        parts.append(boxes.float().reshape(b, 2, 2))
        part_labels.append(torch.tensor([[2, 3]], device=boxes.device).expand(b, 2))
    if not parts:
        return torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.int64)
    return torch.cat(parts, dim=1), torch.cat(part_labels, dim=1)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised XY coordinates: [sin, cos] of 2π·(2x−1)·G."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix",
                             scale * torch.randn(2, num_pos_feats))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords in [0, 1], shape (..., 2) -> (..., 2·num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an h×w grid: C, h, w."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor,
                            image_size: tuple[int, int]) -> torch.Tensor:
        """coords_input: B, N, 2 XY pixels of the padded input image -> B, N, C."""
        h, w = image_size
        coords = torch.stack([coords_input[..., 0] / w, coords_input[..., 1] / h], dim=-1)
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Embeds points, boxes and a low-res mask for the mask decoder (SAM: embed_dim 256,
    a 64×64 embedding of a 1024×1024 input, mask_in_chans 16)."""

    num_point_embeddings = 4  # negative, positive, box top-left, box bottom-right

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int], mask_in_chans: int,
                 activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: 1, C, 64, 64."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """points B, N, 2 (input frame) with labels B, N -> B, N, C.

        Label -1: "not a point" (padding); 0/1: negative/positive point; 2/3: the top-left and
        bottom-right corners of a box (the convention of SAM's ONNX decoder, see
        `prompt_points`).
        """
        emb = self.pe_layer.forward_with_coords(points + 0.5, self.input_image_size)  # centres
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, emb)
        for i, point_embedding in enumerate(self.point_embeddings):
            emb = emb + (labels == i) * point_embedding.weight
        return emb

    @staticmethod
    def _batch_size(points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points: (B, N, 2 XY in the 1024 input frame, B, N labels); boxes: B, 4 XYXY;
        masks: B, 1, 256, 256 logits. Returns sparse B, N', C and dense B, C, 64, 64."""
        bs = self._batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        coords, labels = prompt_points(points, boxes)
        if coords.shape[1]:
            sparse = self._embed_points(coords.to(weight.device), labels.to(weight.device))
        else:
            sparse = weight.new_empty(bs, 0, self.embed_dim)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
