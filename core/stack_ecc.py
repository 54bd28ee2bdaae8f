"""Image stack intensity refinement: ECC coarse to fine (with robust rounds on the best-agreeing part),
correlation of warped images, and phase correlation as the translation fallback."""
from __future__ import annotations

import cv2
import numpy as np

from . import image_quality
from .cancel import check
from .stack_checks import overlap_shift
from .stack_features import _apply
from .stack_io import level_matrix, resize_to

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


def support_mask(points, shape, radius):
    """uint8 mask (reference frame) of the discs of `radius` px around `points`: where the matched
    features are, i.e. the dominant plane's support, without the regions that follow another motion."""
    mask = np.zeros(shape[:2], np.uint8)
    for x, y in np.round(points).astype(np.int64):
        cv2.circle(mask, (int(x), int(y)), int(radius), 1, -1)
    return mask


def _level_mask(mask, size):
    if mask is None:
        return None
    return cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


def ecc_refine(moving, reference, initial, model, config, is_canceled=None, robust=True, mask=None):
    """ECC coarse to fine from `initial` (moving -> reference, full-res coords).

    The moving image is ECC's template, so its pixels are where the error is measured and the
    reference is the image sampled: ECC's warp then maps moving -> reference, our convention.
    mask: uint8 (reference frame, full resolution) of where ECC may look (None: everywhere).
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
            rho, warp32 = cv2.findTransformECC(moving_l, reference_l, warp32, motion, criteria,
                                               _level_mask(mask, reference_l.shape[1::-1]), blur)
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
        agree = _agreement_mask(moving_l, reference_l, warp, config.ecc_keep_fraction)
        if agree is None:
            break
        if mask is not None:
            agree &= _level_mask(mask, reference_l.shape[1::-1])
        warp32 = warp.astype(np.float32) if motion == cv2.MOTION_HOMOGRAPHY else warp[:2].astype(np.float32)
        try:
            rho_r, warp32 = cv2.findTransformECC(moving_l, reference_l, warp32, motion, criteria, agree,
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

