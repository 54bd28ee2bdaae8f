"""The photo-alignment job: one entry point, `run(config, progress, is_canceled)`.

Stages run in order and keep their products in the workspace (features/, matches/, ...), each
file stamped with the settings and input file it came from. A rerun reuses what is complete and
still valid (a killed or cancelled run resumes); products of other settings are redone, never mixed in.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import (
    camera,
    dem,
    export,
    features,
    georef,
    matching,
    pairs,
    reconstruction,
    submodels,
    tracks,
    workspace,
)
from .camera_export import write_camera_exports
from .cancel import check
from .cloud import clean_cloud
from .config import AlignConfig
from .control import read_control
from .control_report import run_control
from .executor import ExecutorError, make_executor
from .geo import LocalFrame, to_ellipsoidal, utm_crs_for
from .verdict import assess

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
    """Align the photos of `config.images` and write the results; returns the summary dict.

    What can be checked before the work is checked first (an output that is a folder, an output
    folder or workspace that cannot be written: AlignmentError naming the path). A run holds a lock
    on its output and on its workspace: a second run on either is refused at once, with the path
    and the other run's PID (it does not wait: a queued run would look like a hang). Temporaries
    that a killed run left behind are removed under the lock.
    """
    if config.focal_px < 0:
        raise AlignmentError(f"focal_px must be positive (or 0 for the EXIF focal), got {config.focal_px}")
    paths = output_paths(config)
    _check_paths(config, paths)
    with _run_locks(paths):
        try:
            return _run(config, progress, is_canceled)
        except OSError as exc:  # a file that could not be written after all: name it, no traceback
            raise AlignmentError(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)) from exc


def _run(config, progress, is_canceled):
    t_start = time.perf_counter()
    timings = {}
    report = _Progress(progress)
    paths = output_paths(config)
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
    _leave_out_duplicates(priors)
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

    try:  # a Dask scheduler out of reach, or a workspace its workers do not see: refused before any work
        executor = make_executor(config.workers, config.executor, shared=(ws, config.images))
    except ExecutorError as exc:
        raise AlignmentError(str(exc)) from None
    timings["executor"] = executor.description
    try:
        # --- features ---
        n_done = features.count_complete([p.path for p in usable], ws, config)
        report.start("features", f"Reusing the SIFT features of all {n_done} photos from the workspace"
                     if n_done == len(usable) else f"Extracting SIFT features from {len(usable) - n_done} photos"
                     + (f" (reusing {n_done} of {len(usable)} from the workspace)" if n_done else ""))
        t = time.perf_counter()
        store = features.extract_features([p.path for p in usable], ws, config, executor, report, is_canceled)
        timings["extract_s"] = time.perf_counter() - t
        reused = {"features": [usable[i].name for i, e in enumerate(store.images) if e.get("skipped")]}
        _log_reuse(report, "features", len(reused["features"]), len(usable), "photos")

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
        before = _pair_files(ws, candidates)
        pair_matches = matching.match_pairs(
            store, candidates, Ks, config, executor, report, is_canceled, workspace_dir=ws
        )
        timings["match_s"] = time.perf_counter() - t
        after = _pair_files(ws, candidates)
        reused["pairs"] = sum(1 for key, stamp in after.items() if before.get(key) == stamp)
        _log_reuse(report, "matching", reused["pairs"], len(after), "pairs")
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
             "focal_source": p.focal_source, "capture_s": georef.capture_seconds(p),
             "up_cam": georef.recorded_up(p)} for p in usable]
    recon_path = ws / "reconstruction.npz"
    stamp = _reconstruction_stamp(track_set, cams, gps_enu, config)
    recon = _load_reconstruction(recon_path, stamp)
    reused["reconstruction"] = recon is not None
    if recon is None:
        recon = submodels.reconstruct_split(
            track_set, cams, gps_enu, pair_matches, config,
            lambda: make_executor(config.workers, config.executor, shared=(ws, config.images)),
            _submodel_overlap(footprint_radius), report, is_canceled,
            read_gray=features.WorkingGray(tuple(p.path for p in usable), config.max_image_size),
            cache=(ws / "submodels", stamp))
        _save_reconstruction(recon, recon_path, stamp)
    else:
        report(1.0, "Reusing the reconstruction in the workspace")
        log.info("reconstruction: reused the one in the workspace (same tracks, priors and settings)")
    # What the GCP marking dialog needs to predict a point's pixels from the saved reconstruction.
    workspace.write_json(ws / "cameras.json", {
        "frame": frame.to_dict() if frame is not None else None, "crs": crs,
        "images": [{"name": p.name, "width": p.width, "height": p.height} for p in usable]})
    timings["reconstruct_s"] = time.perf_counter() - t
    if not recon.registered.any():
        raise AlignmentError(f"{config.images}: no photos could be registered (too few verified matches)")
    problems = {i: f"could not read the image: {msg}" for i, msg in store.errors.items()}
    warnings += _photo_warnings(priors, usable, problems, recon)
    recon, n_stray = clean_cloud(recon)  # after the workspace copy: a rerun cleans again, cheaply

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
    summary["outputs"].update(write_camera_exports(paths["gpkg"], usable, recon, frame, crs))
    summary["pairs_candidate"] = len(candidates)
    summary["stray_points_removed"] = n_stray
    summary["reused"] = reused
    summary["warnings"] += _focal_source_warnings(summary.get("camera_models") or [], usable)
    timings["export_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    summary.update(timings)
    summary.update(assess(summary, recon, config, [p.name for p in usable]))
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
    for key in ("gpkg", "summary", "ply", "report"):
        if paths[key].is_dir():
            raise AlignmentError(f"the output {paths[key]} is a folder; give a file name ending in .gpkg")
    if paths["workspace"].exists() and not paths["workspace"].is_dir():
        raise AlignmentError(f"the workspace {paths['workspace']} is a file, not a folder")


@contextlib.contextmanager
def _run_locks(paths):
    """Create the output folder and the workspace, lock both (the lock files are the proof that both
    can be written), and clear what interrupted runs left there."""
    gpkg, ws = paths["gpkg"], paths["workspace"]
    created = not ws.exists()
    try:
        with _locked(paths, gpkg, ws):
            yield
    finally:
        if created:  # a run that failed before writing anything leaves no empty workspace behind
            with contextlib.suppress(OSError):
                ws.rmdir()  # only succeeds when empty


@contextlib.contextmanager
def _locked(paths, gpkg, ws):
    with contextlib.ExitStack() as stack:
        for folder, lock, what in ((gpkg.parent, Path(f"{gpkg}{workspace.LOCK_SUFFIX}"), f"the output {gpkg}"),
                                   (ws, ws / workspace.LOCK_SUFFIX, f"the workspace {ws}")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                stack.enter_context(workspace.exclusive_lock(lock, what))
            except workspace.LockedError as exc:
                raise AlignmentError(f"{exc}; wait for it to finish or choose another output") from exc
            except OSError as exc:
                name = "output folder" if folder == gpkg.parent else "workspace"
                raise AlignmentError(f"cannot write in the {name} {folder}: {exc.strerror or exc}") from exc
        removed = [name for key in ("gpkg", "summary", "ply", "report")
                   for name in workspace.remove_temporaries(gpkg.parent, workspace.temporaries_of(paths[key]))]
        for folder in [ws] + [p for p in ws.iterdir() if p.is_dir()]:
            removed += workspace.remove_temporaries(folder)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run", len(removed))
        yield


def _leave_out_duplicates(priors):
    """Mark exact duplicates (same file content) unusable, naming the photo they repeat: a photo
    matched with its own copy is a degenerate pair and adds nothing."""
    sizes = {}
    for p in priors:
        with contextlib.suppress(OSError):
            sizes.setdefault(os.path.getsize(p.path), []).append(p)
    same_size = {id(p) for group in sizes.values() if len(group) > 1 for p in group}  # only these are read
    first_of = {}
    for p in sorted(priors, key=lambda q: (len(q.name), q.name)):  # "a.jpg" is kept, "a copy.jpg" left out
        if p.status == "unusable" or id(p) not in same_size:
            continue
        digest = hashlib.blake2b(digest_size=16)
        try:
            with open(p.path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            continue  # reported by the feature stage
        original = first_of.setdefault((p.width, p.height, digest.hexdigest()), p)
        if original is not p:
            p.status = "unusable"
            p.problems.append(f"exact duplicate of {original.name} (same file content): left out")


def _photo_warnings(priors, usable, problems, recon, most=10):
    """Plain-language warnings for the photos that are not in the result, each with its reason."""
    used = {id(p) for p in usable}
    # The last problem is the one that made the photo unusable (the earlier ones are notes).
    lines = [f"{p.name}: not used: {p.problems[-1] if p.problems else 'no focal length'}"
             for p in priors if id(p) not in used]
    lines += [f"{usable[i].name}: not used: {text}" for i, text in sorted(problems.items())]
    lines = lines[:most] + ([f"... and {len(lines) - most} more photos not used (see the cameras layer)"]
                            if len(lines) > most else [])
    lost = [p.name for i, p in enumerate(usable) if not recon.registered[i] and i not in problems]
    if lost:
        shown = ", ".join(lost[:most]) + (f" and {len(lost) - most} more" if len(lost) > most else "")
        lines.append(f"{len(lost)} photo(s) not registered (not connected to the block by enough verified "
                     f"matches: another subject, or too little overlap): {shown}")
    for line in lines:
        log.warning(line)
    return lines


def _focal_source_warnings(models, usable):
    """Say where a focal that EXIF did not give came from: borrowed from a named photo, or guessed."""
    lines = []
    for m in models:
        if m.get("focal_source") == camera.GUESS_SOURCE:
            lines.append(f"{m['camera']}: no focal length in EXIF and no identical camera with one in the folder: "
                         f"the focal was a guess ({m['focal_prior_px']:.0f} px, {camera.FALLBACK_FOCAL_FACTOR} x the "
                         f"long side), left free to self-calibrate: {m['focal_px']:.0f} px "
                         f"({m['focal_change_percent']:+.0f}%). Heights and scale rest on the photos alone; give a "
                         "calibrated focal length (Advanced › Focal length, FOCAL_PX) for survey work.")
        elif m.get("focal_source") == "borrowed":
            note = next((q for p in usable if p.camera_key == m["camera"] for q in p.problems
                         if q.startswith("focal length unknown: borrowed")), "borrowed from an identical camera")
            lines.append(f"{m['camera']}: {note}")
    for line in lines:
        log.warning(line)
    return lines


def _pair_files(ws, candidates):
    """(size, mtime) of the match file of each candidate pair that has one."""
    stamps = {}
    for a, b in candidates:
        path = matching.pair_path(ws / matching.MATCHES_DIR, min(a, b), max(a, b))
        with contextlib.suppress(OSError):
            st = os.stat(path)
            stamps[(min(a, b), max(a, b))] = (st.st_size, st.st_mtime_ns)
    return stamps


def _log_reuse(report, stage, n_reused, n_total, what):
    if n_reused:
        text = f"{stage}: reused {n_reused} of {n_total} {what} from the workspace"
        log.info(text)
        report(1.0, text)


def _footprint_radius(priors):
    """Half-diagonal of each photo's ground footprint (m) from relative altitude and focal; NaN if unknown."""
    radius = np.full(len(priors), np.nan)
    for i, p in enumerate(priors):
        if p.rel_alt and p.rel_alt > 0 and p.focal_px:
            radius[i] = 0.5 * np.hypot(p.width, p.height) / p.focal_px * p.rel_alt
    return radius


def _submodel_overlap(footprint_radius):
    """How far (m) submodels reach into each other: half a photo's footprint, so that the shared band
    sees the same ground from both sides; 0 without flying heights (the cut then shares no photos)."""
    radius = np.asarray(footprint_radius, np.float64)
    radius = radius[np.isfinite(radius)]
    return 0.5 * float(np.median(radius)) if len(radius) else 0.0


def _reconstruction_stamp(track_set, cams, gps_enu, config):
    """Identifies the inputs of a reconstruction, so a saved one is reused only for the same inputs."""
    h = hashlib.sha1(usedforsecurity=False)  # an identity stamp, not security (bandit B324)
    for a in (track_set.obs_track, track_set.obs_image, track_set.obs_xy, gps_enu,
              np.stack([c["K"] for c in cams])):
        h.update(np.ascontiguousarray(a).tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_AFFECTING_RECONSTRUCTION}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


_NOT_AFFECTING_RECONSTRUCTION = {"images", "output", "workspace", "target_crs", "workers", "executor",
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
