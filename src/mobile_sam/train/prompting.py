"""Prompts on the low-res mask grid, for training: sample them from masks, run a decoder.

Masks here are the decoder's low-res grid (side × side cells covering the padded S × S
input, `scale` = S / side input pixels per cell). A sampled point is the centre of its cell
in input-frame pixels; a box spans the cells of a region (XYXY, input frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Prompts:
    """K prompts of one kind, batched: coords K, N, 2 and labels K, N (1 positive, 0 negative,
    -1 padding), and/or boxes K, 4 (XYXY); mask_input K, 1, 4h, 4w logits or None."""

    coords: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    mask_input: torch.Tensor | None = None

    def with_points(self, coords: torch.Tensor, labels: torch.Tensor) -> Prompts:
        """These prompts plus one point each: coords K, 2, labels K."""
        c, lab = coords[:, None].float(), labels[:, None].to(torch.int64)
        if self.coords is not None and self.labels is not None:
            c = torch.cat([self.coords, c.to(self.coords.device)], dim=1)
            lab = torch.cat([self.labels, lab.to(self.labels.device)], dim=1)
        return Prompts(c, lab, self.boxes, self.mask_input)


def decode(prompt_encoder: nn.Module, decoder: nn.Module, embedding: torch.Tensor,
           prompts: Prompts, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `decoder` on one image's embedding (1, C, h, w) for K prompts.

    Returns low-res logits K, M, side, side and predicted IoUs K, M (M = 3 with
    `multimask`, else 1)."""
    device = embedding.device
    points = None
    if prompts.coords is not None and prompts.labels is not None:
        points = (prompts.coords.to(device), prompts.labels.to(device))
    boxes = prompts.boxes.to(device) if prompts.boxes is not None else None
    masks = prompts.mask_input.to(device) if prompts.mask_input is not None else None
    sparse, dense = prompt_encoder(points, boxes, masks)
    return decoder(image_embeddings=embedding, image_pe=prompt_encoder.get_dense_pe(),
                   sparse_prompt_embeddings=sparse.to(embedding.dtype),
                   dense_prompt_embeddings=dense.to(embedding.dtype), multimask_output=multimask)


def valid_cells(side: int, input_hw: tuple[int, int], scale: float,
                device: torch.device | None = None) -> torch.Tensor:
    """side × side bool: the low-res cells covering the image (not the zero padding)."""
    h, w = input_hw
    valid = torch.zeros(side, side, dtype=torch.bool, device=device)
    valid[: max(1, round(h / scale)), : max(1, round(w / scale))] = True
    return valid


def random_cell(region: torch.Tensor, gen: torch.Generator) -> tuple[int, int] | None:
    """(x, y) of a cell of the bool `region` (side × side), uniform; None when it is empty."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    if len(ys) == 0:
        return None
    j = int(torch.randint(len(ys), (1,), generator=gen))
    return int(xs[j]), int(ys[j])


def cell_centre(cell: tuple[int, int], scale: float) -> torch.Tensor:
    """Input-frame XY of a cell's centre."""
    return (torch.tensor(cell, dtype=torch.float32) + 0.5) * scale


def region_box(region: torch.Tensor, scale: float) -> torch.Tensor:
    """Input-frame XYXY box around the cells of a non-empty bool region."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float().cpu() * scale


def error_points(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                 gen: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective point per mask, as in SAM's interactive training: a cell uniform over
    the region where the binary masks `pred` and `target` (K, side, side bool) disagree,
    labelled positive where the target is on (a miss) and negative where it is off (a false
    alarm). Masks that already agree get a padding point (label -1). Returns coords K, 2 and
    labels K."""
    coords, labels = [], []
    for k in range(pred.shape[0]):
        cell = random_cell((pred[k] != target[k]) & valid, gen)
        if cell is None:
            coords.append(torch.zeros(2))
            labels.append(-1)
        else:
            coords.append(cell_centre(cell, scale))
            labels.append(int(target[k, cell[1], cell[0]]))
    return torch.stack(coords), torch.tensor(labels)
