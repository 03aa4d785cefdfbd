"""Small charts drawn with Pillow's ImageDraw (no matplotlib): a loss curve and histograms."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..io import PALETTE, save_image_png

_W, _H = 800, 480
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 20, 40, 50
_AXIS = (60, 60, 60)
_GRID = (225, 225, 225)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def loss_curve_png(path: str | os.PathLike[str], series: dict[str, Sequence[tuple[float, float]]],
                   title: str = "loss", log_y: bool = True) -> Path:
    """Draw each named series of (step, value) points as a line (one point: a dot), with a
    log-scale y axis when every value is positive. Writes a PNG atomically."""
    img = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(img)
    points = [(x, y) for s in series.values() for x, y in s if math.isfinite(y)]
    draw.text((_LEFT, 12), title, fill=_AXIS)
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _H - _BOTTOM, _TOP
    draw.rectangle([x0, y1, x1, y0], outline=_AXIS)
    if points:
        log_y = log_y and all(y > 0 for _, y in points)
        fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
        xs = [p[0] for p in points]
        ys = [fy(p[1]) for p in points]
        xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        ymin, ymax = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

        def to_px(x: float, y: float) -> tuple[float, float]:
            return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0),
                    y0 - (fy(y) - ymin) / (ymax - ymin) * (y0 - y1))

        for k in range(5):  # horizontal grid with value labels
            v = ymin + (ymax - ymin) * k / 4
            py = y0 - (y0 - y1) * k / 4
            draw.line([x0 + 1, py, x1 - 1, py], fill=_GRID)
            draw.text((6, py - 6), _fmt(10 ** v if log_y else v), fill=_AXIS)
        for k in range(5):
            v = xmin + (xmax - xmin) * k / 4
            draw.text((x0 + (x1 - x0) * k / 4 - 10, y0 + 8), _fmt(v), fill=_AXIS)
        draw.text(((x0 + x1) // 2 - 15, y0 + 28), "step", fill=_AXIS)
        for i, (name, s) in enumerate(series.items()):
            color = PALETTE[i % len(PALETTE)]
            pts = [to_px(x, y) for x, y in s if math.isfinite(y)]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            for px, py in pts if len(pts) <= 60 else pts[-1:]:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
            draw.text((x1 - 150, y1 + 8 + 14 * i), name, fill=color)
    return save_image_png(path, np.asarray(img))


def histograms_png(path: str | os.PathLike[str], values: dict[str, Sequence[float]],
                   bins: int = 20, title: str = "IoU") -> Path:
    """One histogram of values in [0, 1] per name, stacked vertically. Writes a PNG."""
    rows = max(len(values), 1)
    row_h = 150
    img = Image.new("RGB", (_W, 30 + rows * row_h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((_LEFT, 8), title, fill=_AXIS)
    for r, (name, vals) in enumerate(values.items()):
        top = 30 + r * row_h
        x0, x1, y0, y1 = _LEFT, _W - _RIGHT, top + row_h - 30, top + 10
        counts, _ = np.histogram(np.clip(np.asarray(vals, float), 0, 1), bins=bins, range=(0, 1))
        peak = max(int(counts.max()) if counts.size else 0, 1)
        draw.rectangle([x0, y1, x1, y0], outline=_AXIS)
        width = (x1 - x0) / bins
        color = PALETTE[r % len(PALETTE)]
        for b, c in enumerate(counts):
            if c:
                h = (y0 - y1) * c / peak
                draw.rectangle([x0 + b * width + 1, y0 - h, x0 + (b + 1) * width - 1, y0],
                               fill=color)
        mean = float(np.mean(vals)) if len(vals) else float("nan")
        draw.text((6, y1), name, fill=_AXIS)
        draw.text((6, y1 + 14), f"n={len(vals)}", fill=_AXIS)
        draw.text((6, y1 + 28), f"mean={mean:.3f}", fill=_AXIS)
        draw.text((x0 - 10, y0 + 4), "0", fill=_AXIS)
        draw.text((x1 - 10, y0 + 4), "1", fill=_AXIS)
        draw.text((x0 + 4, y1 + 2), f"peak {peak}", fill=_AXIS)
    return save_image_png(path, np.asarray(img))
