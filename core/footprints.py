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


def gsd_cm(height_m, focal_px):
    """Ground sampling distance in cm per pixel: height above the ground * pixel pitch / focal length,
    i.e. height / focal when the focal is in pixels."""
    return 100.0 * float(height_m) / float(focal_px)


def _inside(ring, px, py):
    """Even-odd point-in-polygon of the points (px, py) (same shape) in a closed-or-open ring (N, 2)."""
    x1, y1 = ring[:, 0], ring[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    inside = np.zeros(px.shape, dtype=bool)
    for a, b, c, d in zip(x1, y1, x2, y2):
        if b == d:
            continue  # a horizontal edge crosses no horizontal ray
        crosses = (b > py) != (d > py)
        inside ^= crosses & (px < a + (py - b) * (c - a) / (d - b))
    return inside


def coverage_grid(rings, cells=240):
    """Count of footprints covering each cell centre: (counts (ny, nx) int, (xmin, xmax, ymin, ymax)).

    `rings`: polygons (N, >=2) in metric x/y; the grid has `cells` cells along the longer side of
    their joint extent. (None, None) without a usable polygon."""
    rings = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings if r is not None and len(r) >= 3]
    if not rings:
        return None, None
    allxy = np.vstack(rings)
    xmin, ymin = allxy.min(axis=0)
    xmax, ymax = allxy.max(axis=0)
    step = max(xmax - xmin, ymax - ymin, 1e-9) / cells
    xs = xmin + step * (np.arange(max(1, round((xmax - xmin) / step))) + 0.5)
    ys = ymin + step * (np.arange(max(1, round((ymax - ymin) / step))) + 0.5)
    counts = np.zeros((len(ys), len(xs)), dtype=np.int32)
    for ring in rings:  # test only the cells in the polygon's bounding box
        (rx0, ry0), (rx1, ry1) = ring.min(axis=0), ring.max(axis=0)
        i0, i1 = np.searchsorted(xs, rx0), np.searchsorted(xs, rx1, side="right")
        j0, j1 = np.searchsorted(ys, ry0), np.searchsorted(ys, ry1, side="right")
        if i1 <= i0 or j1 <= j0:
            continue
        gx, gy = np.meshgrid(xs[i0:i1], ys[j0:j1])
        counts[j0:j1, i0:i1] += _inside(ring, gx, gy)
    return counts, (xmin, xs[-1] + step / 2, ymin, ys[-1] + step / 2)


OVERLAP_GOOD_PHOTOS = 5  # Pix4D's overlap figure: ground seen by 5 or more photos is green


def flight_area(centres_xy):
    """Convex hull (M, 2) of the camera positions: the ground under the flight lines; None for fewer than
    three positions or positions on one line (a single strip has no area between its lines)."""
    xy = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3:
        return None
    origin = xy.mean(axis=0)
    hull = cv2.convexHull((xy - origin).astype(np.float32)).reshape(-1, 2).astype(np.float64) + origin
    if len(hull) < 3 or polygon_area(hull) < 1e-6 * max(np.ptp(xy, axis=0).max(), 1e-9) ** 2:
        return None
    return hull


def coverage_stats(rings, cells=400, inner=None):
    """Area covered (union of the footprints), photos per ground point over it (median), the share of it
    seen by fewer than OVERLAP_GOOD_PHOTOS photos, and (given `inner`, e.g. flight_area) the median over
    the part inside that polygon: the block's outer edges are thinly covered in any survey.
    `rings` in metres; None values without any."""
    counts, extent = coverage_grid(rings, cells)
    none = {"area_covered_m2": None, "overlap_median": None, "area_below_5_photos_percent": None,
            "overlap_median_flight_area": None}
    if counts is None or not (counts > 0).any():
        return none
    ny, nx = counts.shape
    cell_area = (extent[1] - extent[0]) / nx * (extent[3] - extent[2]) / ny
    seen = counts[counts > 0]
    inside_median = None
    if inner is not None:
        xs = extent[0] + (extent[1] - extent[0]) * (np.arange(nx) + 0.5) / nx
        ys = extent[2] + (extent[3] - extent[2]) * (np.arange(ny) + 0.5) / ny
        gx, gy = np.meshgrid(xs, ys)
        inside = _inside(np.asarray(inner, dtype=np.float64)[:, :2], gx, gy) & (counts > 0)
        inside_median = float(np.median(counts[inside])) if inside.any() else None
    return {"area_covered_m2": float(len(seen) * cell_area), "overlap_median": float(np.median(seen)),
            "area_below_5_photos_percent": float(100.0 * np.mean(seen < OVERLAP_GOOD_PHOTOS)),
            "overlap_median_flight_area": inside_median}
