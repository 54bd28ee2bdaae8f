"""Marking ground control in the photos: the cameras to predict with, and the session the dialog edits.

Cameras come from a finished alignment (its GeoPackage `cameras` layer and the summary beside it,
which names the local ENU frame) or from the photos' priors alone (EXIF GPS and gimbal angles).
Either way they are put into one explicit local ENU frame (core.geo.LocalFrame), the control set is
transformed into the same frame (core.control.to_local: explicit CRS, never assumed), and
core.control.predict_pixels says where each point should appear.

A MarkingSession holds the control set and the cameras and edits the measurements: place, move,
remove, find a target (core.targets) near the prediction, save to the workspace
(core.control.save_measurements) and export gcp_list.txt (core.control.write_gcp_list). Pixel
convention as everywhere: the centre of the top-left pixel is (0, 0).
"""
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import camera
from .control import (
    ControlError,
    Measurement,
    load_measurements,
    predict_pixels,
    read_control,
    save_measurements,
    to_local,
    write_gcp_list,
)
from .geo import LocalFrame
from .targets import find_target
from .workspace import read_json

MEASUREMENTS_FILE = "control_measurements.json"  # the marking session in an alignment's workspace
SEARCH_RADIUS_ALIGNED_PX = 20.0  # "Find target" search radius around a prediction from adjusted cameras
SEARCH_RADIUS_PRIORS_PX = 80.0  # ... from GPS/gimbal priors (metres of GPS error at a few cm per pixel)
DEFAULT_TARGET_SIDE_M = 0.5  # a common printed survey target (50 x 50 cm)


@dataclass
class PhotoCameras:
    """Cameras in a local ENU frame, ready for predict_pixels. R: (N,3,3) ENU -> camera (NaN rows:
    no pose); C: (N,3) ENU; focal, k1, k2: (N,); sizes: (N,2) width, height in pixels."""

    names: list
    paths: list
    R: np.ndarray
    C: np.ndarray
    focal: np.ndarray
    k1: np.ndarray
    k2: np.ndarray
    sizes: np.ndarray
    frame: LocalFrame
    source: str  # "alignment" or "priors"
    description: str  # for the user: where the cameras came from
    ground_up_m: float = float("nan")  # ENU height of the ground (median), for points without a surveyed height
    workspace: Path = None  # where the session is saved (an alignment's workspace), if known
    other_sizes: dict = None  # {photo: (width, height)} of the folder's photos without a pose (not registered)

    @property
    def posed(self):
        return np.isfinite(self.C).all(1) & np.isfinite(self.R).reshape(len(self.C), -1).all(1)

    def index(self, name):
        return self.names.index(name)

    def image_sizes(self):
        """Every photo a control file may name: the posed ones and the folder's others."""
        out = dict(self.other_sizes or {})
        out.update({n: (int(w), int(h)) for n, (w, h) in zip(self.names, self.sizes)})
        return out


def cameras_from_alignment(gpkg_path, summary_path=None, image_folder=None):
    """The adjusted cameras of an alignment GeoPackage (`cameras` layer) in the frame its summary names.

    The layer's own CRS is used for the positions (the dock may have written a reprojected copy).
    image_folder: where the photos are now, if they moved since the alignment (else the layer's `path`)."""
    from osgeo import ogr

    from .camera import rotation_from_gimbal

    gpkg_path = Path(gpkg_path)
    if not gpkg_path.is_file():
        raise ControlError(f"{gpkg_path}: the alignment GeoPackage does not exist")
    summary_path = Path(summary_path) if summary_path else Path(f"{gpkg_path.with_suffix('')}_summary.json")
    if not summary_path.is_file():
        raise ControlError(f"{gpkg_path}: no alignment summary beside it (expected {summary_path})")
    summary = read_json(summary_path)
    if not summary.get("frame"):
        raise ControlError(f"{summary_path}: the alignment is not georeferenced (no GPS): control points "
                           "cannot be predicted in its photos")
    frame = LocalFrame(**summary["frame"])
    ds = ogr.Open(str(gpkg_path))
    layer = ds.GetLayerByName("cameras") if ds is not None else None
    if layer is None:
        raise ControlError(f"{gpkg_path}: no 'cameras' layer (is it an AlignKit alignment?)")
    srs = layer.GetSpatialRef()
    if srs is None:
        raise ControlError(f"{gpkg_path}: the cameras layer has no CRS (alignment without GPS)")
    crs = _crs_text(srs)
    have = {layer.GetLayerDefn().GetFieldDefn(k).GetName() for k in range(layer.GetLayerDefn().GetFieldCount())}
    missing = {"image", "registered", "yaw", "pitch", "roll", "focal_px"} - have
    if missing:
        raise ControlError(f"{gpkg_path}: the cameras layer lacks field(s) {', '.join(sorted(missing))}")
    rows = []
    for f in layer:
        g = f.GetGeometryRef()
        ok = bool(f.GetField("registered")) and g is not None and f.GetField("yaw") is not None
        rows.append({
            "image": f.GetField("image"),
            "path": f.GetField("path") if "path" in have else None,
            "xyz": (g.GetX(), g.GetY(), g.GetZ()) if ok else (np.nan,) * 3,
            "ypr": (f.GetField("yaw"), f.GetField("pitch"), f.GetField("roll")) if ok else None,
            "focal": f.GetField("focal_px") if ok else np.nan,
            "k1": (f.GetField("k1") if "k1" in have else 0.0) or 0.0,
            "k2": (f.GetField("k2") if "k2" in have else 0.0) or 0.0,
        })
    ds = None
    folder = image_folder or (summary.get("config") or {}).get("images")
    others = {}
    for r in rows:  # photos of the folder that were not registered: a control file may still name them
        if r["ypr"] is None:
            try:
                others[r["image"]] = _image_size(_photo_path(r["path"], r["image"], folder, gpkg_path))
            except ControlError:
                pass
    rows = [r for r in rows if r["ypr"] is not None]
    if not rows:
        raise ControlError(f"{gpkg_path}: no registered camera in the cameras layer")
    paths = [_photo_path(r["path"], r["image"], folder, gpkg_path) for r in rows]
    sizes = np.array([_image_size(p) for p in paths], np.float64)
    C = frame.from_crs(np.array([r["xyz"] for r in rows], np.float64), crs)
    R = np.array([rotation_from_gimbal(*r["ypr"]) for r in rows], np.float64)
    height = summary.get("height_above_ground_m")
    ws = Path((summary.get("outputs") or {}).get("workspace") or f"{gpkg_path.with_suffix('')}_workspace")
    return PhotoCameras(
        names=[r["image"] for r in rows], paths=paths, R=R, C=C,
        focal=np.array([r["focal"] for r in rows], np.float64),
        k1=np.array([r["k1"] for r in rows], np.float64), k2=np.array([r["k2"] for r in rows], np.float64),
        sizes=sizes, frame=frame, source="alignment",
        description=f"alignment {gpkg_path.name}: {len(rows)} registered photos (adjusted cameras)",
        ground_up_m=float(np.median(C[:, 2]) - height) if height is not None else float("nan"),
        workspace=ws, other_sizes=others)


def cameras_from_priors(folder):
    """Cameras from the photos' EXIF GPS and gimbal angles alone (no alignment yet). Predictions are
    then only as good as the GPS (metres) and the gimbal yaw: search wider. Measured on brighton_beach:
    six photos report a gimbal yaw 180 degrees from the truth (DESIGN.md), which puts their
    predictions hundreds of pixels off (median 450 px over 28 measurements, 0.7 px with the
    adjusted cameras); the photos listed were the same for 4 of 5 points (one photo missed on one)."""
    everything = camera.read_priors(folder)
    priors = [p for p in everything if p.status == "ok" and p.focal_px and p.width > 0]
    others = {p.name: (p.width, p.height) for p in everything if p not in priors and p.width > 0}
    if len(priors) < 1:
        raise ControlError(f"{folder}: no photo with GPS and a focal length: nothing to predict with")
    lat = np.array([p.lat for p in priors], np.float64)
    lon = np.array([p.lon for p in priors], np.float64)
    alt = np.array([p.gps_alt for p in priors], np.float64)
    frame = LocalFrame.centred_on(lat, lon, alt)
    C = frame.to_enu(lat, lon, alt)
    R = np.array([camera.camera_rotation(p)[0] for p in priors], np.float64)
    rel = np.array([p.rel_alt if p.rel_alt else np.nan for p in priors], np.float64)
    ground = float(np.nanmedian(C[:, 2] - rel)) if np.isfinite(rel).any() else float("nan")
    n = len(priors)
    return PhotoCameras(
        names=[p.name for p in priors], paths=[p.path for p in priors], R=R, C=C,
        focal=np.array([p.focal_px for p in priors], np.float64), k1=np.zeros(n), k2=np.zeros(n),
        sizes=np.array([(p.width, p.height) for p in priors], np.float64), frame=frame, source="priors",
        description=f"photo priors of {Path(folder).name}: {n} photos (EXIF GPS and gimbal angles: predictions "
                    "are metres off, and wherever a gimbal yaw is wrong, elsewhere; align first for pixel predictions)",
        ground_up_m=ground, other_sizes=others)


def _crs_text(srs):
    name, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    return f"{name}:{code}" if name and code else srs.ExportToWkt()


def _photo_path(path, image, folder, source):
    candidates = ([Path(folder) / image] if folder else []) + ([Path(path)] if path else [])
    for p in candidates:
        if p.is_file():
            return str(p)
    raise ControlError(f"{source}: photo {image} not found (looked in {', '.join(str(p.parent) for p in candidates) or 'nowhere'}); "
                       "give the image folder")


def _image_size(path):
    prior = camera.read_prior(path)
    if prior.width <= 0 or prior.height <= 0:
        raise ControlError(f"{path}: cannot read the image size ({'; '.join(prior.problems)})")
    return prior.width, prior.height


# ---------------------------------------------------------------- control sets


def reflag(p):
    """Renew a point's "measured in n photos" problem after its measurements changed (as core.control
    flags a file's points: fewer than two photos -> kept, flagged, not used)."""
    p.problems = [s for s in p.problems if "photo" not in s]
    n = len({m.image for m in p.measurements})
    if n < 2:
        only = f" ({p.measurements[0].image})" if n == 1 else ""
        p.problems.append(f"measured in {n} photo{'' if n == 1 else 's'}{only}: needs two or more, not used")


def merge_measurements(cs, saved):
    """Carry the measurements of a saved session over to a freshly read control set, by point name,
    for photos the set does not measure already. Returns the number carried over."""
    by_name, n = saved.by_name(), 0
    for p in cs.points:
        old = by_name.get(p.name)
        if old is None:
            continue
        have = {m.image for m in p.measurements}
        for m in old.measurements:
            if m.image not in have:
                p.measurements.append(Measurement(m.image, m.x, m.y, 0, m.source))
                n += 1
        p.role = old.role
        reflag(p)
    return n


# ---------------------------------------------------------------- the session


class MarkingSession:
    """The control set being marked, with the cameras that predict where its points appear."""

    def __init__(self, cameras, control, path=None):
        self.cameras = cameras
        self.control = to_local(control, cameras.frame)
        self.path = Path(path) if path else (cameras.workspace / MEASUREMENTS_FILE if cameras.workspace else None)
        self.proposals = {}  # (point name, image) -> core.targets.Detection awaiting confirmation

    @classmethod
    def open(cls, cameras, control_path=None, check_points=None):
        """A session from a control file (gcp_list.txt, OpenSfM JSON) or, without one, the session
        saved in the cameras' workspace; a saved session's measurements join a control file's."""
        saved_path = cameras.workspace / MEASUREMENTS_FILE if cameras.workspace else None
        saved = load_measurements(saved_path) if saved_path and saved_path.is_file() else None
        if control_path:
            cs = read_control(control_path, cameras.image_sizes(), check_points)
            if saved is not None:
                merge_measurements(cs, saved)
        elif saved is not None:
            cs = saved
        else:
            raise ControlError("no control file given and no saved marking session"
                               + (f" ({saved_path})" if saved_path else ""))
        return cls(cameras, cs, saved_path)

    def point(self, name):
        p = self.control.by_name().get(name)
        if p is None:
            raise KeyError(f"no control point named {name!r}")
        return p

    def _enu_for_prediction(self, p):
        e = np.array(p.enu, np.float64)
        if not np.isfinite(e[:2]).all():
            return None
        if not np.isfinite(e[2]):
            e[2] = self.cameras.ground_up_m  # no surveyed height: predict on the ground
        return e if np.isfinite(e).all() else None

    def predictions(self, name):
        """[(image, x, y)] for the photos whose frame contains the point (in front of the camera)."""
        e = self._enu_for_prediction(self.point(name))
        if e is None:
            return []
        cam = self.cameras
        ok = cam.posed
        idx = np.flatnonzero(ok)
        pred = predict_pixels(e, cam.R[ok], cam.C[ok], cam.focal[ok], cam.k1[ok], cam.k2[ok], cam.sizes[ok],
                              names=[cam.names[i] for i in idx])
        return pred

    def photos(self, name):
        """The photos to show for a point, by name: every predicted one and every measured one.
        [{"image", "predicted": (x, y) or None, "measurement": Measurement or None}]"""
        p = self.point(name)
        pred = {n: (x, y) for n, x, y in self.predictions(name)}
        posed = set(self.cameras.names)
        meas = {m.image: m for m in p.measurements if m.image in posed}  # see unposed()
        return [{"image": n, "predicted": pred.get(n), "measurement": meas.get(n)}
                for n in sorted(set(pred) | set(meas))]

    def unposed(self, name):
        """The point's measurements in photos without a pose (kept, exported, not shown)."""
        posed = set(self.cameras.names)
        return [m for m in self.point(name).measurements if m.image not in posed]

    def offsets(self, name):
        """{photo: pixels between the measurement and the prediction} of a point's marked photos: with
        adjusted cameras, a few pixels or more flags a click on the wrong spot."""
        return {ph["image"]: float(np.hypot(ph["measurement"].x - ph["predicted"][0],
                                            ph["measurement"].y - ph["predicted"][1]))
                for ph in self.photos(name) if ph["measurement"] is not None and ph["predicted"] is not None}

    def counts(self, name):
        """(photos marked, photos predicted) for a point."""
        return len(self.point(name).measurements), len(self.predictions(name))

    def measurement(self, name, image):
        return next((m for m in self.point(name).measurements if m.image == image), None)

    def set_measurement(self, name, image, x, y, source="user"):
        """Place (or move) a point's measurement in a photo; the pixel must lie inside the photo."""
        p = self.point(name)
        w, h = self.cameras.sizes[self.cameras.index(image)]
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise ValueError(f"pixel ({x:.2f}, {y:.2f}) is outside photo {image} ({w:.0f} x {h:.0f})")
        m = self.measurement(name, image)
        if m is None:
            p.measurements.append(Measurement(image, float(x), float(y), 0, source))
        else:
            m.x, m.y, m.source, m.line = float(x), float(y), source, 0
        self.proposals.pop((name, image), None)
        reflag(p)
        return self.measurement(name, image)

    def remove_measurement(self, name, image):
        p = self.point(name)
        before = len(p.measurements)
        p.measurements = [m for m in p.measurements if m.image != image]
        reflag(p)
        return len(p.measurements) < before

    def set_role(self, name, role):
        if role not in ("control", "check"):
            raise ValueError(f"role must be 'control' or 'check', not {role!r}")
        self.point(name).role = role

    # --- finding targets
    def target_size_px(self, name, image, side_m):
        """The target's side in pixels in a photo: side_m x focal / distance from the camera."""
        e = self._enu_for_prediction(self.point(name))
        i = self.cameras.index(image)
        if e is None or not self.cameras.posed[i]:
            return None
        depth = float((self.cameras.R[i] @ (e - self.cameras.C[i]))[2])
        return side_m * self.cameras.focal[i] / depth if depth > 0 else None

    def find(self, name, image, side_m=DEFAULT_TARGET_SIDE_M, kind="auto", search_radius_px=None, grey=None):
        """Look for a survey target near the point's current measurement (else its prediction) in one
        photo; a find becomes a proposal (self.proposals) for the user to accept. Returns it or None."""
        centre = self.measurement(name, image)
        centre = (centre.x, centre.y) if centre is not None else dict(
            (n, (x, y)) for n, x, y in self.predictions(name)).get(image)
        if centre is None:
            return None
        size = self.target_size_px(name, image, side_m)
        if not size or size < 6:
            return None
        if search_radius_px is None:
            search_radius_px = SEARCH_RADIUS_ALIGNED_PX if self.cameras.source == "alignment" else SEARCH_RADIUS_PRIORS_PX
        if grey is None:
            path = self.cameras.paths[self.cameras.index(image)]
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise ValueError(f"{path}: cannot read the image")
        det = find_target(grey, centre, size, kind, search_radius_px)
        if det is None:
            self.proposals.pop((name, image), None)
        else:
            self.proposals[(name, image)] = det
        return det

    def accept(self, name, image):
        """Confirm a proposal: it becomes the measurement (source "auto")."""
        det = self.proposals.get((name, image))
        if det is None:
            return None
        return self.set_measurement(name, image, det.x, det.y, source="auto")

    # --- files
    def save(self, path=None):
        path = Path(path) if path else self.path
        if path is None:
            raise ValueError("no workspace to save the measurements in: choose a file")
        save_measurements(path, self.control)
        self.path = path
        return path

    def export(self, path):
        """gcp_list.txt with every measurement (the surveyed coordinates in their own CRS)."""
        write_gcp_list(path, self.control)
        return Path(path)


def read_crop(path, cx, cy, half):
    """(RGB uint8 crop, x0, y0): the square of side 2 half + 1 around pixel (cx, cy), clipped to the
    photo; pixel (j, i) of the crop is pixel (x0 + j, y0 + i) of the photo."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: cannot read the image")
    h, w = img.shape[:2]
    x0, y0 = max(0, int(round(cx)) - half), max(0, int(round(cy)) - half)
    x1, y1 = min(w, int(round(cx)) + half + 1), min(h, int(round(cy)) + half + 1)
    crop = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(crop), x0, y0
