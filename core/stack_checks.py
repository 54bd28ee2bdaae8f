"""Image stack geometry checks: degeneracy of a transform, overlap, and distances between two estimates."""
from __future__ import annotations

import math

import cv2
import numpy as np

from . import stack_crop
from .stack_features import _apply


def degeneracy(matrix, width, height, config, max_anisotropy=None, support=None, reference_size=None):
    """Why `matrix` (image of width x height -> reference) is not a plausible alignment, or None when it is.

    Degenerate means geometry, not size: the image is mirrored, folds over, maps through the horizon,
    collapses toward a line (anisotropy) or a point (conditioning), or the matches that carry it are too
    few or too thinly spread. A large but consistent scale is a valid answer: a 7x zoom with hundreds of
    verified inliers aligns (issue 13). max_anisotropy: bound on the local stretch (default
    config.max_anisotropy); support: (moving xy, reference xy) of the inliers, checked when given;
    reference_size: (w, h), for the spread of the support over the common area."""
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
    edges = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    if edges.min() <= 0 or not _is_convex(quad):
        return "degenerate transform: the image quadrilateral folds over"
    jac = [_jacobian(matrix, p) for p in quad_source(width, height)]
    if min(float(np.linalg.det(j)) for j in jac) <= 0:
        return "degenerate transform: mirror image at a corner (orientation not preserved)"
    singular = np.linalg.svd(linear, compute_uv=False)
    # local anisotropy at the four corners of a homography, not only at the origin
    ratios = [np.divide(*np.linalg.svd(j, compute_uv=False)) for j in jac] + [singular[0] / singular[1]]
    if max(ratios) > (max_anisotropy or config.max_anisotropy):
        return f"degenerate transform: collapse (anisotropy {max(ratios):.3g})"
    condition = normalised_condition(matrix, width, height)
    if condition > config.max_condition:
        return (f"degenerate transform: ill-conditioned (condition number {condition:.3g} in normalised "
                f"coordinates; the image collapses toward a point or blows up)")
    if support is not None:
        n = len(support[0])
        if n < config.min_inliers:
            return f"too little support: {n} inliers (at least {config.min_inliers})"
        spread = support_spread(matrix, support, (width, height), reference_size)
        if spread < config.min_support_spread:
            return (f"too little support: the inliers span {100 * spread:.1f} % of the common area "
                    f"(at least {100 * config.min_support_spread:.0f} %)")
    return None


def normalised_condition(matrix, width, height):
    """Condition number of the homography in coordinates normalised to the image ([-1, 1] on its long side,
    as Hartley normalises): ~zoom factor for a zoom, huge when the image collapses toward a point."""
    s = 2.0 / max(width, height)
    t = np.array([[s, 0, -s * (width - 1) / 2.0], [0, s, -s * (height - 1) / 2.0], [0, 0, 1]])
    normalised = t @ np.asarray(matrix, dtype=np.float64) @ np.linalg.inv(t)
    singular = np.linalg.svd(normalised / normalised[2, 2], compute_uv=False)
    return float(singular[0] / max(singular[-1], 1e-300))


def support_spread(matrix, support, moving_size, reference_size=None):
    """Share of the common area the inliers' convex hull covers, the smaller of the two images' shares
    (moving image: the part of it that lands in the reference; reference: the part the moving image
    covers). A zoom keeps it high in both; a chance fit to a cluster of matches does not."""
    src, dst = (np.asarray(a, dtype=np.float64) for a in support)
    if len(src) < 3:
        return 0.0
    w, h = moving_size
    quad = stack_crop.image_quad(matrix, w, h)
    if reference_size is None:
        common = quad
    else:
        common = stack_crop.common_polygon([quad, stack_crop.image_quad(np.eye(3), *reference_size)])
        if len(common) < 3:
            return 0.0
    area_reference = abs(stack_crop._signed_area(common))
    area_moving = abs(stack_crop._signed_area(_apply(np.linalg.inv(matrix), common)))
    shares = []
    for points, area in ((src, area_moving), (dst, area_reference)):
        hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        shares.append(abs(stack_crop._signed_area(hull)) / max(area, 1e-9) if len(hull) >= 3 else 0.0)
    return float(min(1.0, *shares))


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

