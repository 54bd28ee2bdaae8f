"""The quality verdict of an alignment: one tick or warning per item, in a surveyor's words.

Modelled on the first page of Pix4D's quality report (images calibrated, matches per image, camera
optimisation, georeferencing): each item carries its number and the threshold it was held to, so
a reader can judge the margin. Computed from the summary alone (`quality_verdict(summary)`), so the
summary JSON, the HTML report and the dock say the same. Provenance (`provenance`) says what was
run on what, by which version.
"""
import configparser
import datetime
import os
import re

import numpy as np

from .camera import focal_source_words
from .config import PRESETS

REGISTERED_MIN_SHARE = 0.95  # Pix4D's green mark: more than 95 % of the photos calibrated
TIE_POINTS_MIN_PER_PHOTO = 500  # median observations of sparse points per registered photo
REPROJECTION_MAX_PX = 1.0  # mean reprojection error; sub-pixel is the mark of a consistent block
FOCAL_CHANGE_MAX_PERCENT = 5.0  # Pix4D's camera-optimisation mark: adjusted focal within 5 % of the initial
GPS_FIT_MAX_M = 5.0  # RMS of camera centres to their GPS after a similarity: consumer GNSS is ~1-3 m horizontally, more in height
OVERLAP_MIN_PHOTOS = 5  # Pix4D's overlap figure: ground seen by 5 or more photos is green
CONTROL_RMSE_MAX_M = 0.1  # check / control point RMSE that a survey would accept without remark


def _item(item, ok, value, threshold, text):
    return {"item": item, "ok": bool(ok), "value": value, "threshold": threshold, "text": text}


def _registered(summary):
    images, registered = summary.get("images") or 0, summary.get("registered") or 0
    components = summary.get("components") or 0
    share = registered / images if images else 0.0
    ok = share >= REGISTERED_MIN_SHARE and components == 1
    if ok:
        text = f"{registered} of {images} photos are placed in one block."
    elif components > 1:
        text = (f"{registered} of {images} photos are placed, but in {components} separate blocks that do not "
                "share a reference: fly more overlap between them, or align them separately.")
    else:
        text = (f"Only {registered} of {images} photos could be placed ({100 * share:.0f} %); the cameras table "
                "says why for each of the others.")
    return _item("Images registered", ok, f"{registered} of {images}",
                 f"at least {100 * REGISTERED_MIN_SHARE:.0f} % in one block", text)


def _tie_points(summary):
    value = summary.get("tie_points_per_image_median")
    if value is None:
        return None
    ok = value >= TIE_POINTS_MIN_PER_PHOTO
    text = (f"Each photo is tied to the block by {value:.0f} points (median)."
            if ok else f"Photos are tied to the block by only {value:.0f} points each (median): weak geometry; more "
                       "overlap, texture or the 'accurate' preset help.")
    return _item("Matches per image", ok, round(float(value)), f"at least {TIE_POINTS_MIN_PER_PHOTO} per photo", text)


def _reprojection(summary):
    value = summary.get("mean_reproj_px")
    if value is None:
        return None
    ok = value <= REPROJECTION_MAX_PX
    text = (f"The photos agree with the 3D model to {value:.2f} px on average."
            if ok else f"The photos disagree with the 3D model by {value:.2f} px on average: look for blurred photos "
                       "or moving objects, and check the camera's lens model.")
    return _item("Reprojection error", ok, round(float(value), 3), f"at most {REPROJECTION_MAX_PX:g} px", text)


def _camera(summary):
    models = summary.get("camera_models") or []
    if not models:
        return None
    worst = max(models, key=lambda m: (bool(m.get("focal_held")), abs(m.get("focal_change_percent") or 0.0)))
    change = worst.get("focal_change_percent") or 0.0
    held = bool(worst.get("focal_held"))
    ok = not held and abs(change) <= FOCAL_CHANGE_MAX_PERCENT
    name = worst.get("camera") or "the camera"
    if worst.get("focal_source") == "user" and not held:
        text = f"The focal length of {name} is held at the given calibration, {worst.get('focal_px', 0):.0f} px."
    elif held:
        height = summary.get("height_above_ground_m")
        cost = f" Each 1 % of focal error moves the ground by {height / 100:.2f} m here." if height else ""
        text = (f"The photos could not determine the focal length of {name} (the flight's geometry cannot tell it "
                f"from the flying height): it is held at {worst.get('focal_prior_px', 0):.0f} px "
                f"({focal_source_words(worst.get('focal_source'))}).{cost} Give a calibrated focal length, or add oblique photos.")
    elif ok:
        text = f"The focal length of {name} was calibrated {change:+.1f} % from its initial value."
    else:
        text = (f"The focal length of {name} moved {change:+.1f} % from its initial value: check the camera "
                "model and the photos' EXIF.")
    if any(m.get("distortion_held") for m in models):
        text += (" The lens distortion was too small for the photos to measure and is held at zero (freed, it would "
                 "trade off against a dome of the whole block).")
    return _item("Camera optimisation", ok, round(float(change), 2),
                 f"focal within {FOCAL_CHANGE_MAX_PERCENT:g} % of its initial value, calibrated", text)


def _overlap(summary):
    """Judged under the flight lines (the hull of the camera positions) where there is such an area: outside
    them, the block's rim is seen by few photos in any survey."""
    whole = summary.get("overlap_median")
    inner = summary.get("overlap_median_flight_area")
    value = inner if inner is not None else whole
    if value is None:
        return None
    where = "under the flight lines" if inner is not None else "over the covered area"
    below = summary.get("area_below_5_photos_percent")
    rim = ("" if below is None else f" Over the whole covered area, including its rim, the median is {whole:.0f} "
           f"and {below:.0f} % is seen by fewer than {OVERLAP_MIN_PHOTOS}.")
    ok = value >= OVERLAP_MIN_PHOTOS
    text = (f"Ground {where} is seen by {value:.0f} photos (median).{rim}" if ok else
            f"Ground {where} is seen by only {value:.0f} photos (median).{rim} Fly with more overlap "
            "(about 80 % forward and 70 % side) for a reliable model.")
    return _item("Overlap", ok, round(float(value)), f"at least {OVERLAP_MIN_PHOTOS} photos per ground point "
                 "(median, under the flight lines)", text)


def _georeferencing(summary):
    if not summary.get("georeferenced", summary.get("crs") is not None):
        return _item("Georeferencing", False, None, "GPS on at least 3 photos",
                     "Not georeferenced: fewer than 3 photos have GPS; the result is in a local frame of arbitrary "
                     "scale and orientation.")
    check = summary.get("check_rmse_m") or {}
    control = summary.get("control_rmse_m") or {}
    for kind, stats in (("check", check), ("control", control)):
        value = stats.get("horizontal") if isinstance(stats, dict) else None
        if value is not None and stats.get("n"):
            vertical = stats.get("vertical")
            worst = max(value, vertical if vertical is not None else 0.0)
            ok = worst <= CONTROL_RMSE_MAX_M
            text = (f"{stats['n']} {kind} points: {value:.3f} m horizontal, "
                    f"{'-' if vertical is None else f'{vertical:.3f}'} m vertical RMS.")
            return _item("Georeferencing", ok, round(float(worst), 4), f"at most {CONTROL_RMSE_MAX_M:g} m RMS", text)
    value = summary.get("gps_fit_rmse_m")
    if value is None:
        return _item("Georeferencing", False, None, f"GPS fit at most {GPS_FIT_MAX_M:g} m RMS",
                     "Georeferenced, but the GPS fit could not be measured.")
    ok = value <= GPS_FIT_MAX_M
    text = (f"Cameras fit their GPS positions to {value:.2f} m RMS. No ground control: the absolute position "
            "is that of the drone's GPS (metres)." if ok else
            f"Cameras fit their GPS positions only to {value:.2f} m RMS: the GPS or the block's shape is off; "
            "check the GPS residuals plot.")
    return _item("Georeferencing", ok, round(float(value), 3), f"GPS fit at most {GPS_FIT_MAX_M:g} m RMS", text)


def quality_verdict(summary):
    """[{item, ok, value, threshold, text}] for the items a surveyor checks first."""
    items = [_registered(summary), _tie_points(summary), _reprojection(summary), _camera(summary),
             _overlap(summary), _georeferencing(summary)]
    return [i for i in items if i is not None]


def verdict_line(verdict):
    """One line: 'all 5 quality checks passed' or '2 of 5 quality checks need attention: A, B'."""
    bad = [v["item"] for v in verdict if not v["ok"]]
    if not bad:
        return f"all {len(verdict)} quality checks passed"
    return f"{len(bad)} of {len(verdict)} quality checks need attention: {', '.join(bad).lower()}"


def plugin_version():
    """The version in metadata.txt ('unknown' when it cannot be read)."""
    meta = configparser.ConfigParser(interpolation=None)
    try:
        meta.read(os.path.join(os.path.dirname(os.path.dirname(__file__)), "metadata.txt"), encoding="utf-8")
        return meta.get("general", "version")
    except (configparser.Error, OSError):
        return "unknown"


def preset_of(config):
    """The preset whose settings the config uses, else 'custom'."""
    for name, values in PRESETS.items():
        if all(config.get(k) == v for k, v in values.items()):
            return name
    return "custom"


def provenance(config, n_photos, now=None):
    """What was run on what: date (UTC), AlignKit version, input folder, photo count, preset."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return {"date": now.replace(microsecond=0).isoformat(), "alignkit_version": plugin_version(),
            "images_folder": os.path.abspath(config.get("images") or ""), "photos": int(n_photos),
            "preset": preset_of(config)}


def name_photos(lines, names):
    """Log lines with photo indices replaced by the photos' names ("initial pair 3-11" ->
    "initial pair DJI_0024 / DJI_0033"): a reader knows the photos, not their order in the run."""
    def pair(match):
        i, j = int(match.group(1)), int(match.group(2))
        if max(i, j) >= len(names):
            return match.group(0)
        return f"initial pair {names[i]} / {names[j]}"

    return [re.sub(r"initial pair (\d+)-(\d+)", pair, str(line)) for line in lines]


def assess(summary, recon, config, names=None):
    """The summary keys this module adds: tie points per photo, provenance, verdict and its one line,
    and (given the photos' `names` in run order) the log with photo names."""
    registered = np.asarray(recon.registered, bool)
    out = {"tie_points_per_image_median": float(np.median(recon.n_obs[registered])) if registered.any() else None,
           "provenance": provenance(config.to_dict(), summary.get("images", 0))}
    verdict = quality_verdict({**summary, **out})
    out.update(verdict=verdict, verdict_summary=verdict_line(verdict))
    if names is not None and summary.get("log"):
        out["log"] = name_photos(summary["log"], names)
    return out
