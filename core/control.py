"""Ground control and check points: reading, roles, the local frame, and the marking API.

Input formats:
- OpenDroneMap `gcp_list.txt`: the first line is the CRS of the surveyed coordinates (`EPSG:n`,
  `WGS84 UTM 32N`, or a PROJ string); then one row per image measurement,
  `geo_x geo_y geo_z im_x im_y image_name [gcp_name] [extras...]`. Rows without a name are grouped
  by identical coordinates. Pixel coordinates: the centre of the top-left pixel is (0, 0), as in
  OpenSfM and everywhere in AlignKit.
- OpenSfM `ground_control_points.json`: points with `position` {latitude, longitude, altitude} and
  `observations` [{shot_id, projection}] in OpenSfM's normalised image coordinates
  (x_n = (x + 0.5 - w / 2) / max(w, h), with x a pixel-centre coordinate).

Heights: with a compound CRS (e.g. EPSG:32632+5773) the surveyed heights go through its vertical datum;
with a horizontal-only CRS they are taken in the same reference as the photos' GPS altitude (the
alignment's stated altitude reference), and a warning says so.

Every problem in a file is collected and reported together, each naming the file, the line and what
is wrong (ControlError). A point measured in fewer than two photos is kept but flagged (`problems`)
and is not used: one ray fixes no 3D position.
"""
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pyproj import CRS
from pyproj.exceptions import CRSError

from .workspace import read_json, write_json

DEFAULT_SIGMA_H_M = 0.02  # RTK GNSS horizontal accuracy of a surveyed point
DEFAULT_SIGMA_V_M = 0.03  # and vertical
MAX_REPORTED_ERRORS = 12  # a file with more problems lists the first ones and the count
ROLES = ("control", "check")
_UTM = re.compile(r"^WGS\s*-?\s*84\s+UTM\s+(\d{1,2})\s*([NS])$", re.IGNORECASE)


class ControlError(ValueError):
    """A control file cannot be used; the message names the file, the line(s) and the problems."""


@dataclass
class Measurement:
    image: str  # photo file name, as in the image folder
    x: float  # pixel column, centre of the top-left pixel = 0
    y: float  # pixel row
    line: int = 0  # line in the source file (0: not from a file, e.g. the marking dialog)
    source: str = "file"  # "file", "user" (clicked) or "auto" (found by core.targets)


@dataclass
class ControlPoint:
    name: str
    xyz: np.ndarray  # surveyed coordinates in the file's CRS (x, y, z); z NaN when not surveyed
    measurements: list = field(default_factory=list)
    role: str = "control"  # "control" (used in the adjustment) or "check" (only compared)
    sigma_h_m: float = DEFAULT_SIGMA_H_M
    sigma_v_m: float = DEFAULT_SIGMA_V_M
    enu: np.ndarray = None  # surveyed position in the local ENU frame (set by to_local)
    problems: list = field(default_factory=list)  # why it is not used, if it is not

    @property
    def images(self):
        return [m.image for m in self.measurements]

    @property
    def usable(self):
        """Measured in two photos or more and surveyed in 3D: it can enter the adjustment."""
        return len({m.image for m in self.measurements}) >= 2 and bool(np.isfinite(self.xyz).all())


@dataclass
class ControlSet:
    source: str  # the file read (for messages)
    crs: str  # the surveyed coordinates' CRS, as a string pyproj understands
    points: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def by_name(self):
        return {p.name: p for p in self.points}

    def with_role(self, role, usable_only=True):
        return [p for p in self.points if p.role == role and (p.usable or not usable_only)]


# ---------------------------------------------------------------- CRS


def parse_crs(text):
    """A CRS line of gcp_list.txt -> pyproj CRS, or None when it is not one we understand."""
    text = text.strip()
    m = _UTM.match(text)
    if m:
        zone = int(m.group(1))
        if not 1 <= zone <= 60:
            return None
        return CRS.from_epsg((32600 if m.group(2).upper() == "N" else 32700) + zone)
    if not (re.match(r"^(EPSG|ESRI|IGNF):\d+$", text, re.IGNORECASE) or text.startswith("+proj=")
            or text.startswith(("PROJCRS[", "GEOGCRS[", "PROJCS[", "GEOGCS[", "COMPOUNDCRS["))):
        return None
    try:
        return CRS.from_user_input(text)
    except CRSError:
        return None


def _crs_warnings(crs, source):
    out = []
    if crs.is_geographic:
        out.append(f"{source}: geographic CRS {crs.name}: x is longitude, y latitude (degrees)")
    if len(crs.axis_info) <= 2 and not crs.is_compound:
        out.append(f"{source}: the CRS {crs.name} has no vertical datum: surveyed heights are taken in the "
                   "photos' GPS altitude reference")
    return out


# ---------------------------------------------------------------- readers


def read_control(path, image_sizes=None, check_points=None):
    """Read gcp_list.txt or OpenSfM ground_control_points.json (by content) and assign roles.

    image_sizes: {photo name: (width, height)} of the image folder; rows naming other photos or
    pixels outside a photo are errors (None: not checked). check_points: names (list or a
    comma-separated string) kept out of the adjustment.
    """
    path = Path(path)
    if not path.is_file():
        raise ControlError(f"{path}: control file does not exist")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        cs = read_opensfm_json(path, image_sizes, text=text)
    else:
        cs = read_gcp_list(path, image_sizes, text=text)
    assign_roles(cs, check_points)
    return cs


def _raise_if(errors, path):
    if errors:
        more = len(errors) - MAX_REPORTED_ERRORS
        lines = errors[:MAX_REPORTED_ERRORS] + ([f"... and {more} more"] if more > 0 else [])
        raise ControlError(f"{path}: {len(errors)} problem(s):\n  " + "\n  ".join(lines))


def _check_measurement(errors, where, image, x, y, image_sizes):
    if image_sizes is None:
        return True
    if image not in image_sizes:
        hint = [n for n in image_sizes if n.lower() == image.lower()]
        errors.append(f"{where}: photo '{image}' is not in the image folder"
                      + (f" (did you mean '{hint[0]}'? names are case-sensitive)" if hint else ""))
        return False
    w, h = image_sizes[image]
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        errors.append(f"{where}: pixel ({x:g}, {y:g}) is outside photo '{image}' ({w} x {h}; "
                      "the centre of the top-left pixel is (0, 0))")
        return False
    return True


def read_gcp_list(path, image_sizes=None, text=None):
    """OpenDroneMap gcp_list.txt -> ControlSet (roles all "control"; see assign_roles)."""
    path = Path(path)
    if text is None:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = text.splitlines()
    first = next((i for i, s in enumerate(lines) if s.strip() and not s.lstrip().startswith("#")), None)
    if first is None:
        raise ControlError(f"{path}: empty control file (expected a CRS line, then one row per measurement)")
    crs = parse_crs(lines[first])
    if crs is None:
        raise ControlError(
            f"{path}, line {first + 1}: unknown CRS line '{lines[first].strip()[:80]}' (expected EPSG:n, "
            "'WGS84 UTM <zone><N|S>' or a PROJ string)")
    errors = []
    points, order = {}, []
    unnamed = {}
    for k in range(first + 1, len(lines)):
        raw = lines[k].strip()
        if not raw or raw.startswith("#"):
            continue
        where = f"line {k + 1}"
        tok = raw.split()
        if len(tok) < 6:
            errors.append(f"{where}: {len(tok)} values, expected geo_x geo_y geo_z im_x im_y image_name [gcp_name]")
            continue
        try:
            gx, gy, gz, ix, iy = (float(v) for v in tok[:5])
        except ValueError:
            errors.append(f"{where}: the first five values must be numbers: '{' '.join(tok[:5])}'")
            continue
        if not all(math.isfinite(v) for v in (gx, gy, gz, ix, iy)):
            errors.append(f"{where}: non-finite coordinate")
            continue
        image = tok[5]
        if len(tok) > 6:
            name = tok[6]
        else:  # grouped by identical coordinates, in order of first appearance
            name = unnamed.setdefault((gx, gy, gz), f"gcp_{len(unnamed) + 1}")
        if not _check_measurement(errors, where, image, ix, iy, image_sizes):
            continue
        xyz = np.array([gx, gy, gz], np.float64)
        pt = points.get(name)
        if pt is None:
            pt = points[name] = ControlPoint(name, xyz)
            pt.first_line = k + 1
            order.append(name)
        elif not np.allclose(pt.xyz, xyz, rtol=0, atol=1e-6):
            errors.append(f"{where}: point '{name}' has coordinates {gx:g} {gy:g} {gz:g}, but "
                          f"{' '.join(f'{v:g}' for v in pt.xyz)} on line {pt.first_line}")
            continue
        dup = next((m for m in pt.measurements if m.image == image), None)
        if dup is not None:
            errors.append(f"{where}: point '{name}' is measured twice in photo '{image}' (also line {dup.line})")
            continue
        pt.measurements.append(Measurement(image, ix, iy, k + 1))
    _raise_if(errors, path)
    cs = ControlSet(str(path), crs.to_string(), [points[n] for n in order], _crs_warnings(crs, path))
    if not cs.points:
        raise ControlError(f"{path}: no measurement rows after the CRS line")
    _flag_single_photo(cs)
    return cs


def read_opensfm_json(path, image_sizes=None, text=None):
    """OpenSfM ground_control_points.json -> ControlSet in EPSG:4979-like lat/lon/altitude.

    Normalised projections become pixels with the photo's size, so image_sizes is required for
    them; a point without `position` (OpenSfM allows it, as a tie point) is kept, flagged, unused.
    """
    path = Path(path)
    try:
        data = json.loads(text if text is not None else path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ControlError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ControlError(f"{path}: expected an object with a 'points' list (OpenSfM ground_control_points.json)")
    errors, out = [], []
    for k, p in enumerate(data["points"]):
        pid = str(p.get("id", f"point_{k + 1}"))
        where = f"point '{pid}'"
        pos = p.get("position")
        if pos is None:
            xyz = np.full(3, np.nan)
        elif "latitude" in pos and "longitude" in pos:
            alt = pos.get("altitude")
            xyz = np.array([pos["longitude"], pos["latitude"], np.nan if alt is None else alt], np.float64)
        else:
            errors.append(f"{where}: position needs latitude and longitude (got {', '.join(pos)})")
            continue
        cp = ControlPoint(pid, xyz)
        if pos is None:
            cp.problems.append("no surveyed position: not used")
        elif not np.isfinite(xyz[2]):
            cp.problems.append("no surveyed altitude: not used")
        for obs in p.get("observations", []):
            image, proj = obs.get("shot_id"), obs.get("projection")
            if not image or not isinstance(proj, (list, tuple)) or len(proj) != 2:
                errors.append(f"{where}: observation needs shot_id and a 2-value projection: {obs}")
                continue
            if image_sizes is None or image not in image_sizes:
                _check_measurement(errors, f"{where}", image, 0.0, 0.0, image_sizes or {})
                continue
            w, h = image_sizes[image]
            s = max(w, h)
            x, y = proj[0] * s + w / 2.0 - 0.5, proj[1] * s + h / 2.0 - 0.5
            if _check_measurement(errors, where, image, x, y, image_sizes):
                cp.measurements.append(Measurement(image, x, y))
        out.append(cp)
    _raise_if(errors, path)
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ControlError(f"{path}: point id(s) used twice: {', '.join(dup)}")
    cs = ControlSet(str(path), "EPSG:4979", out, [])  # longitude, latitude, altitude (see to_local)
    _flag_single_photo(cs)
    return cs


def control_from_points(points, crs, measurements=None, source="point layer", image_sizes=None):
    """ControlSet from surveyed points [(name, x, y, z or None)] in `crs` (e.g. a QGIS point layer in any
    CRS with a name field and Z or a height field, read by the caller) and image measurements
    {name: [(photo, x, y), ...]} (the marking dialog's). Duplicate names are an error; a point without
    a height is kept, flagged, and not used."""
    errors, out, seen = [], [], {}
    try:
        crs = CRS.from_user_input(crs).to_string()
    except CRSError:
        raise ControlError(f"{source}: unknown CRS {crs!r}") from None
    for k, (name, x, y, z) in enumerate(points):
        where = f"feature {k + 1}"
        name = str(name).strip() if name is not None else ""
        if not name:
            errors.append(f"{where}: no name")
            continue
        if name in seen:
            errors.append(f"{where}: the name '{name}' is used twice (also feature {seen[name]})")
            continue
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            errors.append(f"{where} ('{name}'): no position")
            continue
        seen[name] = k + 1
        p = ControlPoint(name, np.array([x, y, np.nan if z is None else z], np.float64))
        if not np.isfinite(p.xyz[2]):
            p.problems.append("no surveyed height: not used")
        for image, u, v in (measurements or {}).get(name, []):
            if _check_measurement(errors, f"point '{name}'", image, u, v, image_sizes):
                p.measurements.append(Measurement(image, float(u), float(v), 0, "user"))
        out.append(p)
    _raise_if(errors, source)
    if not out:
        raise ControlError(f"{source}: no points")
    unknown = sorted(set(measurements or {}) - set(seen))
    if unknown:
        raise ControlError(f"{source}: measurements for point(s) not in the layer: {', '.join(unknown)}")
    cs = ControlSet(source, crs, out, _crs_warnings(CRS.from_user_input(crs), source))
    _flag_single_photo(cs)
    return cs


def _flag_single_photo(cs):
    for p in cs.points:
        n = len({m.image for m in p.measurements})
        if n < 2 and not any("photo" in s for s in p.problems):
            only = f" ({p.measurements[0].image})" if n == 1 else ""
            p.problems.append(f"measured in {n} photo{'' if n == 1 else 's'}{only}: needs two or more, not used")


def assign_roles(cs, check_points=None):
    """Mark the named points as check points (the rest control); unknown names are an error."""
    if isinstance(check_points, str):
        check_points = [s.strip() for s in check_points.split(",")]
    names = [s for s in (check_points or []) if s]
    known = cs.by_name()
    missing = [n for n in names if n not in known]
    if missing:
        raise ControlError(f"{cs.source}: check point(s) {', '.join(repr(n) for n in missing)} not in the file "
                           f"(its points: {', '.join(sorted(known)) or 'none'})")
    for p in cs.points:
        p.role = "check" if p.name in names else "control"
    _flag_single_photo(cs)
    return cs


def to_local(cs, frame):
    """Set each point's `enu` (the local frame of core.geo.LocalFrame) from the file's CRS, explicitly
    through pyproj: a CRS with a vertical datum converts its heights; a horizontal-only CRS's heights
    are taken in the photos' altitude reference (the frame's, see core.geo)."""
    xyz = np.array([p.xyz for p in cs.points], np.float64).reshape(-1, 3)
    # OpenSfM's latitude / longitude / altitude: a horizontal CRS, heights with the photos' meaning.
    crs = "EPSG:4326" if cs.crs == "EPSG:4979" else cs.crs
    enu = frame.from_crs(np.nan_to_num(xyz), crs)
    for p, e in zip(cs.points, enu):
        p.enu = np.where(np.isfinite(p.xyz), e, np.nan) if np.isfinite(p.xyz[:2]).all() else np.full(3, np.nan)
    return cs


# ---------------------------------------------------------------- the marking dialog's core API


def predict_pixels(point_enu, R, C, focal, k1, k2, sizes, names=None, margin_px=0.0):
    """Where a point should appear in each photo: [(index or name, x, y)] for the photos whose frame
    (less margin_px) contains it in front of the camera. R (N,3,3), C (N,3) ENU (NaN rows = no pose);
    focal, k1, k2 (N,); sizes (N,2) width, height. Works with adjusted cameras or with priors."""
    from .bundle import project

    R, C = np.asarray(R, np.float64), np.asarray(C, np.float64)
    n = len(C)
    ok = np.isfinite(C).all(1) & np.isfinite(R).reshape(n, -1).all(1)
    sizes = np.asarray(sizes, np.float64)
    pp = (sizes - 1.0) / 2.0
    X = np.repeat(np.asarray(point_enu, np.float64).reshape(1, 3), n, 0)
    Rs = np.where(ok[:, None, None], R, np.eye(3))
    Cs = np.where(ok[:, None], C, 0.0)
    uv, z = project(Rs, Cs, np.asarray(focal, float), np.nan_to_num(np.asarray(k1, float)),
                    np.nan_to_num(np.asarray(k2, float)), pp, X)
    inside = (ok & (z > 0) & (uv[:, 0] >= margin_px - 0.5) & (uv[:, 1] >= margin_px - 0.5)
              & (uv[:, 0] <= sizes[:, 0] - 0.5 - margin_px) & (uv[:, 1] <= sizes[:, 1] - 0.5 - margin_px))
    keys = names if names is not None else range(n)
    return [(k, float(u), float(v)) for k, (u, v), i in zip(keys, uv, inside) if i]


def write_gcp_list(path, cs):
    """Export measurements as gcp_list.txt (the file's CRS, named rows), atomically."""
    from .workspace import _atomic

    rows = [cs.crs]
    for p in cs.points:
        for m in p.measurements:
            rows.append(" ".join([*(f"{v:.4f}" if abs(v) < 1e3 else f"{v:.3f}" for v in p.xyz),
                                  f"{m.x:.2f}", f"{m.y:.2f}", m.image, p.name]))
    data = ("\n".join(rows) + "\n").encode("utf-8")
    _atomic(path, lambda f: f.write(data), ".txt")


def save_measurements(path, cs):
    """The control set as JSON in the workspace (what the marking dialog edits)."""
    write_json(path, {
        "source": cs.source, "crs": cs.crs,
        "points": [{"name": p.name, "xyz": [None if not np.isfinite(v) else float(v) for v in p.xyz],
                    "role": p.role, "sigma_h_m": p.sigma_h_m, "sigma_v_m": p.sigma_v_m,
                    "measurements": [{"image": m.image, "x": m.x, "y": m.y, "source": m.source}
                                     for m in p.measurements]} for p in cs.points]})


def load_measurements(path):
    d = read_json(path)
    pts = []
    for p in d["points"]:
        xyz = np.array([np.nan if v is None else v for v in p["xyz"]], np.float64)
        pts.append(ControlPoint(p["name"], xyz, [Measurement(m["image"], m["x"], m["y"], 0, m.get("source", "user"))
                                                 for m in p["measurements"]],
                                p.get("role", "control"), p.get("sigma_h_m", DEFAULT_SIGMA_H_M),
                                p.get("sigma_v_m", DEFAULT_SIGMA_V_M)))
    cs = ControlSet(d.get("source", str(path)), d["crs"], pts)
    _flag_single_photo(cs)
    return cs
