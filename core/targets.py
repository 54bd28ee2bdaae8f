"""Finding survey targets near a predicted pixel, at sub-pixel precision.

Two kinds of target:
- a 2x2 black/white checker: its centre is a saddle of the image intensity. The strongest saddle
  (most negative Hessian determinant at the target's scale) near the prediction is refined with
  OpenCV's cornerSubPix (the point where the gradients around it are orthogonal to the offsets) and
  then verified: intensities on two circles around it must be four alternating sectors (most of
  their variance in the second angular harmonic, with the same phase on both circles, and real
  contrast). Textured ground without a target fails this check; that is what keeps it from
  inventing targets.
- an ArUco marker (OpenCV's cv2.aruco, 4x4 dictionary): the detector gives its identity and its four
  corners (refined to sub-pixel); the target point is the marker's centre, where its diagonals
  cross (exact under perspective for a locally planar ground).

Pixel convention: the centre of pixel (col j, row i) is (j, i), as OpenCV's corner functions use.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from .synthetic_targets import aruco_dictionary

MIN_CONTRAST = 100.0  # grey levels between a checker's dark and light sectors (printed targets: 150-220)
MIN_HARMONIC_SHARE = 0.8  # share of the circle profile's variance in the 2nd harmonic (ideal square wave: 0.81;
#   measured on rendered targets 0.87-0.91, on textured ground 95 % below 0.72)
MAX_SECTOR_IMBALANCE = 0.25  # the two light (and the two dark) sectors differ by less than this share of the contrast
MAX_PHASE_DIFF_DEG = 20.0  # the two circles' sector directions agree to this
ARUCO_UPSCALE = 2  # markers of a few pixels per cell decode more reliably upsampled


@dataclass
class Detection:
    x: float  # pixel column (centre of the top-left pixel = 0)
    y: float
    kind: str  # "checker" or "aruco"
    score: float  # checker: 2nd-harmonic share; aruco: 1.0
    marker_id: int = None  # ArUco identity
    contrast: float = 0.0  # grey levels (checker)


def _grey(image):
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image


def _crop(grey, cx, cy, radius):
    h, w = grey.shape
    x0, y0 = max(0, int(round(cx - radius))), max(0, int(round(cy - radius)))
    x1, y1 = min(w, int(round(cx + radius)) + 1), min(h, int(round(cy + radius)) + 1)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None, 0, 0
    return grey[y0:y1, x0:x1], x0, y0


def _circle_profile(img, x, y, r, n=48):
    t = np.arange(n) * (2 * np.pi / n)
    mx = (x + r * np.cos(t)).astype(np.float32).reshape(1, -1)
    my = (y + r * np.sin(t)).astype(np.float32).reshape(1, -1)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).ravel().astype(np.float64), t


def _sector_check(img, x, y, size_px):
    """(2nd-harmonic share, contrast, ok) of the intensity around (x, y) on two circles."""
    shares, phases, contrasts, balanced = [], [], [], []
    for r in (0.22 * size_px, 0.32 * size_px):
        p, t = _circle_profile(img, x, y, max(r, 2.0))
        p = p - p.mean()
        var = float(np.mean(p * p))
        c2 = np.mean(p * np.exp(-2j * t))
        share = 2.0 * abs(c2) ** 2 / var if var > 0 else 0.0
        shares.append(share)
        phases.append(np.angle(c2))
        contrast = np.pi * abs(c2)  # a square wave of peak-to-peak A has |c2| = A / pi
        contrasts.append(contrast)
        # The four sectors one by one (central 60 degrees of each): two alike light, two alike dark.
        phi = -np.angle(c2) / 2.0
        rel = np.mod(t - phi + np.pi / 4, 2 * np.pi)  # sector k covers rel in [k pi/2, (k+1) pi/2)
        sector = (rel // (np.pi / 2)).astype(int)
        central = np.abs(np.mod(rel, np.pi / 2) - np.pi / 4) <= np.pi / 6
        means = [p[(sector == k) & central].mean() for k in range(4)]
        light, dark = (means[0], means[2]), (means[1], means[3])
        balanced.append(abs(light[0] - light[1]) < MAX_SECTOR_IMBALANCE * contrast
                        and abs(dark[0] - dark[1]) < MAX_SECTOR_IMBALANCE * contrast
                        and min(light) - max(dark) > 0.5 * contrast
                        # point symmetry about the centre: the profile repeats after half a turn
                        and np.mean(np.abs(p - np.roll(p, len(p) // 2))) < MAX_SECTOR_IMBALANCE * contrast)
    dphase = np.degrees(abs(np.angle(np.exp(1j * (phases[0] - phases[1]))))) / 2.0
    share, contrast = min(shares), min(contrasts)
    ok = (share >= MIN_HARMONIC_SHARE and contrast >= MIN_CONTRAST and dphase <= MAX_PHASE_DIFF_DEG
          and all(balanced))
    return share, contrast, ok


def find_checker(image, predicted_xy, size_px, search_radius_px=20.0):
    """The 2x2 checker centre nearest in strength to the prediction, or None. size_px: the target's side."""
    grey = _grey(image)
    cx, cy = predicted_xy
    crop, x0, y0 = _crop(grey, cx, cy, search_radius_px + size_px)
    if crop is None:
        return None
    img = crop.astype(np.float32)
    sigma = max(1.0, size_px / 8.0)
    smooth = cv2.GaussianBlur(img, (0, 0), sigma)
    ixx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
    iyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
    ixy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3)
    saddle = -(ixx * iyy - ixy * ixy)
    yy, xx = np.mgrid[0:crop.shape[0], 0:crop.shape[1]]
    near = (xx + x0 - cx) ** 2 + (yy + y0 - cy) ** 2 <= search_radius_px ** 2
    saddle = np.where(near, saddle, -np.inf)
    # Try the strongest few local maxima: a stronger saddle on the ground texture must not hide the target.
    dil = cv2.dilate(np.where(np.isfinite(saddle), saddle, -1e30).astype(np.float32), np.ones((5, 5), np.uint8))
    peaks = np.argwhere((saddle >= dil) & (saddle > 0))
    if not len(peaks):
        return None
    order = np.argsort(-saddle[peaks[:, 0], peaks[:, 1]])[:5]
    win = max(2, int(round(size_px / 5.0)))
    best = None
    for py, px in peaks[order]:
        pt = np.array([[[float(px), float(py)]]], np.float32)
        cv2.cornerSubPix(img, pt, (win, win), (-1, -1),
                         (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-3))
        x, y = float(pt[0, 0, 0]), float(pt[0, 0, 1])
        if abs(x - px) > win or abs(y - py) > win:
            continue
        share, contrast, ok = _sector_check(img, x, y, size_px)
        if ok and (best is None or share > best.score):
            best = Detection(x + x0, y + y0, "checker", float(share), None, float(contrast))
    return best


def find_aruco(image, predicted_xy, size_px, search_radius_px=20.0, marker_id=None):
    """The ArUco marker centre near the prediction (the given identity, if any), or None."""
    grey = _grey(image)
    cx, cy = predicted_xy
    crop, x0, y0 = _crop(grey, cx, cy, search_radius_px + size_px)
    if crop is None:
        return None
    s = ARUCO_UPSCALE
    big = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    params.cornerRefinementWinSize = max(3, int(round(size_px * s / 10.0)))
    corners, ids, _ = cv2.aruco.ArucoDetector(aruco_dictionary(), params).detectMarkers(big)
    if ids is None:
        return None
    best = None
    for quad, mid in zip(corners, ids.ravel()):
        if marker_id is not None and int(mid) != int(marker_id):
            continue
        q = (quad.reshape(4, 2).astype(np.float64) + 0.5) / s - 0.5  # cv2.resize maps pixel centres so
        centre = _diagonal_crossing(q)
        if centre is None:
            continue
        x, y = centre[0] + x0, centre[1] + y0
        d = np.hypot(x - cx, y - cy)
        if d <= search_radius_px and (best is None or d < np.hypot(best.x - cx, best.y - cy)):
            best = Detection(float(x), float(y), "aruco", 1.0, int(mid))
    return best


def _diagonal_crossing(q):
    p, r = q[0], q[2] - q[0]
    s0, s = q[1], q[3] - q[1]
    den = r[0] * s[1] - r[1] * s[0]
    if abs(den) < 1e-9:
        return None
    t = ((s0[0] - p[0]) * s[1] - (s0[1] - p[1]) * s[0]) / den
    return p + t * r


def find_target(image, predicted_xy, size_px, kind="auto", search_radius_px=20.0, marker_id=None):
    """A target near predicted_xy: kind "checker", "aruco", or "auto" (ArUco first: it has an identity)."""
    if kind in ("aruco", "auto"):
        det = find_aruco(image, predicted_xy, size_px, search_radius_px, marker_id)
        if det is not None or kind == "aruco":
            return det
    if kind in ("checker", "auto"):
        return find_checker(image, predicted_xy, size_px, search_radius_px)
    raise ValueError(f"unknown target kind {kind!r} (checker, aruco or auto)")


def locate(image_paths, predictions, size_px, kind="auto", search_radius_px=20.0, refine_radius_px=None):
    """Find targets in photos: predictions [(key, image index, x, y[, kind])] -> {key: Detection or None}.
    Each photo is read once (the marking dialog's "find" and the batch both go through here).

    refine_radius_px: when predictions are poor (a GPS-placed block can be metres off), search widely
    first, then take each photo's median offset between predictions and detections (most targets in a
    photo share it) and search again within refine_radius_px of the shifted predictions: a wide window
    no longer lets a neighbouring target stand in for the one predicted.
    """
    by_image = {}
    for item in predictions:
        key, i, x, y = item[:4]
        by_image.setdefault(i, []).append((key, x, y, item[4] if len(item) > 4 else kind))
    out = {}
    for i, items in sorted(by_image.items()):
        img = cv2.imread(str(image_paths[i]), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{image_paths[i]}: cannot read the image")
        first = {key: find_target(img, (x, y), size_px, k, search_radius_px) for key, x, y, k in items}
        if refine_radius_px is None:
            out.update(first)
            continue
        shifts = np.array([(first[key].x - x, first[key].y - y) for key, x, y, _ in items if first[key] is not None])
        if not len(shifts):
            out.update(first)
            continue
        dx, dy = np.median(shifts, axis=0)
        for key, x, y, k in items:
            out[key] = find_target(img, (x + dx, y + dy), size_px, k, refine_radius_px)
    return out
