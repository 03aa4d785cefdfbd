"""Images for calibrating the int8 encoder: generated here, or the user's own photos with
crops and flips. Nothing is downloaded.

Post-training quantization measures the range of every activation on a few images; those
images should look like what the model will see. Without photos, `generated_images` draws
scenes with the statistics that matter to an encoder (smooth shading, flat regions with sharp
edges, textures, noise, a range of colours and contrasts). With photos (`augmented`), each
is used whole, mirrored and as crops, which the encoder sees at other scales.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def generated_images(count: int = 12, seed: int = 0, size: tuple[int, int] = (480, 640)
                     ) -> list[np.ndarray]:
    """`count` deterministic H, W, 3 uint8 RGB scenes: a shaded background, ellipses and
    rectangles of random colours, a striped or checked texture patch, and sensor-like noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)  # corner colours
        fy, fx = (yy / (h - 1))[..., None], (xx / (w - 1))[..., None]
        img = ((1 - fy) * ((1 - fx) * base[0, 0] + fx * base[0, 1])
               + fy * ((1 - fx) * base[1, 0] + fx * base[1, 1]))
        for _ in range(rng.integers(3, 9)):
            colour = rng.uniform(0, 255, 3)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
            if rng.random() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            else:
                inside = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
            shade = 1 + 0.3 * (yy - cy) / h  # lit from above
            img[inside] = (colour * shade[..., None])[inside]
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        period = rng.uniform(4, 24)
        texture = np.sin(xx / period) * np.sin(yy / period) if rng.random() < 0.5 \
            else np.sin((xx + yy) / period)
        patch = (slice(y0, y0 + h // 3), slice(x0, x0 + w // 3))
        img[patch] += 60 * texture[patch][..., None]
        img += rng.normal(0, rng.uniform(1, 8), img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def augmented(images: Iterable[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Each image, its mirror image, and a random crop of two thirds of each side."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        h, w = image.shape[:2]
        y, x = int(rng.integers(0, h // 3 + 1)), int(rng.integers(0, w // 3 + 1))
        out += [image, image[:, ::-1].copy(), image[y:y + 2 * h // 3, x:x + 2 * w // 3].copy()]
    return out
