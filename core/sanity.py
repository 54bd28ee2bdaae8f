"""Sanity checks of a georeferenced reconstruction that speak up with numbers (issue 11).

Reprojection error says nothing about georeferencing: a block tilted 40 degrees by a drifting GPS
altitude fits its photos at 0.9 px. So after georeferencing: the off-nadir angles of a nadir block,
the slope of the sparse ground's best plane, the GPS residuals against capture time, the height above
ground against the photos' RelativeAltitude, and the GPS drift the adjustment estimated. Each gives a
summary figure; anything implausible becomes a warning with the number in it.
"""
import numpy as np

from .georef import FLIGHT_GAP_S, NADIR_MAX_MEDIAN_DEG, off_nadir_deg

NADIR_WARN_DEG = 10.0  # a nadir block whose cameras point further off nadir (median) is probably tilted
SLOPE_WARN_DEG = 10.0  # a nadir block's sparse ground sloping more than this: a hillside, or a tilted block
TREND_WARN_SIGMAS = 3.0  # GPS residuals trending over a flight by more than this many sigmas (and ...)
TREND_WARN_M = 2.0  # ... this many metres): a drift that is not modelled
REL_ALT_WARN = (3.0, 0.1)  # height above ground vs RelativeAltitude: warn beyond max(3 m, 10 %)


def robust_plane(points, iterations=3):
    """Best plane z = a x + b y + c through points, dropping > 3 MAD outliers: (slope_deg, spread_m)."""
    p = np.asarray(points, np.float64)
    keep = np.ones(len(p), bool)
    for _ in range(iterations):
        if keep.sum() < 3:
            return None
        c = p[keep].mean(0)
        A = np.column_stack([p[:, 0] - c[0], p[:, 1] - c[1], np.ones(len(p))])
        coef = np.linalg.lstsq(A[keep], p[keep, 2] - c[2], rcond=None)[0]
        r = p[:, 2] - c[2] - A @ coef
        mad = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        keep = np.abs(r - np.median(r[keep])) <= max(3.0 * mad, 1e-9)
    slope = float(np.degrees(np.arctan(np.hypot(coef[0], coef[1]))))
    return slope, float(np.std(r[keep]))


def _largest(recon):
    comps, counts = np.unique(recon.component[recon.registered], return_counts=True)
    return int(comps[np.argmax(counts)]) if len(comps) else -1


def sanity_checks(recon, usable, capture_s=None):
    """(figures for the summary, warnings). capture_s (N,) capture seconds of `usable` (NaN unknown)."""
    warnings = []
    figures = {"off_nadir_median_deg": None, "off_nadir_p90_deg": None, "ground_slope_deg": None,
               "ground_plane_spread_m": None, "gps_residual_trend_m": [], "relative_altitude_median_m": None,
               "vertical_source": recon.vertical_source or "GPS altitudes", "gps_drift": list(recon.gps_drift_flights)}
    comp = _largest(recon)
    if comp < 0 or not recon.georeferenced:  # a local frame has no up: nothing to check
        return figures, warnings
    imgs = np.flatnonzero(recon.registered & (recon.component == comp))
    R = recon.R[imgs]
    off = off_nadir_deg(R)
    figures["off_nadir_median_deg"] = float(np.median(off))
    figures["off_nadir_p90_deg"] = float(np.percentile(off, 90))
    axes = R[:, 2, :]
    mean = axes.mean(0) / np.linalg.norm(axes.mean(0))
    nadir_like = np.median(np.degrees(np.arccos(np.clip(axes @ mean, -1, 1)))) <= NADIR_MAX_MEDIAN_DEG
    georef = bool(recon.georeferenced)
    if georef and nadir_like and figures["off_nadir_median_deg"] > NADIR_WARN_DEG:
        warnings.append(f"the cameras of this nadir block point {figures['off_nadir_median_deg']:.0f} deg off nadir "
                        f"(median; {figures['off_nadir_p90_deg']:.0f} deg at the 90th percentile): the georeferenced "
                        f"block is probably tilted (check the GPS altitudes)")
    pts = recon.points[recon.point_component == comp]
    plane = robust_plane(pts) if len(pts) >= 10 else None
    if plane is not None:
        figures["ground_slope_deg"], figures["ground_plane_spread_m"] = plane
        if georef and nadir_like and plane[0] > SLOPE_WARN_DEG:
            warnings.append(f"the sparse ground's best plane slopes {plane[0]:.1f} deg (residual spread {plane[1]:.1f} m): "
                            f"a real hillside, or a block tilted by its GPS")
    for d in recon.gps_drift_flights:
        if d.get("modelled"):
            warnings.append(f"the GPS altitude drifts by {d['vertical_drift_m']:.0f} m over flight {d['flight']} "
                            f"({d['duration_s']:.0f} s, {d['images']} photos; range {d['vertical_range_m']:.0f} m): "
                            f"modelled as a polynomial in capture time; heights are tied to the GPS altitude at the "
                            f"start of the first flight, the block's vertical to the photos' {recon.vertical_source}")
    # GPS residuals (of the drift-corrected fix) against capture time, per flight
    if capture_s is not None and georef:
        t = np.asarray(capture_s, np.float64)
        res = recon.gps_residual + np.nan_to_num(recon.gps_drift, nan=0.0) if len(recon.gps_drift) else recon.gps_residual
        ok = imgs[np.isfinite(res[imgs]).all(axis=1) & np.isfinite(t[imgs])]
        sig = np.array([recon.gps_sigma_h_m, recon.gps_sigma_h_m, recon.gps_sigma_v_m])
        for f in _flights(t, ok):
            if len(f) < 5 or np.ptp(t[f]) <= 0:
                continue
            tau = (t[f] - t[f].min()) / np.ptp(t[f])
            A = np.column_stack([np.ones(len(f)), tau])
            trend = np.linalg.lstsq(A, res[f], rcond=None)[0][1]  # (3,) change over the flight, m
            entry = {"images": int(len(f)), "duration_s": float(np.ptp(t[f])), "east_m": float(trend[0]),
                     "north_m": float(trend[1]), "up_m": float(trend[2]),
                     "residual_std_m": [float(v) for v in res[f].std(axis=0)]}
            figures["gps_residual_trend_m"].append(entry)
            big = (np.abs(trend) > np.maximum(TREND_WARN_SIGMAS * sig, TREND_WARN_M))
            if big.any():
                axis = ["east", "north", "up"][int(np.argmax(np.abs(trend) / np.maximum(sig, 1e-9)))]
                warnings.append(f"the GPS residuals trend by {trend[['east', 'north', 'up'].index(axis)]:+.1f} m ({axis}) "
                                f"over a flight of {np.ptp(t[f]):.0f} s ({len(f)} photos): a GPS drift that is not "
                                f"modelled (GPS std {sig[0]:.1f} m horizontal, {sig[2]:.1f} m vertical)")
    rel = np.array([usable[i].rel_alt for i in imgs if getattr(usable[i], "rel_alt", None)], np.float64)
    if len(rel) and len(pts) and georef:
        figures["relative_altitude_median_m"] = float(np.median(rel))
        height = float(np.median(recon.C[imgs, 2]) - np.median(pts[:, 2]))
        if abs(height - np.median(rel)) > max(REL_ALT_WARN[0], REL_ALT_WARN[1] * abs(np.median(rel))):
            warnings.append(f"the cameras are {height:.1f} m above the sparse ground, the photos' RelativeAltitude says "
                            f"{np.median(rel):.1f} m (median; above the take-off point): a wrong focal length or "
                            f"scale, or take-off far above or below the surveyed ground")
    return figures, warnings


def _flights(t, images, gap_s=FLIGHT_GAP_S):
    """Split images (capture order by time) at pauses longer than gap_s."""
    order = images[np.argsort(t[images], kind="stable")]
    if not len(order):
        return []
    cuts = np.flatnonzero(np.diff(t[order]) > gap_s) + 1
    return np.split(order, cuts)
