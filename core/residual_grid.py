"""Image residuals averaged on the sensor grid: an unmodelled lens distortion shows at a glance.

Each observation's residual is observed minus projected (px) under the adjusted camera; the sensor is
cut into `cells` (columns, rows) and the mean residual vector of each cell is kept. A distortion the
model lacks leaves a systematic pattern (radial arrows growing to the corners); a good calibration
leaves noise. Pure numpy; the summary JSON holds the grids (`residual_grid`), the report draws them.
"""
import numpy as np

from .bundle import project

GRID_CELLS = (8, 6)  # columns, rows on the sensor


def residual_grid(R, C, focal, k1, k2, pp, points, obs_image, obs_point, obs_xy, width, height,
                  cells=GRID_CELLS):
    """Mean residual (observed - projected, px) per sensor cell of one camera model.

    R (N,3,3), C (N,3), focal/k1/k2 (N,), pp (N,2): per image; points (P,3); obs_image, obs_point (K,),
    obs_xy (K,2): the observations (only those of this camera model's images). Observations of
    unregistered images, behind the camera or off the sensor are skipped.
    Returns {"cells": [columns, rows], "width", "height", "x", "y" (cell centres, px), "dx", "dy"
    (mean residual, px; None in an empty cell), "count"}: lists in row-major order, row 0 at the top.
    """
    nx, ny = int(cells[0]), int(cells[1])
    obs_image = np.asarray(obs_image, np.int64)
    obs_point = np.asarray(obs_point, np.int64)
    obs_xy = np.asarray(obs_xy, np.float64).reshape(-1, 2)
    sums = np.zeros((ny * nx, 2))
    count = np.zeros(ny * nx, np.int64)
    if len(obs_image):
        img = obs_image
        uv, z = project(np.asarray(R, np.float64)[img], np.asarray(C, np.float64)[img],
                        np.asarray(focal, np.float64)[img], np.asarray(k1, np.float64)[img],
                        np.asarray(k2, np.float64)[img], np.asarray(pp, np.float64)[img],
                        np.asarray(points, np.float64)[obs_point])
        res = obs_xy - uv
        col = np.floor(obs_xy[:, 0] / width * nx).astype(np.int64)
        row = np.floor(obs_xy[:, 1] / height * ny).astype(np.int64)
        ok = np.isfinite(res).all(axis=1) & (z > 0) & (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        cell = row[ok] * nx + col[ok]
        np.add.at(sums, cell, res[ok])
        count = np.bincount(cell, minlength=ny * nx)
    cx = (np.arange(nx) + 0.5) * width / nx
    cy = (np.arange(ny) + 0.5) * height / ny
    gx, gy = np.meshgrid(cx, cy)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / count[:, None]
    return {
        "cells": [nx, ny], "width": int(width), "height": int(height),
        "x": gx.ravel().tolist(), "y": gy.ravel().tolist(),
        "dx": [float(v) if n else None for v, n in zip(mean[:, 0], count)],
        "dy": [float(v) if n else None for v, n in zip(mean[:, 1], count)],
        "count": count.tolist(),
    }


def residual_grids(usable, recon, cells=GRID_CELLS):
    """One residual_grid per camera model (usable's camera_key) of the registered photos, as a list of
    dicts with "camera" added: what the summary JSON stores under `residual_grid`."""
    pp = np.array([p.K()[:2, 2] for p in usable], np.float64).reshape(-1, 2)
    keys = [p.camera_key for p in usable]
    out = []
    for key in dict.fromkeys(k for k, reg in zip(keys, recon.registered) if reg):
        images = np.flatnonzero([k == key and bool(reg) for k, reg in zip(keys, recon.registered)])
        sel = np.isin(recon.obs_image, images)
        first = usable[images[0]]
        grid = residual_grid(recon.R, recon.C, recon.focal, recon.k1, recon.k2, pp, recon.points,
                             recon.obs_image[sel], recon.obs_point[sel], recon.obs_xy[sel],
                             first.width, first.height, cells)
        out.append({"camera": key, **grid})
    return out


def distortion_curve(focal, k1, k2, width, height, samples=60):
    """(radius, radial displacement) in px from the centre to the image corner for the radial model
    r_d = r (1 + k1 r_n^2 + k2 r_n^4), r_n = r / focal: displacement = r_d - r (negative: barrel)."""
    r = np.linspace(0.0, 0.5 * float(np.hypot(width, height)), int(samples))
    rn2 = (r / float(focal)) ** 2
    return r, r * (float(k1) * rn2 + float(k2) * rn2 * rn2)
