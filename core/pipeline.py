"""The photo-alignment job: one entry point, `run(config, progress, is_canceled)`.

Stages run in order and keep their products in the workspace (features/, matches/, ...), each
file stamped with the settings and input file it came from. A rerun reuses what is complete and
still valid (a killed or cancelled run resumes); products of other settings are redone, never mixed in.
"""
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import camera, dem, export, features, georef, matching, pairs, reconstruction, tracks, workspace
from .cancel import check
from .config import AlignConfig
from .control import read_control
from .control_report import run_control
from .executor import make_executor
from .geo import LocalFrame, to_ellipsoidal, utm_crs_for

log = logging.getLogger("alignkit")

# Share of the progress bar per stage, roughly their share of the run time.
_WEIGHTS = {"priors": 0.02, "features": 0.5, "pairs": 0.01, "matching": 0.25, "tracks": 0.02,
            "reconstruction": 0.17, "export": 0.03}


class AlignmentError(Exception):
    """The job cannot produce a result (bad input, too few usable photos); the message says why."""


def output_paths(config):
    out = Path(config.output)
    stem = out.with_suffix("")
    return {
        "gpkg": out,
        "summary": Path(f"{stem}_summary.json"),
        "ply": Path(f"{stem}_sparse.ply"),
        "report": Path(f"{stem}_report.html"),
        "workspace": Path(config.workspace) if config.workspace else Path(f"{stem}_workspace"),
    }


class _Progress:
    """Maps each stage's 0..1 progress onto the whole run, so the bar moves smoothly and never back."""

    def __init__(self, callback):
        self.callback = callback or (lambda fraction, message: None)
        self.done = 0.0
        self.stage = None

    def start(self, stage, message):
        if self.stage is not None:
            self.done += _WEIGHTS[self.stage]
        self.stage = stage
        self.callback(min(self.done, 1.0), message)

    def __call__(self, fraction, message=""):
        self.callback(min(self.done + _WEIGHTS[self.stage] * max(0.0, min(1.0, fraction)), 1.0), message)


def run(config: AlignConfig, progress=None, is_canceled=None):
    """Align the photos of `config.images` and write the results; returns the summary dict."""
    t_start = time.perf_counter()
    timings = {}
    report = _Progress(progress)
    paths = output_paths(config)
    if config.focal_px < 0:
        raise AlignmentError(f"focal_px must be positive (or 0 for the EXIF focal), got {config.focal_px}")
    _check_paths(config, paths)
    ws = paths["workspace"]

    # --- priors ---
    report.start("priors", "Reading EXIF/XMP priors")
    t = time.perf_counter()
    priors = camera.read_priors(config.images)
    if config.focal_px:  # the user's calibration replaces EXIF's (a nadir block cannot self-calibrate it)
        readable = [p for p in priors if p.status != "unusable"]
        cameras = sorted({p.camera_key for p in readable})
        if len(cameras) > 1:
            raise AlignmentError(
                f"{config.images}: a given focal length applies to every photo, but these come from "
                f"{len(cameras)} cameras ({'; '.join(cameras)}); align each camera's photos separately"
            )
        for p in readable:
            p.focal_px, p.focal_source = float(config.focal_px), "user"
    # In capture order: the reconstruction reads the flight direction from consecutive GPS positions.
    usable = sorted((p for p in priors if p.status != "unusable" and p.focal_px),
                    key=lambda p: (p.capture_time or "", p.name))
    if len(usable) < 2:
        problems = "; ".join(f"{p.name}: {', '.join(p.problems)}" for p in priors if p not in usable)
        raise AlignmentError(
            f"{config.images}: {len(usable)} usable photo(s), at least 2 are needed"
            + (f" ({problems})" if problems else "")
        )
    has_gps = np.array([p.lat is not None and p.lon is not None and p.gps_alt is not None for p in usable])
    warnings = []
    if has_gps.sum() >= 3:
        lat, lon, alt = np.array([(p.lat, p.lon, p.gps_alt) for p, g in zip(usable, has_gps) if g]).T
        try:  # the frame is built on ellipsoidal heights; layers get them back in the stated reference
            alt = to_ellipsoidal(lat, lon, alt, config.altitude_reference, config.altitude_offset_m)
        except ValueError as exc:
            raise AlignmentError(f"{config.images}: GPS altitudes: {exc}") from exc
        frame = LocalFrame.centred_on(lat, lon, alt, plain_heights=config.altitude_reference,
                                      offset_m=config.altitude_offset_m)
        gps_enu = np.full((len(usable), 3), np.nan)
        gps_enu[has_gps] = frame.to_enu(lat, lon, alt)
        crs = config.target_crs or utm_crs_for(frame.lon0, frame.lat0)
    else:
        frame, crs = None, None
        gps_enu = np.full((len(usable), 3), np.nan)
        warnings.append(
            "fewer than 3 photos have GPS: the result is in a local frame (arbitrary scale and "
            "orientation), NOT georeferenced; the layers carry no CRS"
        )
        log.warning(warnings[-1])
    if config.gcp_file:  # a bad control file fails now, not after the expensive stages
        try:
            read_control(config.gcp_file, {p.name: (p.width, p.height) for p in priors if p.width > 0},
                         config.check_points)
        except ValueError as exc:
            raise AlignmentError(str(exc)) from None
    if config.reference_dem:
        try:
            dem.open_dem(config.reference_dem)
        except ValueError as exc:
            raise AlignmentError(str(exc)) from None
    timings["priors_s"] = time.perf_counter() - t
    check(is_canceled)
    ws.mkdir(parents=True, exist_ok=True)  # after the checks: a run refused for bad input leaves nothing

    executor = make_executor(config.workers)
    try:
        # --- features ---
        report.start("features", f"Extracting SIFT features from {len(usable)} photos")
        t = time.perf_counter()
        store = features.extract_features([p.path for p in usable], ws, config, executor, report, is_canceled)
        timings["extract_s"] = time.perf_counter() - t

        # --- candidate pairs ---
        report.start("pairs", "Selecting candidate pairs")
        t = time.perf_counter()
        footprint_radius = _footprint_radius(usable)
        candidates = pairs.candidate_pairs(
            gps_enu, footprint_radius, [p.capture_time for p in usable], config, store=store
        )
        timings["pairs_s"] = time.perf_counter() - t

        # --- matching ---
        report.start("matching", f"Matching {len(candidates)} candidate pairs")
        t = time.perf_counter()
        Ks = np.stack([p.K() for p in usable])
        pair_matches = matching.match_pairs(
            store, candidates, Ks, config, executor, report, is_canceled, workspace_dir=ws
        )
        timings["match_s"] = time.perf_counter() - t
    finally:
        executor.close()

    # --- tracks ---
    report.start("tracks", "Building tracks")
    t = time.perf_counter()
    track_set = tracks.build_tracks(pair_matches, store)
    timings["tracks_s"] = time.perf_counter() - t
    check(is_canceled)

    # --- reconstruction and bundle adjustment ---
    report.start("reconstruction", "Incremental reconstruction and bundle adjustment")
    t = time.perf_counter()
    cams = [{"K": p.K(), "width": p.width, "height": p.height, "camera_key": p.camera_key,
             "capture_s": georef.capture_seconds(p), "up_cam": georef.recorded_up(p)} for p in usable]
    recon_path = ws / "reconstruction.npz"
    stamp = _reconstruction_stamp(track_set, cams, gps_enu, config)
    recon = _load_reconstruction(recon_path, stamp)
    if recon is None:
        recon = reconstruction.reconstruct(track_set, cams, gps_enu, pair_matches, config, report, is_canceled)
        _save_reconstruction(recon, recon_path, stamp)
    else:
        report(1.0, "Reusing the reconstruction in the workspace")
    # What the GCP marking dialog needs to predict a point's pixels from the saved reconstruction.
    workspace.write_json(ws / "cameras.json", {
        "frame": frame.to_dict() if frame is not None else None, "crs": crs,
        "images": [{"name": p.name, "width": p.width, "height": p.height} for p in usable]})
    timings["reconstruct_s"] = time.perf_counter() - t
    if not recon.registered.any():
        raise AlignmentError(f"{config.images}: no photos could be registered (too few verified matches)")
    problems = {i: f"could not read the image: {msg}" for i, msg in store.errors.items()}

    # --- ground control: a final adjustment, always from the saved reconstruction (cheap to redo) ---
    control = None
    if config.gcp_file:
        t = time.perf_counter()
        report(1.0, "Adjusting with ground control")
        try:
            recon, control = run_control(config, priors, usable, recon, cams, gps_enu, frame, crs, is_canceled)
        except ValueError as exc:
            raise AlignmentError(str(exc)) from None
        warnings.extend(control["warnings"])
        timings["control_s"] = time.perf_counter() - t
    dem_fit = None
    if config.reference_dem:  # vertical control from a raster; with control points only reported
        try:
            recon, dem_fit = dem.tie_to_dem(recon, frame, config.reference_dem, apply=control is None)
        except ValueError as exc:
            raise AlignmentError(str(exc)) from None
        if control:
            warnings.append("reference DEM: fit reported only, the control points decide the heights")

    # --- export ---
    report.start("export", "Writing GeoPackage, PLY and summary")
    t = time.perf_counter()
    summary = export.write_results(
        paths, priors, usable, problems, recon, pair_matches, frame, crs, config, warnings,
        extra_layers=[control["layer"]] if control else (),
    )
    if control:
        summary["control_rmse_m"], summary["check_rmse_m"] = control["control_rmse_m"], control["check_rmse_m"]
        summary["control_points"] = control["rows"]
        summary["control_focal_freed"] = control["control_focal_freed"]
    if dem_fit:
        summary["reference_dem_fit"] = dem_fit
    summary["pairs_candidate"] = len(candidates)
    timings["export_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    summary.update(timings)
    _write_summary_and_report(paths, summary)
    report(1.0, f"Done: {summary['registered']}/{summary['images']} photos registered")
    return summary


def _check_paths(config, paths):
    images = Path(config.images)
    if not images.is_dir():
        raise AlignmentError(f"image folder does not exist: {images}")
    if not config.output:
        raise AlignmentError("no output GeoPackage given")
    if paths["gpkg"].suffix.lower() != ".gpkg":
        raise AlignmentError(f"output must be a .gpkg file: {paths['gpkg']}")
    images_real = os.path.realpath(images)
    for key in ("gpkg", "workspace"):
        target = os.path.realpath(paths[key])
        if target == images_real or target.startswith(images_real + os.sep):
            raise AlignmentError(f"the {key} {paths[key]} is inside the image folder, which is never written to")


def _footprint_radius(priors):
    """Half-diagonal of each photo's ground footprint (m) from relative altitude and focal; NaN if unknown."""
    radius = np.full(len(priors), np.nan)
    for i, p in enumerate(priors):
        if p.rel_alt and p.rel_alt > 0 and p.focal_px:
            radius[i] = 0.5 * np.hypot(p.width, p.height) / p.focal_px * p.rel_alt
    return radius


def _reconstruction_stamp(track_set, cams, gps_enu, config):
    """Identifies the inputs of a reconstruction, so a saved one is reused only for the same inputs."""
    h = hashlib.sha1()
    for a in (track_set.obs_track, track_set.obs_image, track_set.obs_xy, gps_enu,
              np.stack([c["K"] for c in cams])):
        h.update(np.ascontiguousarray(a).tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_AFFECTING_RECONSTRUCTION}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


_NOT_AFFECTING_RECONSTRUCTION = {"images", "output", "workspace", "target_crs", "workers",
                                  "gcp_file", "check_points", "reference_dem"}  # final steps after it


def _save_reconstruction(recon, path, stamp):
    arrays = {f.name: getattr(recon, f.name) for f in dataclasses.fields(recon)
              if isinstance(getattr(recon, f.name), np.ndarray)}
    meta = {f.name: getattr(recon, f.name) for f in dataclasses.fields(recon) if f.name not in arrays}
    meta["stamp"] = stamp
    workspace.write_npz(path, meta=np.array([json.dumps(meta, default=workspace.json_default)]), **arrays)


def _load_reconstruction(path, stamp=None):
    """The saved reconstruction when it was made from the same inputs (any, when stamp is None), else None."""
    if not path.exists():
        return None
    data = workspace.read_npz(path)
    meta = json.loads(str(data.pop("meta")[0]))
    if meta.pop("stamp") != stamp and stamp is not None:
        return None
    return reconstruction.Reconstruction(**data, **meta)


def _write_summary_and_report(paths, summary):
    """The summary JSON, then the HTML report built from it. The report is optional (matplotlib):
    its failure never discards a finished alignment; the summary then says why it is missing."""
    workspace.write_json(paths["summary"], summary)
    try:
        from .report import write_report

        write_report(paths["gpkg"], paths["summary"], paths["report"])
    except Exception as exc:  # noqa: BLE001
        log.warning("quality report not written: %s", exc)
        del summary["outputs"]["report"]
        summary["warnings"].append(f"quality report not written: {exc}")
        workspace.write_json(paths["summary"], summary)
