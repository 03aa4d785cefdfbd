"""Augmented views with exact teacher embeddings: `distill cache --views K`.

The teacher's embedding of a flipped or cropped image is not a flipped or cropped embedding
(SAM's encoders are not equivariant), so each augmented view is embedded by the teacher and
cached. A view is a function of (recipe, seed, image size): the cache records the recipe once
and the seed (and the resulting crop box and flip) per entry, and training rebuilds the very
pixels the teacher saw from them. View 0 is always the plain image.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

RECIPE: dict[str, Any] = {"name": "flip_crop/1", "flip_p": 0.5, "scale": [0.5, 1.0]}
"""Horizontal flip with probability `flip_p`; a crop keeping a fraction s ~ U(scale) of each
side (so s² of the area) at a uniform position, which the model's resize then scales up."""


def view_seed(rel: str, view: int) -> int:
    """The seed of view `view` of the image at `rel` (a function of both, nothing else)."""
    digest = hashlib.sha256(f"{rel}\n{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def view_params(recipe: dict[str, Any], seed: int, hw: tuple[int, int]) -> dict[str, Any]:
    """The crop box `[y0, x0, h, w]` and `flip` that (recipe, seed) give for an H×W image."""
    if recipe.get("name") != RECIPE["name"]:
        raise ValueError(f"unknown augmentation recipe {recipe.get('name')!r} (this version "
                         f"knows {RECIPE['name']!r})")
    rng = np.random.default_rng(seed)
    lo, hi = recipe["scale"]
    s = float(rng.uniform(lo, hi))
    height, width = int(hw[0]), int(hw[1])
    h, w = max(1, round(height * s)), max(1, round(width * s))
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    flip = bool(rng.random() < recipe["flip_p"])
    return {"crop": [y0, x0, h, w], "flip": flip}


def apply_view(rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The view of an H×W×3 image: crop, then flip left-right."""
    y0, x0, h, w = params["crop"]
    out = rgb[y0:y0 + h, x0:x0 + w]
    if params["flip"]:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def pick_view(n_views: int, image: int, epoch: int, seed: int) -> int:
    """Which of an image's `n_views` cached views training uses in `epoch` (seeded)."""
    if n_views == 1:
        return 0
    return int(np.random.default_rng([seed, epoch, image]).integers(n_views))
