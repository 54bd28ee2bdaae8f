"""Accuracy against independent ground truth, shared by tests and benchmarks.

- `reference_dz`: vertical distance from points to a reference point cloud (e.g. the OpenDroneMap
  cloud brighton_beach/model.laz), through the median height of the reference points around each.
- `hpatches_error`, `opencv_baseline_homography`: the Oxford/HPatches homography check and the
  plain OpenCV baseline it is compared with.
- `sampson_distance`: first-order epipolar error of matches under a (true) fundamental matrix.
- `track_length_stats`: mean track length over all points and over the points seen in 3+ photos, the
  set COLMAP's default incremental mapper keeps (it does not triangulate two-view tracks).
- `rotation_angle_deg`: the angle between two rotations. (For the similarity between estimated
  and true positions use core.reconstruction.umeyama.)
"""
import cv2
import numpy as np
from scipy.spatial import cKDTree


def load_las_xyz(path):
    import laspy  # test/bench dependency only (requirements-dev.txt)

    with laspy.open(path) as f:
        las = f.read()
        crs = f.header.parse_crs()
    xyz = np.column_stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)]).astype(np.float64)
    return xyz, (crs.to_string() if crs is not None else None)


def reference_dz(points_xyz, reference_xyz, radius=0.5, min_neighbours=3):
    """dz = point z - median z of the reference points within `radius` (XY); NaN where too few."""
    points_xyz = np.asarray(points_xyz, dtype=np.float64)
    tree = cKDTree(reference_xyz[:, :2])
    neighbours = tree.query_ball_point(points_xyz[:, :2], r=radius)
    dz = np.full(len(points_xyz), np.nan)
    for k, idx in enumerate(neighbours):
        if len(idx) >= min_neighbours:
            dz[k] = points_xyz[k, 2] - np.median(reference_xyz[idx, 2])
    ok = np.isfinite(dz)
    return {
        "points": int(len(points_xyz)),
        "compared": int(ok.sum()),
        "median_abs_dz_m": float(np.median(np.abs(dz[ok]))) if ok.any() else None,
        "median_dz_m": float(np.median(dz[ok])) if ok.any() else None,
        "p90_abs_dz_m": float(np.percentile(np.abs(dz[ok]), 90)) if ok.any() else None,
    }


def track_length_stats(track_length):
    """Mean track length of sparse points (observations per point) over all of them, and over those
    seen in 3+ photos, with the share of two-photo points.

    The second is the figure to hold against COLMAP's: its incremental mapper does not triangulate
    two-view tracks by default (`IncrementalTriangulator` option `ignore_two_view_tracks`), so its
    mean is over 3+ photo points only (issue 16, 18-photo block seed 2: 17 of 31,861 COLMAP points
    in two photos; with the option off 47,012 points, mean 4.09 against 5.08). Two-photo points sit
    mostly at the block's edge, where only two photos see the ground: correct points that a mean
    over all of them counts as short."""
    n = np.asarray(track_length, np.int64)
    three = n >= 3
    return {"mean_track_length": float(n.mean()) if len(n) else float("nan"),
            "mean_track_length_3plus": float(n[three].mean()) if three.any() else float("nan"),
            "two_view_share": float(np.mean(n == 2)) if len(n) else float("nan")}


def rotation_angle_deg(Ra, Rb):
    """Angle of the rotation Ra @ Rb.T, in degrees."""
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _apply(H, xy):
    p = np.column_stack([xy, np.ones(len(xy))]) @ np.asarray(H, dtype=np.float64).T
    return p[:, :2] / p[:, 2:3]


def hpatches_error(matrix_n_to_1, h1_to_n, width, height):
    """Mean distance, in imgN pixels, of img1's corners mapped by inverse(reported) and by H1toNp."""
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)
    mapped = _apply(np.linalg.inv(matrix_n_to_1), corners)
    return float(np.linalg.norm(mapped - _apply(h1_to_n, corners), axis=1).mean())


def opencv_baseline_homography(img1, img_n, method=cv2.USAC_MAGSAC):
    """Issue 6's plain baseline: SIFT, ratio 0.8, robust homography, no refinement (imgN -> img1)."""
    sift = cv2.SIFT_create()
    k1, d1 = sift.detectAndCompute(img1, None)
    k2, d2 = sift.detectAndCompute(img_n, None)
    good = [m for m, n in cv2.BFMatcher().knnMatch(d1, d2, k=2) if m.distance < 0.8 * n.distance]
    p1 = np.float32([k1[m.queryIdx].pt for m in good])
    p2 = np.float32([k2[m.trainIdx].pt for m in good])
    h, _ = cv2.findHomography(p1, p2, method, 3.0)
    return np.linalg.inv(h)


def sampson_distance(F, x1, x2):
    """Sampson (first-order geometric) distance of matches x1 <-> x2 under F, in pixels."""
    h1 = np.column_stack([x1, np.ones(len(x1))])
    h2 = np.column_stack([x2, np.ones(len(x2))])
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    num = np.sum(h2 * Fx1, axis=1) ** 2
    return np.sqrt(num / (Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2))


def camera_shape_error(names, C_est, R_est, truth):
    """Camera shape error against a generated survey's truth (core.synthetic.load_ground_truth).

    names, C_est (N,3), R_est (N,3,3 world-to-camera) of the registered cameras in any frame: a
    similarity (core.reconstruction.umeyama) maps them onto the true centres, so only the block's
    shape counts, not where the GPS placed it. Returns RMS / max centre error (mm, 3D), the RMS as a
    percentage of the flying height, and the rotation error after the fit (degrees; mean, max).
    """
    from alignkit.core.reconstruction import umeyama

    index = {c["image"]: k for k, c in enumerate(truth["cameras"])}
    keep = [k for k, n in enumerate(names) if n in index and np.all(np.isfinite(C_est[k]))]
    if len(keep) < 3:
        raise ValueError(f"camera_shape_error: {len(keep)} registered cameras match the truth, 3 needed")
    rows = [index[names[k]] for k in keep]
    est, true = np.asarray(C_est, np.float64)[keep], truth["C"][rows]
    scale, rot, shift = umeyama(est, true)
    diff = scale * est @ rot.T + shift - true
    err = np.linalg.norm(diff, axis=1)
    rms = float(np.sqrt(np.mean(err**2)))
    # The part of the height error that is a bowl (a quadratic surface over the block): the doming
    # that radial distortion and a nadir block trade against each other.
    xy = (true[:, :2] - true[:, :2].mean(axis=0)) / max(float(np.ptp(true[:, :2])), 1e-9)
    basis = np.column_stack([np.ones(len(xy)), xy, xy**2, xy[:, 0] * xy[:, 1]])
    bowl = basis @ np.linalg.lstsq(basis, diff[:, 2], rcond=None)[0] if len(xy) > 6 else np.zeros(len(xy))
    height = float(truth["spec"]["altitude_m"])
    rot_err = [rotation_angle_deg(np.asarray(R_est[k], np.float64) @ rot.T, truth["R"][r]) for k, r in zip(keep, rows)]
    return {"cameras": len(keep), "shape_rms_mm": 1000 * rms, "shape_max_mm": 1000 * float(err.max()),
            "shape_percent_of_height": 100 * rms / height, "flying_height_m": height,
            "shape_rms_xyz_mm": [1000 * float(v) for v in np.sqrt(np.mean(diff**2, axis=0))],
            "height_bowl_rms_mm": 1000 * float(np.sqrt(np.mean(bowl**2))),
            "rotation_mean_deg": float(np.mean(rot_err)), "rotation_max_deg": float(np.max(rot_err))}
