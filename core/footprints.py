"""Ground footprints: where the border of a photo lands on a horizontal plane.

Used twice: before matching (predicted from the EXIF/XMP priors, core/priors.py) and after
bundle adjustment (from the refined poses, core/export.py). Conventions as in the interfaces:
world = local ENU metres, x_cam = R @ (X - C), OpenCV camera axes, pixel centres at integers.
"""
import cv2
import numpy as np


def image_border(width, height, samples_per_edge=8):
    """(4 * samples_per_edge, 2) pixel points around the image's outer edge, clockwise from the top-left.

    The outer edge of the pixel grid is at -0.5 and width - 0.5 (pixel centres are integers), so
    the footprint covers whole pixels.
    """
    n = max(int(samples_per_edge), 1)
    t = np.arange(n) / n
    left, top, right, bottom = -0.5, -0.5, width - 0.5, height - 0.5
    edges = [
        np.column_stack([left + t * (right - left), np.full(n, top)]),
        np.column_stack([np.full(n, right), top + t * (bottom - top)]),
        np.column_stack([right - t * (right - left), np.full(n, bottom)]),
        np.column_stack([np.full(n, left), bottom - t * (bottom - top)]),
    ]
    return np.ascontiguousarray(np.vstack(edges), dtype=np.float64)


def pixel_rays(K, R, pixels, dist=None):
    """Unit-free world directions (N, 3) of the rays through `pixels` (N, 2), distortion removed."""
    pts = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
    coeffs = None
    if dist is not None and any(float(d) != 0.0 for d in dist):
        k = [float(d) for d in dist] + [0.0] * (2 - len(dist))
        coeffs = np.array([k[0], k[1], 0.0, 0.0], dtype=np.float64)  # radial k1, k2; no tangential
    normalized = cv2.undistortPoints(pts, np.asarray(K, dtype=np.float64), coeffs).reshape(-1, 2)
    cam = np.column_stack([normalized, np.ones(len(normalized))])
    return cam @ np.asarray(R, dtype=np.float64)  # R.T @ d for each row


def ground_footprint(K, R, C, ground_z, width, height, dist=None, samples_per_edge=8):
    """(M, 3) ENU polygon where the image border's rays meet the plane z = ground_z; None if a ray misses.

    A ray misses when it does not go down toward the plane (camera tilted above the horizon, or the
    plane above the camera).
    """
    C = np.asarray(C, dtype=np.float64).reshape(3)
    rays = pixel_rays(K, R, image_border(width, height, samples_per_edge), dist)
    depth = float(ground_z) - C[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = depth / rays[:, 2]
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        return None
    points = C + t[:, None] * rays
    points[:, 2] = float(ground_z)
    return np.ascontiguousarray(points)


def polygon_area(xy):
    """Area of a simple polygon (N, 2) by the shoelace formula, in the units of xy squared."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
