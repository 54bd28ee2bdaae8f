"""Accuracy against independent ground truth, shared by tests and benchmarks.

- `reference_dz`: vertical distance from points to a reference point cloud (e.g. the OpenDroneMap
  cloud brighton_beach/model.laz), through the median height of the reference points around each.
- `rotation_angle_deg`: the angle between two rotations. (For the similarity between estimated
  and true positions use core.reconstruction.umeyama.)
"""
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


def rotation_angle_deg(Ra, Rb):
    """Angle of the rotation Ra @ Rb.T, in degrees."""
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))
