"""Image stack registration: align every image of a folder to a reference image, pixel for pixel.

Stages per image: SIFT on a pyramid level + ratio test + robust fit of the chosen model (MAGSAC by
default; fitted into the coarser view under zoom) -> ECC refinement coarse to fine (on gradient magnitude
for exposure brackets), kept only when it improves both NCC and SSIM -> for a strong change of viewpoint
(affine or homography model), SIFT on simulated oblique views of the moving image (ASIFT's tilts),
confirmed by re-matching the image rectified by that estimate -> phase correlation as the
translation fallback -> chaining through an already aligned neighbour when the direct pair does not
match -> degeneracy and quality checks (MSE, NCC, SSIM before/after). Then the exact common-area crop
(core.stack_crop) and the outputs: aligned images in the input's format and bit depth (EXIF kept for
JPEG, georeferencing for GeoTIFF) and transforms.json (see DESIGN.md, `alignkit:alignstack`).

Every matrix maps pixel coordinates of an image (x right, y down, origin at the centre of the top-left
pixel) to the reference image's pixel coordinates.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from . import image_quality, stack_crop, workspace
from .cancel import check

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".pgm", ".ppm", ".bmp")


@dataclass
class StackConfig:
    model: str = "homography"  # translation | euclidean | similarity | affine | homography
    reference: str = ""  # file name of the reference; empty: the middle image by sorted name
    crop: bool = True  # crop every output to the largest rectangle common to all aligned images
    feature_max_side: int = 1024  # long side of the pyramid level SIFT runs on (speed; ECC restores precision)
    max_features: int = 20000  # SIFT keypoints per image (a cap for speed); all of them help (boat 4: 0.90 -> 0.81 px)
    lowe_ratio: float = 0.8  # Lowe's ratio test threshold (0.8 as in his paper)
    robust_method: str = "magsac"  # "magsac" (cv2.USAC_MAGSAC) or "ransac" (cv2.RANSAC); bench compares them
    ransac_threshold_px: float = 2.0  # inlier threshold in feature-level pixels
    ransac_confidence: float = 0.9999  # robust-fit confidence: more iterations are cheap next to SIFT
    min_inliers: int = 20  # fewer verified matches: no consistent match (chain or reject)
    min_inlier_ratio: float = 0.15  # inliers / ratio-test matches below this: the match is chance
    ecc: bool = True  # refine the feature estimate with ECC on an image pyramid
    ecc_max_side: int = 1024  # long side of the finest ECC level (full-res ECC costs ~4x per halving)
    ecc_min_side: int = 200  # coarsest ECC level; smaller levels lose the structure
    ecc_iterations: int = 30  # per level; from a good start ECC converges in ~10-20, more is wasted on noise
    ecc_epsilon: float = 1e-5  # stop when the parameter update is below this
    ecc_blur: int = 5  # Gaussian kernel ECC smooths with at coarse levels (wider basin)
    ecc_blur_finest: int = 1  # ... and at the finest level (sharper optimum; measured on Oxford)
    ecc_robust_rounds: int = 2  # finest-level ECC re-solves on the best-agreeing part (Oxford graf: 0.9 -> 0.4 px)
    ecc_keep_fraction: float = 0.5  # share of the overlap (highest local NCC) those rounds keep
    ecc_input: str = "auto"  # "intensity", "gradient" or "auto" (gradient when exposures differ)
    exposure_ratio: float = 1.4  # median-brightness ratio above which two frames count as an exposure bracket
    affine_views: bool = True  # no consistent match: retry on simulated oblique views of the moving image (ASIFT)
    max_ecc_shift_px: float = 8.0  # ECC may move a corner this far (finest-level px) from the feature estimate
    chain_below_overlap: float = 0.3  # direct overlap (share of the image) below this: go through a neighbour
    max_scale: float = 4.0  # zoom beyond this factor (or below its inverse) is degenerate
    max_anisotropy: float = 8.0  # ratio of singular values of the linear part above this: a collapse
    already_aligned_px: float = 0.5  # corners moving less than this: the frame is already aligned
    bracket_settle_px: float = 3.0  # exposure frames whose estimate stays this close to identity ...
    min_gradient_gain: float = 0.01  # ... and gains less gradient correlation than this stay in place
    phase_min_response: float = 0.1  # phase-correlation peak strength needed for the translation fallback
    metrics_max_side: int = 1024  # long side at which MSE / NCC / SSIM are measured (speed)
    jpeg_quality: int = 95  # quality of re-encoded JPEG outputs
    seed: int = 42  # RNG seed (USAC sampling, translation voting)


class StackError(ValueError):
    """Bad stack input (missing folder, one image, unreadable reference ...): the message says which file."""


# ---------------------------------------------------------------------------------------------- images

def list_stack_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise StackError(f"input folder does not exist: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _gdal_open(gdal, path):
    """A GDAL dataset or None, whether or not another module turned on GDAL exceptions."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # our caller's error names the file once
    try:
        return gdal.Open(os.fspath(path))
    except RuntimeError:
        return None
    finally:
        gdal.PopErrorHandler()


def read_image(path):
    """Pixels as stored (no EXIF rotation), any depth/channels; GDAL for what OpenCV cannot read."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        try:
            from osgeo import gdal

            dataset = _gdal_open(gdal, path)
            if dataset is not None:
                bands = [dataset.GetRasterBand(i + 1).ReadAsArray() for i in range(min(dataset.RasterCount, 3))]
                image = bands[0] if len(bands) == 1 else np.dstack(bands[::-1])  # BGR like OpenCV
        except ImportError:
            pass
    if image is None:
        raise StackError(f"cannot read image: {path}")
    return image


def _data_range(image):
    return 65535.0 if image.dtype == np.uint16 else (1.0 if image.dtype.kind == "f" else 255.0)


def to_gray(image):
    """float32 grey in 0..255 whatever the depth and channel count."""
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if channels >= 3 else image[:, :, 0]
    gray = image.astype(np.float32)
    if image.dtype != np.uint8:
        gray *= np.float32(255.0 / _data_range(image))
    return gray


def level_matrix(size_from, size_to):
    """Maps pixel-centre coordinates of an image of size_from (w, h) onto its resize to size_to."""
    sx, sy = size_to[0] / size_from[0], size_to[1] / size_from[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def resize_to(image, max_side):
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(w, h))
    if scale >= 1.0:
        return image, np.eye(3)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), level_matrix((w, h), size)


def gradient_magnitude(gray):
    """Exposure-robust structure image: gradient magnitude normalised by the local brightness."""
    blurred = cv2.GaussianBlur(gray, (0, 0), 1.0)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    local = cv2.GaussianBlur(blurred, (0, 0), 8.0) + 8.0  # gain-invariant; +8 keeps dark noise down
    return cv2.magnitude(gx, gy) / local


# -------------------------------------------------------------------------------------------- features

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


# ------------------------------------------------------------------------------------------- checks

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


# --------------------------------------------------------------------------------------------- ECC

_ECC_MOTION = {"translation": cv2.MOTION_TRANSLATION, "euclidean": cv2.MOTION_EUCLIDEAN,
               "similarity": cv2.MOTION_AFFINE, "affine": cv2.MOTION_AFFINE,
               "homography": cv2.MOTION_HOMOGRAPHY}


def _ecc_levels(moving, reference, max_side, min_side):
    """(moving level, reference level, S_moving, S_reference) finest first."""
    levels = []
    scale = min(1.0, max_side / max(max(moving.shape[:2]), max(reference.shape[:2])))
    while True:
        pair = []
        for image in (moving, reference):
            h, w = image.shape[:2]
            size = (max(8, round(w * scale)), max(8, round(h * scale)))
            resized = image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            pair.append((resized, level_matrix((w, h), size)))
        levels.append((pair[0][0], pair[1][0], pair[0][1], pair[1][1]))
        scale /= 2
        if max(moving.shape[:2]) * scale < min_side or len(levels) >= 5:
            break
    return levels


def _project_similarity(matrix, width, height):
    """Closest similarity (least squares on a grid of points) to an affine matrix."""
    grid = np.stack(np.meshgrid(np.linspace(0, width - 1, 5), np.linspace(0, height - 1, 5)), -1).reshape(-1, 2)
    target = _apply(matrix, grid)
    fitted, _ = cv2.estimateAffinePartial2D(grid.astype(np.float32), target.astype(np.float32), method=cv2.LMEDS)
    return np.vstack([fitted, [0, 0, 1]]).astype(np.float64)


def ecc_refine(moving, reference, initial, model, config, is_canceled=None, robust=True):
    """ECC coarse to fine from `initial` (moving -> reference, full-res coords).

    The moving image is ECC's template, so its pixels are where the error is measured and the
    reference is the image sampled: ECC's warp then maps moving -> reference, our convention.
    Returns (matrix, correlation at the finest level) or (None, reason).
    """
    motion = _ECC_MOTION[model]
    levels = _ecc_levels(moving, reference, config.ecc_max_side, config.ecc_min_side)
    matrix = initial.copy()
    rho = None
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, config.ecc_iterations, config.ecc_epsilon)
    for index, (moving_l, reference_l, s_mov, s_ref) in reversed(list(enumerate(levels))):
        blur = config.ecc_blur_finest if index == 0 else config.ecc_blur
        check(is_canceled)
        warp = s_ref @ matrix @ np.linalg.inv(s_mov)
        warp = warp / warp[2, 2]
        start = warp.copy()
        warp32 = warp.astype(np.float32) if motion == cv2.MOTION_HOMOGRAPHY else warp[:2].astype(np.float32)
        try:
            rho, warp32 = cv2.findTransformECC(moving_l, reference_l, warp32, motion, criteria, None, blur)
        except cv2.error as error:
            return None, f"ECC did not converge ({str(error).splitlines()[-1].strip()[:80]})"
        warp = warp32.astype(np.float64) if warp32.shape == (3, 3) else np.vstack([warp32, [0, 0, 1]])
        if overlap_shift(warp, start, moving_l.shape, reference_l.shape) > config.max_ecc_shift_px:
            return None, "ECC drifted away from the feature estimate"
        matrix = np.linalg.inv(s_ref) @ warp @ s_mov
        matrix /= matrix[2, 2]
    # robust rounds at the finest level: regions that do not follow the model (moving water, parallax,
    # depth of field) pull ECC's least squares away; keep the better-correlated half and solve again
    moving_l, reference_l, s_mov, s_ref = levels[0]
    for _ in range(config.ecc_robust_rounds if robust else 0):
        check(is_canceled)
        warp = s_ref @ matrix @ np.linalg.inv(s_mov)
        warp /= warp[2, 2]
        mask = _agreement_mask(moving_l, reference_l, warp, config.ecc_keep_fraction)
        if mask is None:
            break
        warp32 = warp.astype(np.float32) if motion == cv2.MOTION_HOMOGRAPHY else warp[:2].astype(np.float32)
        try:
            rho_r, warp32 = cv2.findTransformECC(moving_l, reference_l, warp32, motion, criteria, mask,
                                                 config.ecc_blur_finest)
        except cv2.error:
            break
        refined = warp32.astype(np.float64) if warp32.shape == (3, 3) else np.vstack([warp32, [0, 0, 1]])
        if overlap_shift(refined, warp, moving_l.shape, reference_l.shape) > config.max_ecc_shift_px:
            break
        matrix = np.linalg.inv(s_ref) @ refined @ s_mov
        matrix /= matrix[2, 2]
        rho = rho_r
    if model == "similarity":
        matrix = _project_similarity(matrix, moving.shape[1], moving.shape[0])
    return matrix, float(rho)


def _agreement_mask(moving, reference, warp, keep_fraction, window=31):
    """uint8 mask in the reference frame of where the moving image locally agrees best with the
    warped reference (local NCC above the (1 - keep_fraction) quantile); None if too little is left."""
    h, w = moving.shape[:2]
    warped, valid = warp_with_mask(reference, np.linalg.inv(warp), w, h)
    a, b = moving.astype(np.float32), warped.astype(np.float32)

    def box(x):
        return cv2.boxFilter(x, -1, (window, window))

    mean_a, mean_b = box(a), box(b)
    var_a, var_b = box(a * a) - mean_a ** 2, box(b * b) - mean_b ** 2
    local = (box(a * b) - mean_a * mean_b) / np.sqrt(np.maximum(var_a * var_b, 1e-6))
    if valid.sum() < 1000:
        return None
    values = local[valid][:: max(1, int(valid.sum()) // 200000)]  # a quantile needs no million samples
    good = ((local > np.quantile(values, 1.0 - keep_fraction)) & valid).astype(np.uint8)
    return cv2.warpPerspective(good, warp, (reference.shape[1], reference.shape[0]), flags=cv2.INTER_NEAREST)


def warped_correlation(moving, reference, matrix, max_side=None):
    """NCC of the moving image warped by `matrix` against the reference on their common area."""
    if max_side:
        moving, s_mov = resize_to(moving, max_side)
        reference, s_ref = resize_to(reference, max_side)
        matrix = s_ref @ matrix @ np.linalg.inv(s_mov)
    warped, mask = warp_with_mask(moving, matrix, reference.shape[1], reference.shape[0])
    return image_quality.ncc(warped, reference, mask)


def _fine_scores(moving, reference, matrix, max_side):
    """(NCC, SSIM) of the moving image warped by `matrix` against the reference on their common area."""
    moving, s_mov = resize_to(moving, max_side)
    reference, s_ref = resize_to(reference, max_side)
    warped, mask = warp_with_mask(moving, s_ref @ matrix @ np.linalg.inv(s_mov), reference.shape[1],
                                  reference.shape[0])
    return image_quality.ncc(warped, reference, mask), image_quality.ssim(warped, reference, mask)


def _centre_scale(matrix, width, height):
    """Linear zoom of `matrix` at the image centre (reference pixels per moving pixel)."""
    jacobian = _jacobian(matrix, ((width - 1) / 2.0, (height - 1) / 2.0))
    return math.sqrt(abs(float(np.linalg.det(jacobian))))


def warp_with_mask(image, matrix, width, height, interpolation=cv2.INTER_LINEAR):
    warped = cv2.warpPerspective(image, matrix, (width, height), flags=interpolation,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ones = np.ones(image.shape[:2], np.uint8)
    mask = cv2.warpPerspective(ones, matrix, (width, height), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # pixels whose bilinear footprint leaves the image are not valid
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    return warped, mask


def phase_translation(moving, reference, config):
    """Translation moving -> reference by phase correlation (fallback for featureless stacks)."""
    h = min(moving.shape[0], reference.shape[0])
    w = min(moving.shape[1], reference.shape[1])
    a, s_a = resize_to(np.ascontiguousarray(moving[:h, :w]), config.ecc_max_side)
    b, _ = resize_to(np.ascontiguousarray(reference[:h, :w]), config.ecc_max_side)
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32), window)
    if response < config.phase_min_response:
        return None, response
    scale = 1.0 / s_a[0, 0]
    return np.array([[1, 0, dx * scale], [0, 1, dy * scale], [0, 0, 1]], dtype=np.float64), response


# -------------------------------------------------------------------------------------------- pairs

@dataclass
class PairResult:
    matrix: np.ndarray | None  # moving -> reference, full-res; None when no estimate
    reason: str | None  # why there is no estimate
    matches: int = 0
    inliers: int = 0
    method: str = ""  # "features", "oblique-view features", "...+ecc(intensity|gradient)", "phase_correlation"
    ecc_correlation: float | None = None


def _needs_gradient(moving, reference, config):
    if config.ecc_input == "gradient":
        return True
    if config.ecc_input == "intensity":
        return False
    # a median of every 4th pixel in each direction is as telling and 16x cheaper
    m1, m2 = float(np.median(moving[::4, ::4])) + 1.0, float(np.median(reference[::4, ::4])) + 1.0
    return max(m1 / m2, m2 / m1) > config.exposure_ratio


def _feature_estimate(moving, moving_features, reference_features, config, rng, iterations=10000):
    """Ratio-test matches and a robust fit of config.model: (matrix or None, inliers, matches)."""
    matches = ratio_matches(moving_features, reference_features, config.lowe_ratio)
    src = moving_features.points[matches[:, 0]]
    dst = reference_features.points[matches[:, 1]]
    # threshold given in feature-level pixels; the fit is in full-res pixels
    level_scale = max(moving.shape[:2]) / min(max(moving.shape[:2]), config.feature_max_side)
    matrix, inliers = fit_model(src, dst, config.model, config.ransac_threshold_px * level_scale, config, rng,
                                iterations)
    if matrix is not None and _centre_scale(matrix, moving.shape[1], moving.shape[0]) > 1.0:
        # the moving image is the coarser view (zoomed out): a threshold in reference pixels there is
        # too tight for its matches and drops good ones (boat 5: 265 -> 430 inliers), so fit from the
        # reference into the moving image and measure the errors in the coarser one
        reverse, reverse_inliers = fit_model(dst, src, config.model, config.ransac_threshold_px * level_scale,
                                             config, rng, iterations)
        if reverse is not None:
            matrix, inliers = np.linalg.inv(reverse), reverse_inliers
            matrix /= matrix[2, 2]
    return matrix, int(inliers.sum()), len(matches)


def _consistent(matrix, n_inliers, n_matches, config):
    return matrix is not None and n_inliers >= config.min_inliers and n_inliers >= config.min_inlier_ratio * n_matches


def _oblique_estimate(moving, reference, reference_features, config, rng, is_canceled=None):
    """ASIFT-style estimate for a strong change of viewpoint: (matrix or None, inliers, matches, reason).

    Among ~40,000 simulated-view features chance consensus reaches 40-50 inliers (an unrelated
    pair too), so the estimate must prove itself: rectified by it, the moving image must match the
    reference directly, by the same rules as any pair (graf 6: 240 of 470; unrelated: 0 of 11).
    The re-match also refines it."""
    simulated = detect_affine_views(moving, config, is_canceled)
    tilted, n_in, n_matches = _feature_estimate(moving, simulated, reference_features, config, rng,
                                                AFFINE_RANSAC_ITERATIONS)
    if tilted is None:
        return None, n_in, n_matches, f"no estimate from simulated oblique views ({n_matches} matches)"
    why = degeneracy(tilted, moving.shape[1], moving.shape[0], config, OBLIQUE_MAX_ANISOTROPY)
    if why:
        return None, n_in, n_matches, f"simulated oblique views ({n_in} of {n_matches}): {why}"
    h, w = reference.shape[:2]
    rectified, _ = warp_with_mask(moving, tilted, w, h)
    rectified_features, _ = detect(rectified, config)
    residual, r_in, r_matches = _feature_estimate(rectified, rectified_features, reference_features, config, rng)
    if not _consistent(residual, r_in, r_matches, config):
        return None, r_in, r_matches, (f"simulated oblique views ({n_in} of {n_matches}) not confirmed "
                                       f"after rectifying ({r_in} of {r_matches})")
    matrix = residual @ tilted
    return matrix / matrix[2, 2], r_in, r_matches, None


def align_pair(moving, reference, moving_features, reference_features, config, rng, is_canceled=None):
    """Estimate moving -> reference (grey float32 images) for config.model."""
    matrix, n_in, n_matches = _feature_estimate(moving, moving_features, reference_features, config, rng)
    method = "features"
    if not _consistent(matrix, n_in, n_matches, config):
        reason = f"no consistent matches ({n_in} inliers of {n_matches})"
        matrix = None
        if config.affine_views and config.model in ("affine", "homography"):  # a strong change of viewpoint?
            oblique, o_in, o_matches, why = _oblique_estimate(moving, reference, reference_features, config, rng,
                                                              is_canceled)
            if oblique is not None:
                matrix, n_in, n_matches, method = oblique, o_in, o_matches, "oblique-view features"
            else:
                reason += f"; {why}"
    result = PairResult(None, None, matches=n_matches, inliers=n_in, method=method)
    if matrix is None:
        result.reason = reason
        if config.model == "translation":
            shift, response = phase_translation(moving, reference, config)
            if shift is not None:
                return PairResult(shift, None, n_matches, n_in, "phase_correlation")
            result.reason += f"; phase correlation too weak ({response:.2f})"
        return result
    stretch = _stretch_bound(method)
    why = degeneracy(matrix, moving.shape[1], moving.shape[0], config, stretch)
    if why:
        result.reason = why
        return result
    result.matrix = matrix
    if not config.ecc:
        return result
    if _needs_gradient(moving, reference, config):
        return _refine_exposure(moving, reference, result, config, is_canceled)
    refined, info = ecc_refine(moving, reference, matrix, config.model, config, is_canceled)
    if refined is None or degeneracy(refined, moving.shape[1], moving.shape[0], config, stretch):
        return result  # features alone
    # ECC maximises the overall correlation; keep it only when the fine local structure (SSIM) agrees.
    # Where moving water, people or depth pull ECC off, NCC still rises a little but SSIM falls
    # (Oxford boat 2-4: ECC 0.07-0.7 px further off than the features, SSIM -0.001 to -0.03; graf 2-4: ECC
    # 0.7-3.6 px better, SSIM +0.013 to +0.10)
    before = _fine_scores(moving, reference, matrix, config.ecc_max_side)
    after = _fine_scores(moving, reference, refined, config.ecc_max_side)
    if after[0] > before[0] and after[1] > before[1]:
        result.matrix = refined
        result.method = f"{method}+ecc(intensity)"
        result.ecc_correlation = info
    return result


def _refine_exposure(moving, reference, result, config, is_canceled):
    """ECC for frames of different exposure, on gradient magnitude, simplest model first.

    Saturated or black regions leave little structure, and a full homography then fits noise (a tripod
    frame came out scaled by 0.99). So: a translation by ECC first (from the feature estimate's shift at
    the image centre), and the chosen model only when it correlates clearly better than that translation.
    """
    gradient_moving, gradient_reference = gradient_magnitude(moving), gradient_magnitude(reference)
    h, w = moving.shape[:2]
    centre = np.array([[(w - 1) / 2.0, (h - 1) / 2.0]])
    shift = _apply(result.matrix, centre)[0] - centre[0]
    start = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]], dtype=np.float64)
    candidates = [(result.matrix, result.method)]
    translation, _ = ecc_refine(gradient_moving, gradient_reference, start, "translation", config, is_canceled,
                                robust=False)
    if translation is not None:
        candidates.append((translation, "translation+ecc(gradient)"))
    if config.model != "translation":
        full, _ = ecc_refine(gradient_moving, gradient_reference, result.matrix, config.model, config, is_canceled,
                             robust=False)
        if full is not None and not degeneracy(full, w, h, config, _stretch_bound(result.method)):
            candidates.append((full, f"{result.method}+ecc(gradient)"))
    scores = [warped_correlation(gradient_moving, gradient_reference, m, config.ecc_max_side) for m, _ in candidates]
    best = int(np.argmax(scores))
    if translation is not None and best != 1 and scores[best] < scores[1] + config.min_gradient_gain:
        best = 1  # the richer model must earn its extra parameters
    result.matrix, result.method = candidates[best]
    result.ecc_correlation = round(float(scores[best]), 5)
    return result


# ---------------------------------------------------------------------------------------------- stack

def _metrics(moving, reference, matrix, config, data_range=255.0):
    moving_s, s_mov = resize_to(moving, config.metrics_max_side)
    reference_s, s_ref = resize_to(reference, config.metrics_max_side)
    warp = s_ref @ matrix @ np.linalg.inv(s_mov)
    warped, mask = warp_with_mask(moving_s, warp, reference_s.shape[1], reference_s.shape[0])
    if mask.sum() < 100:
        return None
    return image_quality.compare(warped, reference_s, mask, data_range)


def align_stack(input_folder, output_folder, config=None, images=None, progress=None, is_canceled=None):
    """Align a folder (or an explicit list `images`) of images to a reference; write outputs.

    Returns the transforms document (also written to output_folder/transforms.json).
    """
    config = config or StackConfig()
    progress = progress or (lambda fraction, message: None)
    if config.model not in MODELS:
        raise StackError(f"unknown model {config.model!r}; use one of {', '.join(MODELS)}")
    input_folder = Path(input_folder)
    paths = [Path(p) for p in images] if images is not None else list_stack_images(input_folder)
    if len(paths) == 0:
        raise StackError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {input_folder}")
    if len(paths) == 1:
        raise StackError(f"a stack needs at least two images; {input_folder} holds only {paths[0].name}")
    output_folder = Path(output_folder)
    for p in paths:
        if output_folder.resolve() == p.parent.resolve():
            raise StackError(f"the output folder is the input folder ({output_folder}); the input is never written to")
    names = [p.name for p in paths]
    if config.reference:
        if config.reference not in names:
            raise StackError(f"reference {config.reference!r} is not an image of {input_folder}")
        ref_index = names.index(config.reference)
    else:
        ref_index = (len(paths) - 1) // 2
    timings = {}
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    cv2.setRNGSeed(config.seed)

    grays, features, read_errors = {}, {}, {}
    for k, path in enumerate(paths):
        check(is_canceled)
        progress(0.3 * k / len(paths), f"reading and detecting features: {path.name}")
        try:
            grays[k] = to_gray(read_image(path))  # the original is read again when written: less memory
        except StackError as error:
            if k == ref_index:
                raise
            read_errors[k] = str(error)
            continue
        features[k], _ = detect(grays[k], config)
    timings["features_s"] = time.perf_counter() - t0

    reference = grays[ref_index]
    ref_h, ref_w = reference.shape[:2]
    results = {ref_index: PairResult(np.eye(3), None, method="reference")}
    chains = {}
    # nearest to the reference first, so a frame that fails directly can chain through a neighbour
    order = sorted((k for k in range(len(paths)) if k != ref_index), key=lambda k: (abs(k - ref_index), k))
    for n_done, k in enumerate(order):
        check(is_canceled)
        progress(0.3 + 0.5 * n_done / len(order), f"aligning {names[k]}")
        if k in read_errors:
            results[k] = PairResult(None, read_errors[k])
            continue
        result = align_pair(grays[k], reference, features[k], features[ref_index], config, rng, is_canceled)
        if result.matrix is None or overlap_fraction(result.matrix, grays[k].shape, reference.shape) < config.chain_below_overlap:
            result = _try_chain(k, ref_index, results, grays, features, config, rng, is_canceled, chains) or result
        results[k] = result
    timings["align_s"] = time.perf_counter() - t0 - timings["features_s"]

    entries = []
    accepted = []
    for k, name in enumerate(names):
        result = results[k]
        if k == ref_index:
            entries.append({"image": name, "status": "reference", "reason": None,
                            "matrix": np.eye(3).tolist(), "metrics": None})
            continue
        entry = {"image": name, "status": "rejected", "reason": result.reason, "matrix": None, "metrics": None,
                 "method": result.method or None, "matches": result.matches, "inliers": result.inliers,
                 "via": names[chains[k]] if k in chains else None}
        if result.matrix is not None:
            h, w = grays[k].shape[:2]
            before = _metrics(grays[k], reference, np.eye(3), config)  # as taken, laid on top of each other
            after = _metrics(grays[k], reference, result.matrix, config)
            entry["metrics"] = {"before": before, "after": after}
            same_size = (w, h) == (ref_w, ref_h)
            shift = overlap_shift(result.matrix, np.eye(3), (h, w), (ref_h, ref_w)) if same_size else math.inf
            exposure = _needs_gradient(grays[k], reference, config)
            if exposure and before is not None:
                # raw intensities of two exposures disagree: judge on the exposure-invariant image
                gradient_k, gradient_ref = gradient_magnitude(grays[k]), gradient_magnitude(reference)
                gain = (warped_correlation(gradient_k, gradient_ref, result.matrix, config.metrics_max_side)
                        - warped_correlation(gradient_k, gradient_ref, np.eye(3), config.metrics_max_side))
            if after is None:
                entry["reason"] = "no common area with the reference"
            elif shift <= config.already_aligned_px:
                entry.update(status="aligned", reason=None, already_aligned=True)
            elif exposure and before is not None and shift <= config.bracket_settle_px and gain < config.min_gradient_gain:
                # a (tripod) bracket frame whose estimate moves it little and explains nothing more than
                # leaving it in place: report it as already aligned instead of warping it by noise
                result.matrix = np.eye(3)
                entry["metrics"]["after"] = before
                entry.update(status="aligned", reason=None, already_aligned=True,
                             note=f"estimate within {shift:.2f} px of identity did not improve the gradient "
                                  f"correlation ({gain:+.4f}): kept in place")
            elif exposure and before is not None and not gain > 0:
                entry["reason"] = f"alignment does not improve the gradient correlation of this exposure ({gain:+.4f})"
            elif not exposure and before is not None and not after["ncc"] > before["ncc"]:
                entry["reason"] = f"alignment does not improve NCC ({before['ncc']:.3f} -> {after['ncc']:.3f})"
            else:
                entry.update(status="aligned", reason=None)
            entry["matrix"] = result.matrix.tolist()  # full precision: perspective terms are ~1e-6
            if entry["status"] == "aligned":
                accepted.append(k)
            else:
                entry["rejected_matrix"] = entry.pop("matrix")
                entry["matrix"] = None
        entries.append(entry)

    polygon, rect = stack_crop.crop_for(
        [(results[k].matrix, grays[k].shape[1], grays[k].shape[0]) for k in accepted], (ref_w, ref_h))
    if config.crop:
        if rect is None:
            raise StackError("the aligned images have no common area to crop to")
        crop = {"x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3]}
    else:
        crop = {"x": 0, "y": 0, "width": ref_w, "height": ref_h}
    document = {"reference": names[ref_index], "model": config.model, "crop": crop,
                "common_area": np.round(polygon, 6).tolist(), "images": entries}

    progress(0.85, "writing aligned images")
    output_folder.mkdir(parents=True, exist_ok=True)
    georef = _georeference(paths[ref_index])
    for k in [ref_index] + accepted:
        check(is_canceled)
        image = read_image(paths[k])
        warped = image if k == ref_index else cv2.warpPerspective(
            image, results[k].matrix, (ref_w, ref_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        warped = warped[crop["y"]:crop["y"] + crop["height"], crop["x"]:crop["x"] + crop["width"]]
        _write_output(paths[k], output_folder / names[k], warped, georef, crop, config)
    timings["total_s"] = time.perf_counter() - t0
    document["timings"] = {key: round(v, 3) for key, v in timings.items()}
    document["config"] = asdict(config)
    workspace.write_json(output_folder / "transforms.json", document)
    progress(1.0, f"{len(accepted)} of {len(paths) - 1} images aligned to {names[ref_index]}")
    return document


def _try_chain(k, ref_index, results, grays, features, config, rng, is_canceled, chains):
    """Align k to an already aligned neighbour between it and the reference, then compose."""
    step = 1 if k < ref_index else -1
    for j in range(k + step, ref_index, step):
        if results.get(j) is None or results[j].matrix is None:
            continue
        link = align_pair(grays[k], grays[j], features[k], features[j], config, rng, is_canceled)
        if link.matrix is None:
            continue
        composed = results[j].matrix @ link.matrix
        composed /= composed[2, 2]
        if degeneracy(composed, grays[k].shape[1], grays[k].shape[0], config,
                      _stretch_bound(link.method) or _stretch_bound(results[j].method)):
            continue
        link.matrix = composed
        link.method = "chained+" + link.method
        chains[k] = j
        return link
    return None


# ------------------------------------------------------------------------------------------- outputs

def _georeference(path):
    """(geotransform, projection WKT) of a georeferenced raster, else None."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        from osgeo import gdal
    except ImportError:
        return None
    dataset = _gdal_open(gdal, path)
    if dataset is None:
        return None
    transform, projection = dataset.GetGeoTransform(can_return_null=True), dataset.GetProjection()
    if transform is None or not projection:
        return None
    return tuple(transform), projection


def _write_output(source, target, image, georef, crop, config):
    suffix = target.suffix.lower()
    if georef is not None and suffix in (".tif", ".tiff"):
        workspace.atomic_output(target, lambda tmp: _write_geotiff(tmp, image, georef, crop))
        return
    if suffix in (".jpg", ".jpeg"):
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        if not ok:
            raise StackError(f"cannot encode {target}")
        data = _with_app1(encoded.tobytes(), source)

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(data)
        workspace.atomic_output(target, write)
        return

    def write(tmp):
        if not cv2.imwrite(tmp, image):
            raise StackError(f"cannot write {target}")
    workspace.atomic_output(target, write)


def _with_app1(jpeg, source):
    """Insert the source JPEG's APP1 segments (EXIF, XMP) after the new JPEG's SOI marker."""
    try:
        data = Path(source).read_bytes()
    except OSError:
        return jpeg
    if data[:2] != b"\xff\xd8":
        return jpeg
    segments, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: no more metadata
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE1:
            segments.append(data[i:i + 2 + length])
        i += 2 + length
    if not segments:
        return jpeg
    # the encoder's own APP0 (JFIF) stays first; EXIF readers accept APP1 after it
    insert_at = 2
    if jpeg[2:4] == b"\xff\xe0":
        insert_at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:insert_at] + b"".join(segments) + jpeg[insert_at:]


def _write_geotiff(tmp, image, georef, crop):
    from osgeo import gdal

    transform, projection = georef
    x0, y0 = crop["x"], crop["y"]
    # GDAL's geotransform addresses pixel corners; a whole-pixel crop offset shifts it exactly
    shifted = (transform[0] + x0 * transform[1] + y0 * transform[2], transform[1], transform[2],
               transform[3] + x0 * transform[4] + y0 * transform[5], transform[4], transform[5])
    bands = [image] if image.ndim == 2 else [image[:, :, i] for i in range(image.shape[2])]
    if image.ndim == 3 and image.shape[2] >= 3:
        bands = [image[:, :, 2], image[:, :, 1], image[:, :, 0]] + bands[3:]  # OpenCV BGR -> RGB bands
    gdal_type = {np.uint8: gdal.GDT_Byte, np.uint16: gdal.GDT_UInt16, np.int16: gdal.GDT_Int16,
                 np.float32: gdal.GDT_Float32}.get(image.dtype.type, gdal.GDT_Float64)
    dataset = gdal.GetDriverByName("GTiff").Create(tmp, image.shape[1], image.shape[0], len(bands), gdal_type)
    dataset.SetGeoTransform(shifted)
    dataset.SetProjection(projection)
    for i, band in enumerate(bands):
        dataset.GetRasterBand(i + 1).WriteArray(band)
    dataset.FlushCache()
    dataset = None
