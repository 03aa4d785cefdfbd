"""Mask outlines as polygons, traced by OpenCV's ``findContours`` and simplified by its
``approxPolyDP`` (Douglas-Peucker).

Two conventions for where an outline runs, because the consumers of polygons disagree:

* through the centres of the mask's boundary pixels (the default): a pixel ``(x, y)`` has
  its centre at ``(x, y)``, so filling the polygon with ``cv2.fillPoly`` or PIL (what
  Ultralytics and LabelMe do) gives back the mask's pixels;
* along the pixel edges (``pixel_edges=True``): the outline of the union of the pixel
  squares ``[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]``, whose area is the pixel count, which is
  how pycocotools rasterises COCO polygons.

Only outer outlines are returned: a hole inside a part is not described (see each format).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["join_parts", "mask_to_polygons"]


def _cv2() -> Any:
    """OpenCV, imported on first use: it takes a noticeable part of a second to load."""
    import cv2

    return cv2


def _as_mask(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {array.shape}")
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        nonzero: np.ndarray = array != 0
        return nonzero
    raise TypeError(f"mask must be bool (or integer 0/1), got dtype {array.dtype}; "
                    "use e.g. mask > 0.5")


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    return float(tolerance)


def _edge_outline(component: np.ndarray) -> list[np.ndarray]:
    """Outer pixel-edge outlines of a uint8 mask, as int (K, 2) arrays of corner indices
    (corner ``c`` is at pixel coordinate ``c - 0.5``).

    Traced at twice the resolution, each traced point lies in the half of its pixel that
    touches the boundary, so rounding it to that side's pixel corner puts it on the edge.
    """
    cv2 = _cv2()
    doubled = np.repeat(np.repeat(component, 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outlines = []
    for contour in contours:
        corners = (contour.reshape(-1, 2) + 1) // 2
        changed = np.any(corners != np.roll(corners, 1, axis=0), axis=1)
        outlines.append(corners[changed] if changed.any() else corners[:1])
    return outlines


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed int outline; the outline itself if that leaves < 3 points."""
    cv2 = _cv2()
    simple = cv2.approxPolyDP(points.reshape(-1, 1, 2).astype(np.int32), tolerance, True)
    simple = simple.reshape(-1, 2)
    return simple if len(simple) >= 3 else points


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0, *,
                     pixel_edges: bool = False) -> list[np.ndarray]:
    """The outer outline of each part (8-connected component) of an ``(H, W)`` bool mask.

    Returns a list of ``(K, 2)`` float64 XY pixel arrays, K >= 3, largest part first (by
    polygon area); an empty mask gives ``[]``. Each outline is simplified with
    Douglas-Peucker at ``tolerance`` pixels (0 keeps every corner). Holes are not described:
    filling the polygons fills them. By default the outline runs through the centres of the
    boundary pixels (``cv2.fillPoly`` of the rounded points gives back the part); a part too
    thin for that (one pixel, a one-pixel line) is given its pixel-edge outline instead. With
    ``pixel_edges=True`` every outline runs along the pixel edges (coordinates ``n - 0.5``),
    so its area equals the pixel count, as COCO's pycocotools rasterises polygons.
    """
    cv2 = _cv2()
    m = _as_mask(mask)
    tol = _check_tolerance(tolerance)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(m.any(axis=0))
    # Trace only the mask's bounding box, with a one-pixel empty border.
    y0, x0 = int(rows[0]), int(cols[0])
    # C order: OpenCV draws into it, and masks decoded from RLE are often column-major.
    crop = np.ascontiguousarray(np.pad(m[y0:rows[-1] + 1, x0:cols[-1] + 1].astype(np.uint8), 1))
    offset = np.array([x0 - 1, y0 - 1], dtype=np.float64)
    polygons: list[np.ndarray] = []
    if pixel_edges:
        for outline in _edge_outline(crop):
            polygons.append(_simplify(outline, tol) - 0.5 + offset)
    else:
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            points = contour.reshape(-1, 2)
            if len(np.unique(points, axis=0)) >= 3:
                polygons.append(_simplify(points, tol) + offset)
                continue
            # Redraw the thin part alone in a small canvas around it, and trace its pixel edges.
            corner = points.min(axis=0) - 1
            size = points.max(axis=0) - corner + 2
            part = np.zeros((int(size[1]), int(size[0])), dtype=np.uint8)
            cv2.drawContours(part, [contour - corner], -1, 1, thickness=cv2.FILLED)
            polygons.extend(_simplify(o, tol) - 0.5 + corner + offset for o in _edge_outline(part))
    areas = [abs(float(cv2.contourArea(p.astype(np.float32)))) for p in polygons]
    order = sorted(range(len(polygons)), key=lambda i: -areas[i])
    return [polygons[i].astype(np.float64) for i in order]


def join_parts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One closed polygon visiting every part, for formats with one polygon per object.

    Consecutive parts are linked at their closest pair of vertices, and the polygon runs
    out along each link and back along it (the way Ultralytics joins COCO parts for
    YOLO-seg), so filling it gives the parts plus the links' thin lines. One part is
    returned as it is.
    """
    if not parts:
        raise ValueError("join_parts needs at least one polygon")
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in parts]
    if len(polys) == 1:
        return polys[0]
    links: list[tuple[int, int]] = []  # (exit vertex in part k, entry vertex in part k + 1)
    for a, b in zip(polys, polys[1:]):
        dist = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        links.append((int(i), int(j)))

    out: list[np.ndarray] = []
    # Depth-first walk: each part from its entry vertex round to it again, detouring into the
    # next part at its exit vertex. An explicit stack, as a mask can have many parts.
    stack = [(0, 0, 0, False)]  # (part, entry vertex, steps taken, detour done)
    while stack:
        k, entry, step, detoured = stack.pop()
        poly = polys[k]
        n = len(poly)
        while step <= n:
            idx = (entry + step) % n
            out.append(poly[idx])
            if not detoured and k + 1 < len(polys) and idx == links[k][0]:
                stack.append((k, entry, step, True))  # back at this vertex, then go on
                stack.append((k + 1, links[k][1], 0, False))
                break
            step += 1
    return np.asarray(out[:-1])  # the last point closes the ring onto the first
