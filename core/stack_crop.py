"""Exact common-area crop of an aligned stack.

Every aligned image covers a convex quadrilateral of the reference frame: its pixel-centre corners
(0, 0) .. (w-1, h-1) mapped by its matrix. Their intersection is convex (clipped exactly in float64);
the crop is the largest axis-aligned rectangle of whole reference pixels whose centres all lie inside
it, so bilinear sampling of every output pixel reads only real source pixels.
"""
import math

import numpy as np


def image_quad(matrix, width, height):
    """The pixel-centre corners of a width x height image mapped by `matrix` (4x2 float64, clockwise).

    Raises ValueError when a corner maps through the horizon (w <= 0): the quad is not a real region.
    """
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [width - 1, height - 1, 1], [0, height - 1, 1]],
                       dtype=np.float64)
    mapped = corners @ np.asarray(matrix, dtype=np.float64).T
    if np.any(mapped[:, 2] <= 1e-12 * np.abs(mapped[:, :2]).max(axis=1).clip(min=1)):
        raise ValueError("a corner maps through the horizon")
    return np.ascontiguousarray(mapped[:, :2] / mapped[:, 2:3])


def _signed_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _orient_ccw(poly):
    """Counter-clockwise in the (x right, y up) sense, i.e. positive signed area."""
    return poly if _signed_area(poly) >= 0 else poly[::-1].copy()


def clip_convex(subject, clip):
    """Sutherland-Hodgman: the part of polygon `subject` inside the convex polygon `clip` (float64)."""
    clip = _orient_ccw(np.asarray(clip, dtype=np.float64))
    output = [tuple(p) for p in np.asarray(subject, dtype=np.float64)]
    n = len(clip)
    for k in range(n):
        if not output:
            break
        ax, ay = clip[k]
        bx, by = clip[(k + 1) % n]

        def side(p, ax=ax, ay=ay, bx=bx, by=by):  # > 0: left of a->b, i.e. inside a ccw polygon
            return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)

        points, output = output, []
        for i, current in enumerate(points):
            previous = points[i - 1]
            s_cur, s_prev = side(current), side(previous)
            if s_cur >= 0:
                if s_prev < 0:
                    t = s_prev / (s_prev - s_cur)
                    output.append((previous[0] + t * (current[0] - previous[0]),
                                   previous[1] + t * (current[1] - previous[1])))
                output.append(current)
            elif s_prev >= 0:
                t = s_prev / (s_prev - s_cur)
                output.append((previous[0] + t * (current[0] - previous[0]),
                               previous[1] + t * (current[1] - previous[1])))
    if len(output) < 3:
        return np.zeros((0, 2), dtype=np.float64)
    return np.ascontiguousarray(output, dtype=np.float64)


def common_polygon(quads):
    """Intersection of convex polygons (each (k,2)); empty (0,2) array when they do not overlap."""
    polygon = _orient_ccw(np.asarray(quads[0], dtype=np.float64))
    for quad in quads[1:]:
        polygon = clip_convex(polygon, quad)
        if len(polygon) == 0 or abs(_signed_area(polygon)) < 1e-9:
            return np.zeros((0, 2), dtype=np.float64)
    return polygon


def _x_interval(polygon, y):
    """[left, right] of a convex polygon along the horizontal line y (vectorised over y)."""
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    y = np.asarray(y, dtype=np.float64)[:, None]
    y0, y1 = a[:, 1][None, :], b[:, 1][None, :]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    crosses = (y >= lo) & (y <= hi) & (hi > lo)
    t = np.where(hi > lo, (y - y0) / np.where(y1 != y0, y1 - y0, 1.0), 0.0)
    x = a[:, 0][None, :] + t * (b[:, 0] - a[:, 0])[None, :]
    # horizontal edges lying on the line contribute both their end points
    flat = (y0 == y1) & (y == y0)
    xs_min = np.where(crosses, x, np.inf)
    xs_max = np.where(crosses, x, -np.inf)
    flat_min = np.where(flat, np.minimum(a[:, 0], b[:, 0])[None, :], np.inf)
    flat_max = np.where(flat, np.maximum(a[:, 0], b[:, 0])[None, :], -np.inf)
    return np.minimum(xs_min.min(axis=1), flat_min.min(axis=1)), np.maximum(xs_max.max(axis=1), flat_max.max(axis=1))


def max_inscribed_rect(polygon, margin=1e-6):
    """Largest axis-aligned rectangle of integer pixel centres inside a convex polygon.

    Returns (x, y, width, height) in reference pixels, or None when no pixel centre fits. Exact on the
    pixel grid: for a convex polygon the left boundary x = L(y) is convex and the right R(y) concave, so a
    rectangle spanning rows y0..y1 fits exactly when its columns lie in [max(L(y0), L(y1)),
    min(R(y0), R(y1))]; all row pairs are tried. `margin` pulls the boundary in against rounding.
    """
    polygon = np.asarray(polygon, dtype=np.float64)
    if len(polygon) < 3:
        return None
    ys = np.arange(math.ceil(polygon[:, 1].min() + margin), math.floor(polygon[:, 1].max() - margin) + 1)
    if len(ys) == 0:
        return None
    left, right = _x_interval(polygon, ys)
    left = np.ceil(left + margin)
    right = np.floor(right - margin)
    best = (0, None)
    for i in range(len(ys)):
        # row pairs (i, j >= i): width from the two end rows only (convexity)
        width = np.minimum(right[i], right[i:]) - np.maximum(left[i], left[i:]) + 1
        area = np.where(width > 0, width * (np.arange(len(ys) - i) + 1), 0)
        j = int(np.argmax(area))
        if area[j] > best[0]:
            x0 = int(max(left[i], left[i + j]))
            best = (float(area[j]), (x0, int(ys[i]), int(width[j]), j + 1))
    return best[1]


def crop_for(matrices_and_sizes, reference_size, margin=1e-6):
    """Common polygon and crop rectangle for images given as (matrix, width, height) in the reference frame.

    The reference frame itself (reference_size = (width, height)) bounds the output.
    """
    rw, rh = reference_size
    quads = [image_quad(np.eye(3), rw, rh)]
    quads += [image_quad(m, w, h) for m, w, h in matrices_and_sizes]
    polygon = common_polygon(quads)
    rect = max_inscribed_rect(polygon, margin) if len(polygon) else None
    return polygon, rect
