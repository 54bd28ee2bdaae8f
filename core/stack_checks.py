"""Image stack geometry checks: degeneracy of a transform, overlap, and distances between two estimates."""
from __future__ import annotations

import math

import numpy as np

from . import stack_crop
from .stack_features import _apply


def degeneracy(matrix, width, height, config, max_anisotropy=None):
    """Why `matrix` (image -> reference) is not a plausible alignment, or None when it is.
    max_anisotropy: bound on the local stretch (default config.max_anisotropy)."""
    if matrix is None or not np.all(np.isfinite(matrix)):
        return "no transform"
    linear = matrix[:2, :2] / matrix[2, 2]
    det = float(np.linalg.det(linear))
    if det <= 0:
        return f"degenerate transform: mirror image or collapse (determinant {det:.3g})"
    try:
        quad = stack_crop.image_quad(matrix, width, height)
    except ValueError:
        return "degenerate transform: the image maps through the horizon"
    area = abs(float(np.cross(quad[2] - quad[0], quad[3] - quad[1]))) / 2.0
    scale = math.sqrt(area / max(1.0, (width - 1) * (height - 1)))
    if not (1.0 / config.max_scale <= scale <= config.max_scale):
        return f"degenerate transform: extreme scale {scale:.3g}"
    edges = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    if edges.min() <= 0 or not _is_convex(quad):
        return "degenerate transform: the image quadrilateral folds over"
    singular = np.linalg.svd(linear, compute_uv=False)
    # local anisotropy at the four corners of a homography, not only at the origin
    jac = [_jacobian(matrix, p) for p in quad_source(width, height)]
    ratios = [np.divide(*np.linalg.svd(j, compute_uv=False)) for j in jac] + [singular[0] / singular[1]]
    if max(ratios) > (max_anisotropy or config.max_anisotropy):
        return f"degenerate transform: collapse (anisotropy {max(ratios):.3g})"
    return None


def quad_source(width, height):
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)


def _jacobian(matrix, p):
    x, y = p
    h = matrix
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    return np.array([[h[0, 0] - u * h[2, 0], h[0, 1] - u * h[2, 1]],
                     [h[1, 0] - v * h[2, 0], h[1, 1] - v * h[2, 1]]]) / w


def _is_convex(quad):
    d1 = np.roll(quad, -1, axis=0) - quad
    d2 = np.roll(d1, -1, axis=0)
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    return bool(np.all(cross > 0) or np.all(cross < 0))


def overlap_fraction(matrix, moving_shape, reference_shape):
    """Share of the moving image's area that lands inside the reference frame."""
    h, w = moving_shape[:2]
    rh, rw = reference_shape[:2]
    try:
        quad = stack_crop.image_quad(matrix, w, h)
    except ValueError:
        return 0.0
    common = stack_crop.common_polygon([quad, stack_crop.image_quad(np.eye(3), rw, rh)])
    if len(common) == 0:
        return 0.0
    return abs(stack_crop._signed_area(common)) / abs(stack_crop._signed_area(quad))


def corner_shift(a, b, width, height):
    """Largest distance between the image corners mapped by matrices a and b."""
    corners = quad_source(width, height)
    return float(np.linalg.norm(_apply(a, corners) - _apply(b, corners), axis=1).max())


def overlap_shift(a, b, moving_shape, reference_shape, samples=9):
    """Largest distance between points of the moving image mapped by a and by b, over the part of the
    moving image that b maps inside the reference (corners far outside it are pure extrapolation)."""
    h, w = moving_shape[:2]
    rh, rw = reference_shape[:2]
    grid = np.stack(np.meshgrid(np.linspace(0, w - 1, samples), np.linspace(0, h - 1, samples)), -1).reshape(-1, 2)
    mapped_b = _apply(b, grid)
    inside = (mapped_b[:, 0] >= 0) & (mapped_b[:, 0] <= rw - 1) & (mapped_b[:, 1] >= 0) & (mapped_b[:, 1] <= rh - 1)
    if inside.sum() < 4:
        inside[:] = True
    return float(np.linalg.norm(_apply(a, grid[inside]) - mapped_b[inside], axis=1).max())



def _centre_scale(matrix, width, height):
    """Linear zoom of `matrix` at the image centre (reference pixels per moving pixel)."""
    jacobian = _jacobian(matrix, ((width - 1) / 2.0, (height - 1) / 2.0))
    return math.sqrt(abs(float(np.linalg.det(jacobian))))

