"""Cleaning of the final sparse cloud before export: points far outside the block's depth range.

A sparse point is seen along rays from its cameras; its depth in each of them (distance in front
of the camera along the optical axis) belongs to that camera's depth band, the distances at which
it sees the ground. A point far outside it (brighton, balanced preset: a 2-view track at 0.61 px and
z = -356 m, some 500 m below a ground 38 m under the cameras) is an outlier whatever its
reprojection error: two nearly parallel rays meet anywhere along them at a small error. It stretches the layer's extent to hundreds of metres and the PLY's bounding box with it.

The band is robust per camera: median depth of the points it sees +- the larger of
`STRAY_MAD_SIGMAS` robust sigmas (1.4826 MAD) and a share of the median depth (relief, buildings
and oblique views widen the MAD; a flat nadir block's MAD is small, so the share keeps trees and
roofs: `STRAY_NEAR_SHARE` towards the camera, `STRAY_FAR_SHARE` beyond the ground). A point is stray
when at least half of its observations lie outside their camera's band, or any lies behind its camera.
A point seen in two photos only keeps to a tight band beyond the ground (8 robust sigmas or
TWO_VIEW_FAR_SHARE of the median depth): nothing but its own two rays vouches for it.
"""
import dataclasses

import numpy as np

STRAY_MAD_SIGMAS = 8.0  # robust sigmas of a camera's depths a point may lie from their median
STRAY_NEAR_SHARE = 0.9  # ... or this share of the median depth towards the camera (tall objects)
STRAY_FAR_SHARE = 1.0  # ... or this share beyond it (twice the median depth: well below any ground)
TWO_VIEW_FAR_SHARE = 0.25  # a two-photo point: 8 robust sigmas or this share beyond the median depth
# (brighton, fast preset: a two-photo point 31 m under a ground 38 m below the cameras, inside the wide band)
MIN_POINTS_PER_CAMERA = 10  # fewer points: the camera's band is the block's (median over all cameras)


def observation_depths(recon):
    """(K,) depth of each used observation in its camera (ENU -> camera z), metres or model units."""
    img, pt = recon.obs_image, recon.obs_point
    return np.einsum("kj,kj->k", recon.R[img, 2, :], recon.points[pt] - recon.C[img])


def _depth_statistics(recon, depth):
    """(N,) median depth and robust sigma of each image's points (the block's where it has too few)."""
    n = len(recon.registered)
    medians, sigmas = np.full(n, np.nan), np.full(n, np.nan)
    for i in np.unique(recon.obs_image):
        d = depth[recon.obs_image == i]
        d = d[d > 0]
        if len(d) >= MIN_POINTS_PER_CAMERA:
            medians[i] = np.median(d)
            sigmas[i] = 1.4826 * np.median(np.abs(d - medians[i]))
    known = np.isfinite(medians)
    fallback_median = np.median(medians[known]) if known.any() else np.median(depth[depth > 0])
    fallback_sigma = np.median(sigmas[known]) if known.any() else 0.0
    return np.where(known, medians, fallback_median), np.where(known, sigmas, fallback_sigma)


def _bands(recon, medians, sigmas, near_share, far_share):
    """(N, 2) near and far depth limits per image (NaN for unregistered images)."""
    bands = np.column_stack([medians - np.maximum(STRAY_MAD_SIGMAS * sigmas, near_share * medians),
                             medians + np.maximum(STRAY_MAD_SIGMAS * sigmas, far_share * medians)])
    bands[~recon.registered] = np.nan
    return bands


def stray_points(recon):
    """(P,) bool: points outside their cameras' depth bands (see the module's docstring)."""
    n_points = len(recon.points)
    if n_points == 0 or len(recon.obs_point) == 0:
        return np.zeros(n_points, bool)
    depth = observation_depths(recon)
    n_obs = np.bincount(recon.obs_point, minlength=n_points)
    stats = _depth_statistics(recon, depth)
    band = _bands(recon, *stats, STRAY_NEAR_SHARE, STRAY_FAR_SHARE)[recon.obs_image]
    # A two-photo point has nothing but its two rays to vouch for it: it keeps to a tight band beyond
    # the ground (roofs and masts, nearer the cameras, keep the wide one).
    tight = _bands(recon, *stats, STRAY_NEAR_SHARE, TWO_VIEW_FAR_SHARE)[recon.obs_image]
    band = np.where((n_obs[recon.obs_point] <= 2)[:, None], tight, band)
    outside = (depth < band[:, 0]) | (depth > band[:, 1])
    n_out = np.bincount(recon.obs_point, weights=outside, minlength=n_points)
    behind = np.bincount(recon.obs_point, weights=depth <= 0, minlength=n_points) > 0
    return (n_obs > 0) & ((2 * n_out >= n_obs) | behind)


def remove_points(recon, drop):
    """A copy of `recon` without the points flagged in `drop` (and their observations); ids renumbered."""
    drop = np.asarray(drop, bool)
    keep = ~drop
    new_index = np.cumsum(keep) - 1
    obs_keep = keep[recon.obs_point]
    n_obs = np.bincount(recon.obs_image[obs_keep], minlength=len(recon.registered))
    return dataclasses.replace(
        recon,
        points=np.ascontiguousarray(recon.points[keep]),
        point_track=recon.point_track[keep],
        point_rgb=np.ascontiguousarray(recon.point_rgb[keep]),
        point_error_px=recon.point_error_px[keep],
        point_component=recon.point_component[keep],
        obs_point=new_index[recon.obs_point[obs_keep]],
        obs_image=recon.obs_image[obs_keep],
        obs_xy=np.ascontiguousarray(recon.obs_xy[obs_keep]),
        n_obs=n_obs,
        log=list(recon.log),
    )


def clean_cloud(recon):
    """(recon without stray points, number removed); the log says how many and why."""
    stray = stray_points(recon)
    n = int(stray.sum())
    if n == 0:
        return recon, 0
    cleaned = remove_points(recon, stray)
    cleaned.log.append(f"removed {n} stray sparse point(s) far outside their cameras' depth range "
                       f"(an outlier whatever its reprojection error)")
    return cleaned, n
