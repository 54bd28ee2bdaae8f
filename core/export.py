"""Georeferencing and export: ENU results -> target CRS, GeoPackage layers, PLY, summary.

The solver works in a local ENU frame; only here do coordinates go to the target CRS (pyproj).
Without GPS the frame is local: layers are written without a CRS rather than with a wrong one.
"""
import numpy as np

from .camera import angles_from_rotation, focal_source_words
from .footprints import coverage_stats, flight_area, ground_footprint, gsd_cm, polygon_area
from .geo import to_ellipsoidal, vertical_reference
from .georef import capture_seconds
from .gpkg import Layer, write_geopackage
from .reconstruction import umeyama
from .residual_grid import residual_grids
from .sanity import sanity_checks
from .workspace import atomic_output

CAMERA_FIELDS = [
    ("image", "str"), ("registered", "bool"), ("status", "str"), ("problem", "str"),
    ("yaw", "real"), ("pitch", "real"), ("roll", "real"), ("focal_px", "real"), ("k1", "real"), ("k2", "real"),
    ("n_observations", "int"), ("reproj_rmse_px", "real"),
    ("gps_dx", "real"), ("gps_dy", "real"), ("gps_dz", "real"), ("component", "int"),
    ("capture_time", "str"), ("path", "str"),
]
POINT_FIELDS = [("point_id", "int"), ("track_length", "int"), ("reproj_px", "real"),
                ("red", "int"), ("green", "int"), ("blue", "int")]
PAIR_FIELDS = [("image_a", "str"), ("image_b", "str"), ("inliers", "int"), ("model", "str")]


class _ToCrs:
    """ENU -> output coordinates: the target CRS when georeferenced, else the local ENU frame itself."""

    def __init__(self, frame, crs):
        self.frame, self.crs = frame, crs

    def __call__(self, enu):
        enu = np.atleast_2d(np.asarray(enu, dtype=np.float64))
        if self.frame is None or len(enu) == 0:
            return enu.copy()
        return self.frame.to_crs(enu, self.crs)


def write_results(paths, priors, usable, problems, recon, pair_matches, frame, crs, config, warnings,
                  extra_layers=()):
    """Write the GeoPackage and PLY; return the summary (without timings). `problems`: usable index -> text.
    extra_layers: more gpkg.Layer objects in the target CRS (e.g. control_points)."""
    to_crs = _ToCrs(frame, crs)
    index_of = {p.path: i for i, p in enumerate(usable)}
    cam_xyz = np.full((len(usable), 3), np.nan)
    if recon.registered.any():
        cam_xyz[recon.registered] = to_crs(recon.C[recon.registered])

    points_xyz = to_crs(recon.points) if len(recon.points) else np.zeros((0, 3))
    footprints = _footprints(usable, recon)
    flown = flight_area(recon.C[recon.registered, :2])
    layers = [
        _cameras_layer(priors, index_of, problems, recon, cam_xyz, frame, to_crs),
        _footprints_layer(footprints, to_crs, metric=frame is not None),
        _points_layer(recon, points_xyz),
        _pairs_layer(usable, pair_matches, recon, cam_xyz),
        *extra_layers,
    ]
    vref = None
    if frame is not None and frame.plain_heights is not None:
        vref = vertical_reference(crs, frame.plain_heights, frame.offset_m,
                                  assumed=config.altitude_reference == "egm96" and not config.altitude_offset_m)
    height_reference = vref["output"] if vref else \
        "EXIF GPSAltitude as recorded (roughly above mean sea level on DJI photos), not converted"
    # Each layer states its heights' reference (QGIS 3.22 shows a compound CRS by its horizontal part).
    write_geopackage(paths["gpkg"], crs, layers, description=f"AlignKit result; heights (Z, ground_z): {height_reference}")
    write_ply(paths["ply"], points_xyz, recon.point_rgb)

    registered = int(recon.registered.sum())
    height = _height_above_ground(recon)
    models, calibration_warnings = _camera_models(usable, recon, height)
    capture_s = np.array([np.nan if (c := capture_seconds(p)) is None else c for p in usable])
    figures, sanity_warnings = sanity_checks(recon, usable, capture_s)
    return {
        "images": len(priors),
        "usable": len(usable),
        "registered": registered,
        "components": int(len(set(recon.component[recon.registered].tolist()))),
        "points": int(len(recon.points)),
        "mean_track_length": float(len(recon.obs_point) / max(len(recon.points), 1)),  # photos per point
        "mean_reproj_px": float(recon.mean_reproj_px),
        "gps_fit_rmse_m": _gps_fit_rmse(recon),
        "gps_fit_rmse_drift_corrected_m": _gps_fit_rmse(recon, drift_corrected=True),
        "gps_residual_rmse_m": _gps_rmse(recon),
        "gps_sigma_h_m": _float_or_none(recon.gps_sigma_h_m),
        "gps_sigma_v_m": _float_or_none(recon.gps_sigma_v_m),
        "crs": crs,
        "georeferenced": frame is not None,
        "frame": frame.to_dict() if frame is not None else None,
        "height_reference": height_reference,
        "vertical_reference": vref,
        **figures,
        "pairs_verified": len(pair_matches),
        "camera_models": models,
        "residual_grid": residual_grids(usable, recon),  # mean image residual per sensor cell, per model
        "height_above_ground_m": height,
        **_coverage_summary(footprints, metric=frame is not None, flown=flown),
        "warnings": list(warnings) + calibration_warnings + sanity_warnings,
        "log": list(recon.log),
        "outputs": {k: str(v) for k, v in paths.items()},
        "config": config.to_dict(),
    }


def _height_above_ground(recon):
    """Median camera height minus median sparse-point height (m in ENU; scaled units without GPS)."""
    if not recon.registered.any() or not len(recon.points):
        return None
    return float(np.median(recon.C[recon.registered, 2]) - np.median(recon.points[:, 2]))


def _camera_models(usable, recon, height):
    """Per camera model: the prior focal (EXIF or the user's), the adjusted one, distortion, whether it was held.

    A held focal means the photos could not determine it (the focal/flying-height trade-off of nadir
    blocks), so every height above ground rests on the EXIF focal: that earns a warning with what
    1 % of focal error costs in ground height here."""
    models, warnings = {}, []
    for i, p in enumerate(usable):
        if not recon.registered[i]:
            continue
        m = models.setdefault(p.camera_key, {
            "camera": p.camera_key, "images": 0, "focal_source": p.focal_source,
            "focal_prior_px": float(p.focal_px), "focal_px": float(recon.focal[i]),
            "focal_change_percent": 100.0 * (float(recon.focal[i]) / float(p.focal_px) - 1.0),
            "k1": float(recon.k1[i]), "k2": float(recon.k2[i]),
            "focal_held": bool(np.isfinite(recon.focal_rejected_px[i])),
            "focal_self_calibrated_px": _float_or_none(recon.focal_rejected_px[i]),
            "distortion_held": bool(len(recon.distortion_held) and recon.distortion_held[i]),
            "distortion_evidence": _float_or_none(recon.distortion_wald[i]) if len(recon.distortion_wald) else None,
        })
        m["images"] += 1
    for m in models.values():
        if not m["focal_held"]:
            continue
        text = (f"{m['camera']}: the photos do not determine the focal length (self-calibration ran off to "
                f"{m['focal_self_calibrated_px']:.0f} px, {100 * (m['focal_self_calibrated_px'] / m['focal_prior_px'] - 1):+.0f}% "
                f"from its prior: focal and flying height trade off on nadir blocks); it is held at "
                f"{focal_source_words(m['focal_source'])}, {m['focal_prior_px']:.0f} px.")
        if height is not None and recon.georeferenced:
            text += (f" Heights above ground scale with it: each 1% of focal error moves the ground "
                     f"{height / 100:.2f} m (cameras {height:.0f} m above it). For survey-grade heights give a "
                     f"calibrated focal length (the dock's Advanced › Focal length, FOCAL_PX in Processing) or add oblique photos.")
        warnings.append(text)
    return list(models.values()), warnings


def _float_or_none(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _gps_rmse(recon):
    """RMSE of adjusted minus EXIF GPS positions (the layer's gps_dx/dy/dz), metres."""
    r = recon.gps_residual[recon.registered]
    r = r[np.isfinite(r).all(axis=1)]
    return float(np.sqrt(np.mean(np.sum(r**2, axis=1)))) if len(r) else None


def _gps_fit_rmse(recon, drift_corrected=False):
    """RMSE of the camera centres to their GPS positions after the best similarity transform.

    The figure COLMAP's model_aligner reports: how well the block's shape agrees with the GPS,
    whatever the georeferencing. Largest component; None with fewer than 3 GPS positions.
    drift_corrected: against the GPS minus the drift the adjustment estimated (the same without one).
    """
    ok = recon.registered & np.isfinite(recon.gps_residual).all(axis=1)
    if ok.sum() < 3:
        return None
    comps, counts = np.unique(recon.component[ok], return_counts=True)
    ok &= recon.component == comps[counts.argmax()]
    centres = recon.C[ok]
    gps = centres - recon.gps_residual[ok]
    if drift_corrected and len(recon.gps_drift):
        gps = gps - recon.gps_drift[ok]
    scale, rot, t = umeyama(centres, gps)
    r = scale * centres @ rot.T + t - gps
    return float(np.sqrt(np.mean(np.sum(r**2, axis=1))))


def _cameras_layer(priors, index_of, problems, recon, cam_xyz, frame, to_crs):
    feats = []
    for prior in priors:
        i = index_of.get(prior.path)
        attrs = {"image": prior.name, "path": prior.path, "capture_time": prior.capture_time,
                 "status": prior.status, "problem": "; ".join(prior.problems) or None,
                 "registered": False, "component": -1}
        geom = None
        if i is not None and recon.registered[i]:
            yaw, pitch, roll = angles_from_rotation(recon.R[i])
            dx, dy, dz = recon.gps_residual[i]
            attrs.update(
                registered=True, status="registered", yaw=yaw, pitch=pitch, roll=roll,
                focal_px=recon.focal[i], k1=recon.k1[i], k2=recon.k2[i],
                n_observations=int(recon.n_obs[i]), reproj_rmse_px=recon.reproj_rmse_px[i],
                gps_dx=_float_or_none(dx), gps_dy=_float_or_none(dy), gps_dz=_float_or_none(dz),
                component=int(recon.component[i]),
            )
            geom = tuple(cam_xyz[i])
        else:
            if i is not None:
                attrs["status"] = "not registered"
                attrs["problem"] = problems.get(i) or attrs["problem"] or "not enough verified matches to register"
            if frame is not None and prior.lat is not None and prior.gps_alt is not None:
                alt = prior.gps_alt
                if frame.plain_heights is not None:  # the frame's geodetic heights are ellipsoidal
                    alt = to_ellipsoidal(prior.lat, prior.lon, alt, frame.plain_heights, frame.offset_m)
                geom = tuple(to_crs(frame.to_enu([prior.lat], [prior.lon], [alt]))[0])
        feats.append((geom, attrs))
    return Layer("cameras", "PointZ", CAMERA_FIELDS, feats)


def _footprints(usable, recon):
    """[(name, ENU polygon (M, 3), ground_z, gsd_cm)] of the registered photos: the image border's rays on
    a plane at the median height of the points the photo sees; GSD from the camera's adjusted height
    above that plane and its adjusted focal."""
    out = []
    order = np.argsort(recon.obs_image, kind="stable")  # each photo's observations, without a scan per photo
    bounds = np.searchsorted(recon.obs_image[order], np.arange(len(usable) + 1))
    global_ground = np.median(recon.points[:, 2]) if len(recon.points) else 0.0
    for i, p in enumerate(usable):
        if not recon.registered[i]:
            continue
        seen = recon.obs_point[order[bounds[i]:bounds[i + 1]]]
        ground_z = float(np.median(recon.points[seen, 2]) if len(seen) >= 10 else global_ground)
        K = np.array([[recon.focal[i], 0, p.K()[0, 2]], [0, recon.focal[i], p.K()[1, 2]], [0, 0, 1.0]])
        poly = ground_footprint(K, recon.R[i], recon.C[i], ground_z, p.width, p.height,
                                dist=(recon.k1[i], recon.k2[i]))
        if poly is not None:
            out.append((p.name, poly, ground_z, gsd_cm(recon.C[i][2] - ground_z, recon.focal[i])))
    return out


FOOTPRINT_FIELDS = [("image", "str"), ("ground_z", "real"), ("gsd_cm", "real"), ("area_m2", "real")]


def _footprints_layer(footprints, to_crs, metric=True):
    """The footprints in the output CRS. gsd_cm and area_m2 are measured in the ENU frame (true metres);
    without GPS (`metric` False) the frame's scale is arbitrary and they are left empty."""
    if not footprints:
        return Layer("footprints", "Polygon", FOOTPRINT_FIELDS, [])
    # One transformation for every vertex and centre: per footprint it cost ~45 ms at 1,000 photos.
    rows = [np.vstack([poly, [np.r_[poly[:, :2].mean(axis=0), ground_z]]]) for _, poly, ground_z, _ in footprints]
    ends = np.cumsum([len(r) for r in rows])
    feats = []
    for (name, poly, _, gsd), out in zip(footprints, np.split(to_crs(np.vstack(rows)), ends[:-1])):
        ring = [tuple(c[:2]) for c in out[:-1]]
        # ground_z in the layers' vertical reference (that of every other height), at the footprint's centre
        feats.append(([ring], {"image": name, "ground_z": float(out[-1, 2]),
                               "gsd_cm": float(gsd) if metric else None,
                               "area_m2": polygon_area(poly[:, :2]) if metric else None}))
    return Layer("footprints", "Polygon", FOOTPRINT_FIELDS, feats)


def _coverage_summary(footprints, metric=True, flown=None):
    """gsd_cm_median, area_covered_m2 (union of the footprints), overlap_median (photos per ground point
    over the covered area), area_below_5_photos_percent, overlap_median_flight_area (the same median
    inside `flown`, the hull of the camera positions). Lengths and areas None without GPS."""
    stats = coverage_stats([poly[:, :2] for _, poly, _, _ in footprints], inner=flown)
    gsd = [g for _, _, _, g in footprints]
    stats["gsd_cm_median"] = float(np.median(gsd)) if gsd and metric else None
    if not metric:
        stats["area_covered_m2"] = None
    return stats


def _points_layer(recon, xyz):
    track_length = np.bincount(recon.obs_point, minlength=len(recon.points))
    feats = [
        (tuple(xyz[k]), {"point_id": k, "track_length": int(track_length[k]),
                         "reproj_px": float(recon.point_error_px[k]),
                         "red": int(recon.point_rgb[k, 0]), "green": int(recon.point_rgb[k, 1]),
                         "blue": int(recon.point_rgb[k, 2])})
        for k in range(len(xyz))
    ]
    return Layer("sparse_points", "PointZ", POINT_FIELDS, feats)


def _pairs_layer(usable, pair_matches, recon, cam_xyz):
    feats = []
    for pm in pair_matches:
        a, b = cam_xyz[pm.i], cam_xyz[pm.j]
        geom = [tuple(a[:2]), tuple(b[:2])] if np.isfinite(a).all() and np.isfinite(b).all() else None
        feats.append((geom, {"image_a": usable[pm.i].name, "image_b": usable[pm.j].name,
                             "inliers": int(pm.n_inliers), "model": pm.model}))
    return Layer("pairs", "LineString", PAIR_FIELDS, feats)


def write_ply(path, xyz, rgb):
    """Binary little-endian PLY: double x, y, z (projected coordinates need double) and uchar colour."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment AlignKit sparse point cloud\n"
        f"element vertex {len(xyz)}\nproperty double x\nproperty double y\nproperty double z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    ).encode("ascii")
    rec = np.zeros(len(xyz), dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"),
                                    ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["r"], rec["g"], rec["b"] = rgb.T

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(rec.tobytes())

    atomic_output(path, write)
