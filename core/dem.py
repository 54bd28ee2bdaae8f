"""A reference surface as vertical control: tie the sparse ground to a DEM when there is no control.

The sparse points are sampled against the raster (any CRS; GDAL) and the block is moved by a robust
vertical fit, as OpenDroneMap's --align does after the fact:

    z' = z_c + s (z - z_c) + t

with z_c the mean camera height: t a vertical datum offset, s a scale of the depth below the cameras
(the focal/height trade-off of nadir flights). s is only determined where the ground has relief, so it
carries a prior at 1 (SCALE_PRIOR_SIGMA) and is reported with the offset. Points off the surface
(buildings, trees, outliers) are ignored by iterative trimming at a few robust sigmas. Heights keep
their meaning: the DEM's heights are taken to share the photos' altitude reference; say so.
"""
import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()
osr.UseExceptions()

SCALE_PRIOR_SIGMA = 0.02  # relative: a scale change is accepted only where the relief supports it
MIN_POINTS = 20  # fewer sparse points on the DEM: no fit
TRIM_SIGMAS = 3.0  # residuals beyond this many robust sigmas are not ground (or not this ground)
MIN_SPREAD_M = 0.05  # floor of the robust sigma used for trimming


class DemError(ValueError):
    """The DEM cannot be used; the message names the file and the problem."""


def open_dem(path):
    """(GDAL dataset, CRS WKT) of a raster; DemError when it cannot be used."""
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise DemError(f"{path}: not a readable raster ({exc})") from None
    wkt = ds.GetProjection()
    if not wkt:
        raise DemError(f"{path}: the raster has no CRS; give it one (e.g. gdal_edit.py -a_srs EPSG:n)")
    return ds, wkt


def read_dem(ds, x=None, y=None, margin=2):
    """(array float64 with NaN for nodata, geotransform) of band 1; only the window around the points
    (x, y) when given and the raster is north-up (a national DEM is never read whole)."""
    gt = ds.GetGeoTransform()
    x0, y0, w, h = 0, 0, ds.RasterXSize, ds.RasterYSize
    if x is not None and len(x) and gt[2] == 0 and gt[4] == 0:
        cols = (np.array([np.nanmin(x), np.nanmax(x)]) - gt[0]) / gt[1]
        rows = (np.array([np.nanmin(y), np.nanmax(y)]) - gt[3]) / gt[5]
        c0, c1 = int(max(0, np.floor(cols.min()) - margin)), int(min(w, np.ceil(cols.max()) + margin + 1))
        r0, r1 = int(max(0, np.floor(rows.min()) - margin)), int(min(h, np.ceil(rows.max()) + margin + 1))
        if c1 - c0 < 2 or r1 - r0 < 2:
            return np.full((2, 2), np.nan), gt
        x0, y0, w, h = c0, r0, c1 - c0, r1 - r0
        gt = (gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + r0 * gt[5], 0.0, gt[5])
    band = ds.GetRasterBand(1)
    data = band.ReadAsArray(x0, y0, w, h).astype(np.float64)
    nodata = band.GetNoDataValue()
    if nodata is not None:
        data[data == nodata] = np.nan
    return data, gt


def sample(data, gt, x, y):
    """Bilinear sample of a north-up or rotated raster at (x, y) in its CRS; NaN outside or on nodata."""
    det = gt[1] * gt[5] - gt[2] * gt[4]
    px = (gt[5] * (x - gt[0]) - gt[2] * (y - gt[3])) / det - 0.5  # pixel-centre coordinates
    py = (-gt[4] * (x - gt[0]) + gt[1] * (y - gt[3])) / det - 0.5
    h, w = data.shape
    ok = (px >= 0) & (py >= 0) & (px <= w - 1) & (py <= h - 1)
    out = np.full(len(x), np.nan)
    if ok.any():
        i0 = np.minimum(np.floor(py[ok]).astype(int), h - 2)
        j0 = np.minimum(np.floor(px[ok]).astype(int), w - 2)
        fy, fx = py[ok] - i0, px[ok] - j0
        out[ok] = ((data[i0, j0] * (1 - fx) + data[i0, j0 + 1] * fx) * (1 - fy)
                   + (data[i0 + 1, j0] * (1 - fx) + data[i0 + 1, j0 + 1] * fx) * fy)
    return out


def fit_vertical(z, z_dem, z_c, fit_scale=True):
    """Robust (s, t, inlier mask, robust sigma) of z_dem ~ z_c + s (z - z_c) + t."""
    ok = np.isfinite(z) & np.isfinite(z_dem)
    d = z - z_c
    s, t = 1.0, float(np.median((z_dem - z)[ok]))
    inl = ok.copy()
    sigma = MIN_SPREAD_M
    for _ in range(10):
        r = z_dem - (z_c + s * d + t)
        sigma = max(1.4826 * float(np.median(np.abs(r[inl] - np.median(r[inl])))), MIN_SPREAD_M)
        new = ok & (np.abs(r) <= TRIM_SIGMAS * sigma)
        if new.sum() < MIN_POINTS:
            break
        inl = new
        if fit_scale:  # least squares in (s, t) with the prior s ~ 1 (weight relative to the residual sigma)
            A = np.column_stack([d[inl], np.ones(inl.sum())])
            b = z_dem[inl] - z_c
            w = sigma / SCALE_PRIOR_SIGMA
            A = np.vstack([A, [w, 0.0]])
            b = np.append(b, w * 1.0)
            s, t = np.linalg.lstsq(A, b, rcond=None)[0]
        else:
            t = float(np.median((z_dem - z_c - s * d)[inl]))
    return float(s), float(t), inl, sigma


def tie_to_dem(recon, frame, dem_path, apply=True):
    """Fit the reconstruction's sparse points to the DEM; return (reconstruction, fit dict). With
    apply=False (control points present: they decide), the fit is only reported."""
    from dataclasses import replace

    ds, wkt = open_dem(dem_path)
    pts = recon.points
    if frame is None:
        raise DemError(f"{dem_path}: a reference DEM needs a georeferenced alignment (photos with GPS)")
    xyz = frame.to_crs(pts, wkt) if len(pts) else np.zeros((0, 3))
    data, gt = read_dem(ds, xyz[:, 0], xyz[:, 1])
    z_dem_raw = sample(data, gt, xyz[:, 0], xyz[:, 1]) if len(pts) else np.zeros(0)
    n_on = int(np.isfinite(z_dem_raw).sum())
    if n_on < MIN_POINTS:
        raise DemError(f"{dem_path}: only {n_on} sparse points fall on the raster (at least {MIN_POINTS} needed): "
                       "does it cover the photos?")
    # Work in ENU: the DEM height at each point, as an ENU up coordinate (heights pass through to_crs).
    z_dem = pts[:, 2] + (z_dem_raw - xyz[:, 2])
    reg = recon.registered
    z_c = float(np.mean(recon.C[reg, 2]))
    s, t, inl, sigma = fit_vertical(pts[:, 2], z_dem, z_c)
    before = z_dem - pts[:, 2]
    after = z_dem - (z_c + s * (pts[:, 2] - z_c) + t)
    fit = {
        "dem": str(dem_path), "applied": bool(apply), "offset_m": t, "scale": s,
        "points_on_dem": n_on, "inliers": int(inl.sum()),
        "median_dz_before_m": float(np.nanmedian(before)), "median_dz_after_m": float(np.median(after[inl])),
        "spread_m": float(1.4826 * np.median(np.abs(after[inl] - np.median(after[inl])))),
        "p90_abs_dz_after_m": float(np.percentile(np.abs(after[inl]), 90)),
        "height_reference": "the DEM's heights are taken to share the photos' altitude reference",
    }
    if not apply:
        return recon, fit

    def move(z):
        return z_c + s * (z - z_c) + t

    P = pts.copy()
    P[:, 2] = move(P[:, 2])
    C = recon.C.copy()
    C[reg, 2] = move(C[reg, 2])
    gps_res = recon.gps_residual.copy()
    gps_res[:, 2] += C[:, 2] - recon.C[:, 2]
    log = list(recon.log) + [f"reference DEM {dem_path}: sparse ground moved {t:+.2f} m vertically, depth scale "
                             f"{s:.4f}; residual spread {fit['spread_m']:.2f} m over {fit['inliers']} points"]
    return replace(recon, points=P, C=C, gps_residual=gps_res, log=log), fit
