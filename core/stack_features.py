"""Image stack features: SIFT on a pyramid level, SIFT on simulated oblique views (ASIFT), Lowe's ratio
test and the robust fit of each motion model. Coordinates are full-resolution pixel centres."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .cancel import check
from .stack_io import level_matrix, resize_to

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")



@dataclass
class Features:
    points: np.ndarray  # (N,2) float64 full-resolution pixel-centre xy
    descriptors: np.ndarray  # (N,128) float32


def detect(gray, config):
    level, to_level = resize_to(gray, config.feature_max_side)
    sift = cv2.SIFT_create(nfeatures=config.max_features)
    keypoints, descriptors = sift.detectAndCompute(np.clip(level, 0, 255).astype(np.uint8), None)
    if descriptors is None:
        return Features(np.zeros((0, 2)), np.zeros((0, 128), np.float32)), to_level
    # OpenCV's SIFT keypoints sit +0.25 px off the pixel-centre convention (DESIGN.md, Traps)
    xy = np.array([k.pt for k in keypoints], dtype=np.float64) - 0.25
    full = _apply(np.linalg.inv(to_level), xy)
    return Features(np.ascontiguousarray(full), descriptors), to_level


# Simulated camera tilts (t = 1 / cos of the view angle) and their rotation steps, as ASIFT samples
# them (Morel & Yu 2009): views up to ~70 deg off the image's own axis. Oxford graf 5 / 6 (50-60 deg):
# ~280 / ~66 inliers of ~1,700 / ~1,500 matches where plain SIFT finds 8-10 of ~220.
AFFINE_TILTS = (2**0.5, 2.0, 2 * 2**0.5)
AFFINE_ROTATION_STEP_DEG = 72.0  # divided by the tilt: denser rotations for stronger tilts
AFFINE_VIEW_FEATURES = 4000  # SIFT keypoints per simulated view (16 views)
# With ~4 % inliers (graf 6) 10,000 USAC samples find the homography about half the time; 100,000
# cost ~0.02 s more.
AFFINE_RANSAC_ITERATIONS = 100_000
# A 60 deg view stretches its far corner ~19x (graf 6): beyond the collapse bound of an ordinary pair,
# which an oblique estimate may pass since it must be confirmed by re-matching the rectified image.
OBLIQUE_MAX_ANISOTROPY = 32.0


def _stretch_bound(method):
    """The anisotropy bound for an estimate made by `method` (None: the config's)."""
    return OBLIQUE_MAX_ANISOTROPY if "oblique-view" in (method or "") else None


def affine_views(shape):
    """(tilt, rotation 3x3 image -> rotated view, rotated size (w, h), squeezed size) of every simulated
    oblique view: the image rotated by phi, then squeezed along x by the tilt. Pixel-centre coordinates."""
    h, w = shape[:2]
    for tilt in AFFINE_TILTS:
        for phi in np.arange(0.0, 180.0, AFFINE_ROTATION_STEP_DEG / tilt):
            c, s = np.cos(np.radians(phi)), np.sin(np.radians(phi))
            rot = np.array([[c, -s], [s, c]])
            corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64) @ rot.T
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            rotate = np.vstack([np.c_[rot, -lo], [0.0, 0.0, 1.0]])
            wide = (int(np.ceil(hi[0] - lo[0])) + 1, int(np.ceil(hi[1] - lo[1])) + 1)
            yield tilt, rotate, wide, (max(1, round(wide[0] / tilt)), wide[1])


def detect_affine_views(gray, config, is_canceled=None):
    """SIFT on simulated oblique views of `gray` (affine_views), keypoints mapped back to full resolution."""
    level, to_level = resize_to(gray, config.feature_max_side)
    level = np.clip(level, 0, 255).astype(np.uint8)
    sift = cv2.SIFT_create(nfeatures=AFFINE_VIEW_FEATURES)
    points, descriptors = [], []
    for tilt, rotate, wide, size in affine_views(level.shape):
        check(is_canceled)  # 16 views of ~0.2 s each
        view = cv2.warpAffine(level, rotate[:2], wide, flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.full_like(level, 255), rotate[:2], wide, flags=cv2.INTER_NEAREST)
        # anti-aliasing along x before squeezing it by the tilt (ASIFT's 0.8 sqrt(t^2 - 1))
        view = cv2.GaussianBlur(view, (0, 0), sigmaX=0.8 * np.sqrt(tilt**2 - 1), sigmaY=0.01)
        view = cv2.resize(view, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.erode(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST), np.ones((5, 5), np.uint8))
        keypoints, des = sift.detectAndCompute(view, mask)
        if des is None:
            continue
        xy = np.array([k.pt for k in keypoints], dtype=np.float64) - 0.25  # OpenCV's SIFT offset (Traps)
        to_view = level_matrix(wide, size) @ rotate @ to_level
        points.append(_apply(np.linalg.inv(to_view), xy))
        descriptors.append(des)
    if not points:
        return Features(np.zeros((0, 2)), np.zeros((0, 128), np.float32))
    return Features(np.ascontiguousarray(np.concatenate(points)), np.concatenate(descriptors))


def _apply(matrix, xy):
    xy = np.asarray(xy, dtype=np.float64)
    h = np.c_[xy, np.ones(len(xy))] @ np.asarray(matrix, dtype=np.float64).T
    return h[:, :2] / h[:, 2:3]


def ratio_matches(a, b, ratio):
    """Index pairs (i in a, j in b) passing Lowe's ratio test, mutual-best not required."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return np.zeros((0, 2), np.int64)
    # FLANN kd-trees: ~4x faster than brute force on 8000 x 8000 descriptors; seeded via cv2.setRNGSeed
    matcher = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    pairs = []
    for m in matcher.knnMatch(a.descriptors, b.descriptors, k=2):
        if len(m) == 2 and m[0].distance < ratio * m[1].distance:
            pairs.append((m[0].queryIdx, m[0].trainIdx))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def fit_model(src, dst, model, threshold, config, rng, iterations=10000):
    """Robust fit of `model` mapping src -> dst (full-res coords); returns (3x3 matrix or None, inlier mask)."""
    n = len(src)
    if n < 4:
        return None, np.zeros(n, bool)
    method = cv2.USAC_MAGSAC if config.robust_method == "magsac" else cv2.RANSAC
    src32, dst32 = src.astype(np.float32), dst.astype(np.float32)
    if model == "homography":
        matrix, mask = cv2.findHomography(src32, dst32, method, threshold, maxIters=iterations,
                                          confidence=config.ransac_confidence)
    elif model == "affine":
        matrix, mask = cv2.estimateAffine2D(src32, dst32, method=method, ransacReprojThreshold=threshold,
                                            maxIters=iterations, confidence=config.ransac_confidence)
    elif model in ("similarity", "euclidean"):
        # no USAC variant for the 4-dof model in OpenCV: plain RANSAC, then refit on inliers
        matrix, mask = cv2.estimateAffinePartial2D(src32, dst32, method=cv2.RANSAC,
                                                   ransacReprojThreshold=threshold, maxIters=iterations,
                                                   confidence=config.ransac_confidence)
    elif model == "translation":
        return _fit_translation(src, dst, threshold, rng)
    else:
        raise ValueError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")
    if matrix is None:
        return None, np.zeros(n, bool)
    inliers = mask.ravel().astype(bool)
    if matrix.shape == (2, 3):
        matrix = np.vstack([matrix, [0, 0, 1]])
    matrix = matrix.astype(np.float64)
    if model == "euclidean":
        matrix = _fit_euclidean(src[inliers], dst[inliers])
    return matrix / matrix[2, 2], inliers


def _fit_translation(src, dst, threshold, rng):
    """Vote on the displacement of each match (sampled), keep the one most matches agree with."""
    shifts = dst - src
    candidates = shifts[rng.choice(len(shifts), size=min(300, len(shifts)), replace=False)]
    votes = (np.linalg.norm(shifts[None, :, :] - candidates[:, None, :], axis=2) < threshold).sum(axis=1)
    best = candidates[int(np.argmax(votes))]
    inliers = np.linalg.norm(shifts - best, axis=1) < threshold
    t = shifts[inliers].mean(axis=0)
    return np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1]], dtype=np.float64), inliers


def _fit_euclidean(src, dst):
    """Least-squares rotation + translation (Kabsch in 2-D)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - mu_s).T @ (dst - mu_d))
    rotation = (u @ vt).T
    if np.linalg.det(rotation) < 0:
        vt[-1] *= -1
        rotation = (u @ vt).T
    matrix = np.eye(3)
    matrix[:2, :2] = rotation
    matrix[:2, 2] = mu_d - rotation @ mu_s
    return matrix

