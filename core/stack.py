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

Parts: core.stack_io (read, write), core.stack_features (SIFT, ASIFT views, robust fits), core.stack_checks
(degeneracy, overlap), core.stack_ecc (ECC, phase correlation), core.stack_crop (common area); fusion of
the aligned frames is its own stage, core.fusion.

Every matrix maps pixel coordinates of an image (x right, y down, origin at the centre of the top-left
pixel) to the reference image's pixel coordinates.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from . import fusion, image_quality, stack_crop, workspace
from .cancel import check
from .stack_checks import (
    _apply,
    _centre_scale,
    corner_shift,
    degeneracy,
    overlap_fraction,
    overlap_shift,
    quad_source,
)
from .stack_ecc import (
    _fine_scores,
    ecc_refine,
    phase_translation,
    support_mask,
    warp_with_mask,
    warped_correlation,
)
from .stack_features import (
    AFFINE_RANSAC_ITERATIONS,
    MODELS,
    OBLIQUE_MAX_ANISOTROPY,
    Features,
    _stretch_bound,
    detect,
    detect_affine_views,
    fit_model,
    ratio_matches,
)
from .stack_io import (
    IMAGE_EXTENSIONS,
    StackError,
    _georeference,
    earlier_outputs,
    gradient_magnitude,
    level_matrix,
    list_stack_images,
    read_image,
    remove_earlier_outputs,
    resize_to,
    to_gray,
    write_output,
)

# the public face of the stack stage (its parts live in the stack_* modules)
__all__ = [
    "MODELS", "IMAGE_EXTENSIONS", "StackConfig", "StackError", "PairResult", "Features", "align_stack", "align_pair",
    "list_stack_images", "read_image", "to_gray", "resize_to", "level_matrix", "detect", "detect_affine_views", "ratio_matches",
    "fit_model", "degeneracy", "quad_source", "overlap_fraction", "overlap_shift", "corner_shift", "ecc_refine",
    "warp_with_mask", "warped_correlation", "phase_translation",
]


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
    ecc_support_radius: float = 0.05  # whole-frame ECC off the features' plane: retry within this share of the
    # long side of a feature inlier (0: no retry). Not first: on Oxford graf 4 (70 inliers) it costs 0.8 px
    refine_cost_margin: float = 0.1  # ECC may raise the feature matches' truncated cost by this share (sub-pixel: NCC / SSIM judge)
    chain_below_overlap: float = 0.3  # direct overlap (share of the image) below this: go through a neighbour
    max_condition: float = 200.0  # normalised homography's condition number above this: collapses to a point
    min_support_spread: float = 0.03  # inliers' convex hull below this share of the common area: support too thin
    max_anisotropy: float = 8.0  # ratio of singular values of the linear part above this: a collapse
    already_aligned_px: float = 0.5  # corners moving less than this: the frame is already aligned
    bracket_settle_px: float = 3.0  # exposure frames whose estimate stays this close to identity ...
    min_gradient_gain: float = 0.01  # ... and gains less gradient correlation than this stay in place
    phase_min_response: float = 0.1  # phase-correlation peak strength needed for the translation fallback
    metrics_max_side: int = 1024  # long side at which MSE / NCC / SSIM are measured (speed)
    jpeg_quality: int = 95  # quality of re-encoded JPEG outputs
    fuse: str = "none"  # none | focus | exposure: also fuse the aligned, cropped frames into one image (core.fusion)
    seed: int = 42  # RNG seed (USAC sampling, translation voting)


# -------------------------------------------------------------------------------------------- pairs

@dataclass
class Support:
    """The feature evidence behind a pair's estimate, full-res pixel centres (not written out)."""
    src: np.ndarray  # (N,2) moving xy of every ratio-test match
    dst: np.ndarray  # (N,2) reference xy
    inliers: np.ndarray  # (N,) bool: verified by the robust fit
    threshold: float  # the robust fit's inlier threshold, reference px

    def inlier_pairs(self):
        return self.src[self.inliers], self.dst[self.inliers]

    def carried(self, to_reference):
        """The same matches with their reference side taken on by `to_reference` (a chain's link)."""
        return Support(self.src, _apply(to_reference, self.dst), self.inliers, self.threshold)


@dataclass
class PairResult:
    matrix: np.ndarray | None  # moving -> reference, full-res; None when no estimate
    reason: str | None  # why there is no estimate
    matches: int = 0
    inliers: int = 0
    method: str = ""  # "features", "oblique-view features", "...+ecc(intensity|gradient)", "phase_correlation"
    ecc_correlation: float | None = None
    support: Support | None = None  # the feature matches behind the estimate (not written out)
    refinement: str | None = None  # why the intensity refinement was kept or not


def _needs_gradient(moving, reference, config):
    if config.ecc_input == "gradient":
        return True
    if config.ecc_input == "intensity":
        return False
    # a median of every 4th pixel in each direction is as telling and 16x cheaper
    m1, m2 = float(np.median(moving[::4, ::4])) + 1.0, float(np.median(reference[::4, ::4])) + 1.0
    return max(m1 / m2, m2 / m1) > config.exposure_ratio


def _feature_estimate(moving, moving_features, reference_features, config, rng, iterations=10000):
    """Ratio-test matches and a robust fit of config.model: (matrix or None, inliers, matches, Support)."""
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
    return matrix, int(inliers.sum()), len(matches), Support(src, dst, inliers, config.ransac_threshold_px * level_scale)


def _consistent(matrix, n_inliers, n_matches, config):
    return matrix is not None and n_inliers >= config.min_inliers and n_inliers >= config.min_inlier_ratio * n_matches


def _oblique_estimate(moving, reference, reference_features, config, rng, is_canceled=None):
    """ASIFT-style estimate for a strong change of viewpoint: (matrix or None, inliers, matches, reason).

    Among ~40,000 simulated-view features chance consensus reaches 40-50 inliers (an unrelated
    pair too), so the estimate must prove itself: rectified by it, the moving image must match the
    reference directly, by the same rules as any pair (graf 6: 240 of 470; unrelated: 0 of 11).
    The re-match also refines it."""
    simulated = detect_affine_views(moving, config, is_canceled)
    tilted, n_in, n_matches, _ = _feature_estimate(moving, simulated, reference_features, config, rng,
                                                   AFFINE_RANSAC_ITERATIONS)
    if tilted is None:
        return None, n_in, n_matches, None, f"no estimate from simulated oblique views ({n_matches} matches)"
    why = degeneracy(tilted, moving.shape[1], moving.shape[0], config, OBLIQUE_MAX_ANISOTROPY)
    if why:
        return None, n_in, n_matches, None, f"simulated oblique views ({n_in} of {n_matches}): {why}"
    h, w = reference.shape[:2]
    rectified, _ = warp_with_mask(moving, tilted, w, h)
    rectified_features, _ = detect(rectified, config)
    residual, r_in, r_matches, support = _feature_estimate(rectified, rectified_features, reference_features,
                                                           config, rng)
    if not _consistent(residual, r_in, r_matches, config):
        return None, r_in, r_matches, None, (f"simulated oblique views ({n_in} of {n_matches}) not confirmed "
                                             f"after rectifying ({r_in} of {r_matches})")
    matrix = residual @ tilted
    # the confirming inliers, taken back from the rectified image into the moving one
    support.src = _apply(np.linalg.inv(tilted), support.src)
    return matrix / matrix[2, 2], r_in, r_matches, support, None


def align_pair(moving, reference, moving_features, reference_features, config, rng, is_canceled=None):
    """Estimate moving -> reference (grey float32 images) for config.model."""
    matrix, n_in, n_matches, support = _feature_estimate(moving, moving_features, reference_features, config, rng)
    method = "features"
    if not _consistent(matrix, n_in, n_matches, config):
        reason = f"no consistent matches ({n_in} inliers of {n_matches})"
        matrix = None
        if config.affine_views and config.model in ("affine", "homography"):  # a strong change of viewpoint?
            oblique, o_in, o_matches, o_support, why = _oblique_estimate(moving, reference, reference_features,
                                                                         config, rng, is_canceled)
            if oblique is not None:
                matrix, n_in, n_matches, support = oblique, o_in, o_matches, o_support
                method = "oblique-view features"
            else:
                reason += f"; {why}"
    result = PairResult(None, None, matches=n_matches, inliers=n_in, method=method, support=support)
    if matrix is None:
        result.reason = reason
        if config.model == "translation":
            shift, response = phase_translation(moving, reference, config)
            if shift is not None:
                return PairResult(shift, None, n_matches, n_in, "phase_correlation")
            result.reason += f"; phase correlation too weak ({response:.2f})"
        return result
    stretch = _stretch_bound(method)
    why = degeneracy(matrix, moving.shape[1], moving.shape[0], config, stretch, support.inlier_pairs(),
                     (reference.shape[1], reference.shape[0]))
    if why:
        result.reason = why
        return result
    result.matrix = matrix
    if not config.ecc:
        return result
    if _needs_gradient(moving, reference, config):
        return _refine_exposure(moving, reference, result, config, is_canceled)
    first = _refine_intensity(moving, reference, result, config, stretch, is_canceled)
    if first != "geometry" or config.ecc_support_radius <= 0 or support.inliers.sum() < config.min_inliers:
        return result
    # whole-frame ECC left the matched plane (something else moves: parallax, a near object): once more,
    # looking only near the feature inliers, the dominant plane's support (issue 13, non-planar scenes)
    whole_frame = result.refinement
    mask = support_mask(support.inlier_pairs()[1], reference.shape,
                        config.ecc_support_radius * max(reference.shape[:2]))
    _refine_intensity(moving, reference, result, config, stretch, is_canceled, mask)
    result.refinement += f" [ECC near the feature inliers only, after whole-frame ECC: {whole_frame}]"
    return result


def _refine_intensity(moving, reference, result, config, stretch, is_canceled, mask=None):
    """ECC from result.matrix, judged (_judge_refinement); returns the verdict ("kept", "fine", "geometry",
    "failed"): result.matrix / method / refinement are updated."""
    refined, info = ecc_refine(moving, reference, result.matrix, config.model, config, is_canceled, mask=mask)
    if refined is None:
        result.refinement = f"features alone: {info}"
        return "failed"
    why = degeneracy(refined, moving.shape[1], moving.shape[0], config, stretch)
    if why:
        result.refinement = f"features alone: the ECC result is {why}"
        return "failed"
    return _judge_refinement(moving, reference, result, refined, info, config)


def _squared_residuals(matrix, src, dst, moving_size):
    """Squared transfer errors of the matches under `matrix`, in the pixels of the coarser view (the
    moving image when it is zoomed out against the reference): where its matches were measured."""
    if _centre_scale(matrix, *moving_size) > 1.0:
        return np.sum((_apply(np.linalg.inv(matrix), dst) - src) ** 2, axis=1)
    return np.sum((_apply(matrix, src) - dst) ** 2, axis=1)


def inlier_rms(matrix, support, moving_size, own=False):
    """RMS transfer error (px of the coarser view) under `matrix` of the robust fit's inliers, or (own=True)
    of the matches within the fit's threshold of `matrix` itself: its own inliers, as a refined model has
    them. None without any."""
    if support is None:
        return None
    if own:
        r2 = _squared_residuals(matrix, support.src, support.dst, moving_size)
        r2 = r2[r2 < support.threshold ** 2]
    else:
        r2 = _squared_residuals(matrix, *support.inlier_pairs(), moving_size)
    return float(np.sqrt(np.mean(r2))) if len(r2) else None


def match_cost(matrix, support, moving_size):
    """Truncated quadratic (MSAC) cost of `matrix` over every ratio-test match, in [0, 1]: the share of
    the squared threshold a match costs on average. Unlike the inliers' residual it is not biased toward
    the model that chose the inliers (Oxford graf 3: the features' inliers sit 1.7 px off the features'
    model and 4.0 px off ECC's, yet ECC is 2.7 px closer to the truth and costs 0.67 where the features
    cost 0.80): a better model gathers more of the true matches within the threshold."""
    r2 = _squared_residuals(matrix, support.src, support.dst, moving_size)
    return float(np.mean(np.minimum(r2, support.threshold ** 2)) / support.threshold ** 2)


def _judge_refinement(moving, reference, result, refined, correlation, config):
    """Keep the ECC result only when it earns its place, on two kinds of evidence.

    1. Fine local structure: NCC and SSIM must both rise. Where moving water, people or depth pull ECC
       off, NCC still rises a little but SSIM falls (Oxford boat 2-4: ECC 0.07-0.7 px further off than the
       features, SSIM -0.001 to -0.03; graf 2-4: ECC 0.7-3.6 px better, SSIM +0.013 to +0.10).
    2. Geometry ECC was not fitted to: the feature matches (the dominant plane's) must not fit the
       refined model worse than the feature model (match_cost), beyond a small margin. Whole-frame
       correlation is no judge of geometry when the scene is not one plane: ECC can follow an off-plane
       object, NCC rises, and the plane is left pixels off (issue 13).
    """
    before = _fine_scores(moving, reference, result.matrix, config.ecc_max_side)
    after = _fine_scores(moving, reference, refined, config.ecc_max_side)
    scores = f"NCC {before[0]:.4f} -> {after[0]:.4f}, SSIM {before[1]:.4f} -> {after[1]:.4f}"
    if not (after[0] > before[0] and after[1] > before[1]):
        result.refinement = f"features alone: ECC did not improve both NCC and SSIM ({scores})"
        return "fine"
    size = (moving.shape[1], moving.shape[0])
    if result.support is not None and len(result.support.src):
        cost_features, cost_refined = match_cost(result.matrix, result.support, size), match_cost(
            refined, result.support, size)
        allowed = cost_features * (1.0 + config.refine_cost_margin)
        geometry = (f"feature matches' truncated cost {cost_features:.4f} -> {cost_refined:.4f}, inliers' RMS "
                    f"{inlier_rms(result.matrix, result.support, size):.3f} -> "
                    f"{inlier_rms(refined, result.support, size):.3f} px")
        if cost_refined > allowed:
            result.refinement = (f"features alone: ECC fits the feature matches worse ({geometry}; allowed cost "
                                 f"{allowed:.4f}) although {scores}: the scene is not one plane, or ECC "
                                 f"followed something else")
            return "geometry"
        scores += f"; {geometry}"
    result.refinement = f"ECC kept: {scores}"
    result.matrix = refined
    result.method = f"{result.method}+ecc(intensity)"
    result.ecc_correlation = correlation
    return "kept"


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
    # as for intensity ECC: a candidate that fits the feature matches clearly worse than the features is out
    fits = [True] + [_fits_features(m, result, (w, h), config) for m, _ in candidates[1:]]
    usable = [score if fit else -np.inf for score, fit in zip(scores, fits)]
    best = int(np.argmax(usable))
    if translation is not None and fits[1] and best != 1 and usable[best] < usable[1] + config.min_gradient_gain:
        best = 1  # the richer model must earn its extra parameters
    result.matrix, result.method = candidates[best]
    result.ecc_correlation = round(float(scores[best]), 5)
    result.refinement = ("exposure bracket: the best of " + ", ".join(
        f"{name} ({score:.4f}{'' if fit else ', fits the feature matches worse: out'})"
        for (_, name), score, fit in zip(candidates, scores, fits)) + " by gradient correlation")
    return result


def _fits_features(matrix, result, moving_size, config):
    """Whether `matrix` fits the feature matches no worse than result.matrix (match_cost within the margin)."""
    if result.support is None or not len(result.support.src):
        return True
    allowed = match_cost(result.matrix, result.support, moving_size) * (1.0 + config.refine_cost_margin)
    return match_cost(matrix, result.support, moving_size) <= allowed


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
    if config.fuse not in fusion.FUSE_MODES:
        raise StackError(f"unknown fusion {config.fuse!r}; use one of {', '.join(fusion.FUSE_MODES)}")
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
                 "via": names[chains[k]] if k in chains else None, "refinement": result.refinement}
        if result.matrix is not None:
            rms = inlier_rms(result.matrix, result.support, (grays[k].shape[1], grays[k].shape[0]), own=True)
            entry["inlier_rms_px"] = None if rms is None else round(rms, 4)
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
    earlier = earlier_outputs(output_folder)  # read before this run's transforms.json replaces it
    georef = _georeference(paths[ref_index])
    written, fused = [], fusion.StackFusion(config.fuse, names, ref_index, config.jpeg_quality)
    for k in sorted([ref_index] + accepted):
        check(is_canceled)
        image = read_image(paths[k])
        warped = image if k == ref_index else cv2.warpPerspective(
            image, results[k].matrix, (ref_w, ref_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        warped = warped[crop["y"]:crop["y"] + crop["height"], crop["x"]:crop["x"] + crop["width"]]
        write_output(paths[k], output_folder / names[k], warped, georef, crop, config.jpeg_quality)
        written.append(names[k])
        fused.add(k, warped)  # the frame as warped, before any JPEG re-encoding
    if config.fuse != "none":
        check(is_canceled)
        progress(0.93, f"fusing the aligned frames ({config.fuse})")
        t_fuse = time.perf_counter()
        document.update(fused.write(output_folder, paths[ref_index], georef, crop, written))
        written += [n for n in (document.get("fused"), document.get("fused_depth")) if n]
        timings["fuse_s"] = time.perf_counter() - t_fuse + fused.seconds
    document["removed_earlier_outputs"] = remove_earlier_outputs(output_folder, earlier, written, progress)
    timings["total_s"] = time.perf_counter() - t0
    document["timings"] = {key: round(v, 3) for key, v in timings.items()}
    document["config"] = asdict(config)
    workspace.write_json(output_folder / "transforms.json", document)
    done = f"{len(accepted)} of {len(paths) - 1} images aligned to {names[ref_index]}"
    if document.get("fused"):
        done += f"; fused ({config.fuse}) into {document['fused']}"
    progress(1.0, done if not document.get("fused_note") else f"{done}; {document['fused_note']}")
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
        if link.support is not None:  # the neighbour's matches, carried on into the reference
            link.support = link.support.carried(results[j].matrix)
        chains[k] = j
        return link
    return None


