"""Camera priors from a photo's own bytes: pixel size, EXIF, DJI XMP, and the intrinsic matrix K.

Nothing here writes a file, and nothing is invented silently: every value that is missing or
implausible is named in `CameraPrior.problems`. A file that cannot be read becomes a prior with
status "unusable" (never an exception), so one bad photo does not stop a survey.

Heights keep the meaning they came with (see DESIGN.md, "Altitude has several meanings"):
`gps_alt` is EXIF GPSAltitude (on DJI roughly above mean sea level), `abs_alt` is DJI XMP
AbsoluteAltitude (same datum), `rel_alt` is DJI XMP RelativeAltitude (above the take-off point).

Focal length in pixels, in order of preference (`focal_source`):
1. "focal_and_sensor_width": EXIF FocalLength (mm) and the physical sensor width, from the sourced
   table in core/sensors.py or else from EXIF FocalPlaneXResolution. This is the physical truth:
   f_px = f_mm / pixel pitch. The 35 mm equivalent is a rounded, derived figure (DJI writes an
   integer 20 for the FC300S) whose meaning depends on a convention (diagonal vs 36 mm width) and
   on which part of the sensor the photo uses; brighton_beach's FC300S: 3.61 mm / 6.17 mm x 4000 px
   = 2,340 px.
2. "35mm_equivalent": EXIF FocalLengthIn35mmFilm by its standard definition (EXIF 2.3 / CIPA
   DC-008: the focal giving the same angle of view on a 36 x 24 mm frame, i.e. the DIAGONAL ratio
   43.27 mm / sensor diagonal), not the 36 mm-width shortcut. The diagonal is the FULL sensor's: a
   photo wider than 3:2 (16:9) is taken to be cropped in height from a 4:3 sensor, which keeps the
   sensor's width (and this assumption is named in `problems`). FC300S: 20 / 43.27 x 5,000 px
   (4000 x 3000 diagonal) = 2,311 px; the 36 mm-width shortcut would give 20 / 36 x 4000 = 2,222 px.
3. "sensor_table": focal length and sensor size both from the table (fixed-lens cameras only),
   when EXIF lacks FocalLength.
4. "borrowed": a photo without any of these takes the focal of an identical camera in the same
   folder (same pixel size; same make and model where its EXIF names them), see borrow_focals.
5. "fallback_guess": 1.2 x the long side (COLMAP's default prior); always named in `problems`. A guess
   is not knowledge: the adjustment lets it move freely (no focal gate, no tight prior).
"""
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from . import sensors
from .cancel import check

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm, the 35 mm format's diagonal
FALLBACK_FOCAL_FACTOR = 1.2  # focal guess = this x the long side, as COLMAP guesses without EXIF
FOCAL_35MM_DISAGREEMENT = 0.10  # report when the 35 mm equivalent and focal/sensor differ by more
PLAUSIBLE_SENSOR_WIDTH_MM = (1.0, 60.0)  # phone sensors (~4 mm) up to medium format (~54 mm)
PLAUSIBLE_FOCAL_RATIO = (0.3, 10.0)  # focal_px / long side: ~150 deg fisheye to ~6 deg telephoto
PLAUSIBLE_REL_ALT_M = (1.0, 1500.0)  # below 1 m the photo was taken on the ground; above is not a drone
MAX_IMAGE_PIXELS = 1 << 30  # 1,074 Mpx (OpenCV's own decode limit); larger "photos" are unusable with this reason
_HEAD_BYTES = 1 << 20  # header bytes read from non-JPEG files (PNG/TIFF metadata sits near the start)
_RESOLUTION_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # EXIF FocalPlaneResolutionUnit


@dataclass
class CameraPrior:
    path: str  # file path
    name: str  # file name
    status: str = "unusable"  # "ok" | "no_gps" | "unusable"
    problems: list = field(default_factory=list)  # every missing/implausible value, human readable
    width: int = 0  # pixel size read from the image itself (stored grid, not rotated by orientation)
    height: int = 0
    make: str | None = None
    model: str | None = None
    orientation: int | None = None  # EXIF Orientation (1 = as stored); pixels and K are NOT rotated
    capture_time: str | None = None  # ISO 8601, camera-local time (EXIF has no zone unless OffsetTime)
    focal_mm: float | None = None
    focal_35mm: float | None = None
    sensor_width_mm: float | None = None  # the sensor width used for focal_px, if any
    sensor_source: str | None = None  # "sensor_table" | "exif_focal_plane"
    lat: float | None = None  # degrees (EPSG:4979 latitude)
    lon: float | None = None
    gps_alt: float | None = None  # EXIF GPSAltitude, metres (~MSL on DJI), sign from GPSAltitudeRef
    rel_alt: float | None = None  # DJI RelativeAltitude: above the take-off point
    abs_alt: float | None = None  # DJI AbsoluteAltitude (~MSL)
    gimbal_yaw: float | None = None  # degrees clockwise from north
    gimbal_pitch: float | None = None  # degrees, -90 = nadir
    gimbal_roll: float | None = None
    flight_yaw: float | None = None
    flight_pitch: float | None = None
    flight_roll: float | None = None
    rtk_std_lat: float | None = None  # DJI RtkStdLat/Lon/Hgt, metres
    rtk_std_lon: float | None = None
    rtk_std_alt: float | None = None
    focal_px: float | None = None
    # "focal_and_sensor_width" | "35mm_equivalent" | "sensor_table" | "borrowed" (from an identical camera in
    # the folder, see borrow_focals) | "fallback_guess" | "user" (the pipeline's given focal)
    focal_source: str = ""
    metadata_source: str = ""  # "exif" (the exif package) or "gdal" (fallback reader) or ""

    @property
    def camera_key(self):
        """Images sharing intrinsics: same make, model, pixel size and focal length."""
        focal = f"{self.focal_mm:g}mm" if self.focal_mm else f"{self.focal_px or 0:.0f}px"
        return f"{self.make or 'unknown'} {self.model or 'unknown'} {self.width}x{self.height} {focal}"

    def K(self):  # noqa: N802
        """3x3 intrinsic matrix in pixels; principal point at the image centre (pixel-centre convention)."""
        if not self.focal_px or self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self.path}: no intrinsics ({'; '.join(self.problems) or 'unknown size'})")
        f = float(self.focal_px)
        return np.array([[f, 0.0, (self.width - 1) / 2.0], [0.0, f, (self.height - 1) / 2.0], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- folder


def list_images(folder):
    """(images, skipped): image files directly in `folder` sorted by name, and (path, reason) for the rest."""
    folder = Path(folder)
    images, skipped = [], []
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if p.name.startswith("."):
            skipped.append((p, "hidden file"))
        elif p.is_dir():
            skipped.append((p, "folder (sub-folders are not searched)"))
        elif p.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((p, f"not an image (extension {p.suffix or 'none'}; expected {', '.join(IMAGE_EXTENSIONS)})"))
        else:
            images.append(p)
    return images, skipped


def read_priors(folder, progress=None, is_canceled=None):
    """Priors of every image in `folder`, sorted by name. Raises for a missing or image-less folder."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder does not exist: {folder}")
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    images, skipped = list_images(folder)
    if not images:
        extra = f" ({len(skipped)} other file(s) skipped, e.g. {skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}{extra}")
    priors = []
    for i, path in enumerate(images):
        check(is_canceled)
        priors.append(read_prior(path))
        if progress is not None:
            progress((i + 1) / len(images), path.name)
    borrow_focals(priors)
    return priors


GUESS_SOURCE = "fallback_guess"
_NOT_A_DONOR = (GUESS_SOURCE, "borrowed", "user", "")


def borrow_focals(priors):
    """Photos whose focal is only a guess take the focal of an identical camera in the same folder:
    same pixel size, and the same make and model where the photo's EXIF names them. When photos of
    that size disagree (a zoom lens), nothing is borrowed and the guess stays a guess."""
    donors = [d for d in priors if d.status != "unusable" and d.focal_px and d.focal_source not in _NOT_A_DONOR]
    for p in priors:
        if p.focal_source != GUESS_SOURCE or p.status == "unusable":
            continue
        same = [d for d in donors if (d.width, d.height) == (p.width, p.height)
                and (not p.make or d.make == p.make) and (not p.model or d.model == p.model)]
        focals = sorted({round(d.focal_px, 2) for d in same})
        if len(focals) > 1:
            p.problems.append(f"photos of the same size give {len(focals)} different focal lengths "
                              f"({', '.join(f'{f:.0f}' for f in focals)} px): none borrowed, the focal stays a guess")
            continue
        if not same:
            continue
        donor = same[0]
        p.problems[:] = [q for q in p.problems if not q.startswith("focal length unknown: guessed")]
        p.focal_px, p.focal_mm, p.focal_source = donor.focal_px, donor.focal_mm, "borrowed"
        p.problems.append(f"focal length unknown: borrowed {donor.focal_px:.0f} px ({donor.focal_source}) from "
                          f"{donor.name}, a {donor.make or 'unknown'} {donor.model or 'unknown'} photo of the same size")


def focal_source_words(source):
    """The source of a prior focal in a surveyor's words, for messages."""
    return {"user": "the given focal", GUESS_SOURCE: "a guessed focal (no EXIF)",
            "borrowed": "the focal borrowed from an identical camera in the folder"}.get(source, "the EXIF focal")


# --------------------------------------------------------------------------- one image


def read_prior(path):
    """The CameraPrior of one image file. Never raises for a bad file: status "unusable" + problems."""
    path = Path(path)
    prior = CameraPrior(path=str(path), name=path.name)
    try:
        _fill_prior(prior, path)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported, a survey must go on
        prior.status = "unusable"
        prior.problems.append(f"could not read the file: {type(e).__name__}: {e}")
    return prior


def _fill_prior(prior, path):
    problems = prior.problems
    try:
        data, tail = _read_head_and_tail(path)
    except OSError as e:
        problems.append(f"cannot read the file: {e.strerror or e}")
        return
    if not data:
        problems.append("empty file (0 bytes)")
        return

    size, xmp_text, header = _image_size(path, data, tail, problems)
    if size is None:
        prior.status = "unusable"
        return
    prior.width, prior.height = size
    if size_problem(*size):
        problems.append(size_problem(*size))
        prior.status = "unusable"
        return

    tags = _exif_tags(path, data, prior)
    if xmp_text is None:
        xmp_text = _xmp_packet(header)
    xmp = _dji_xmp(xmp_text)

    prior.make = _clean_text(tags.get("make")) or xmp.get("Make")
    prior.model = _clean_text(tags.get("model")) or xmp.get("Model")
    if not prior.make or not prior.model:
        problems.append("camera make/model missing from EXIF: the sensor table cannot be used")
    prior.orientation = _as_int(tags.get("orientation"))
    if prior.orientation not in (None, 1):
        problems.append(f"EXIF orientation {prior.orientation}: pixels and K are kept in the stored (unrotated) grid")
    prior.capture_time = _capture_time(tags, problems)

    _fill_gps(prior, tags)
    _fill_xmp(prior, xmp)
    _fill_focal(prior, tags)
    prior.status = "ok" if prior.lat is not None and prior.lon is not None else "no_gps"


# --------------------------------------------------------------------------- pixel size


def size_problem(width, height):
    """Why an image of this pixel size is not used (None when it is fine)."""
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{width}x{height} is {width * height / 1e6:.0f} Mpx, beyond the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
                "limit for a photo (decoding it would take GBs of memory)")
    return None


def header_size(path):
    """(width, height) read from the image's own header without decoding it; None when unreadable."""
    path = Path(path)
    try:
        data, tail = _read_head_and_tail(path)
    except OSError:
        return None
    if not data:
        return None
    return _image_size(path, data, tail, [])[0]


def _read_head_and_tail(path):
    """(bytes, last bytes): a JPEG whole (the end-of-image check needs it, and photos are a few MB),
    other formats only their first MiB and last 64 bytes (a folder may hold GB-sized GeoTIFFs)."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
        if head[:2] == b"\xff\xd8":
            data = head + f.read()
            return data, data[-64:]
        size = os.fstat(f.fileno()).st_size
        if size <= len(head):
            return head, head[-64:]
        f.seek(size - 64)
        return head, f.read()


def _image_size(path, data, tail, problems):
    """((width, height), xmp text or None, header bytes to search for XMP) from the image's own header,
    or (None, None, None) with the reason in problems."""
    if data[:2] == b"\xff\xd8":
        size, scan_start = _jpeg_size(data, problems)
        return size, None, data[:scan_start]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            problems.append("damaged PNG: no IHDR header")
            return None, None, None
        width, height = struct.unpack(">II", data[16:24])
        if b"IEND" not in tail:
            problems.append("truncated PNG: the file ends before its IEND chunk")
            return None, None, None
        return (int(width), int(height)), None, data
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        size, xmp = _gdal_size(path, problems)
        return size, xmp, data
    kind = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix.lstrip(".").upper()
    problems.append(f"not a {kind} image: the file starts with bytes {data[:4].hex()}")
    return None, None, None


# SOF markers carry the frame size; C4 (DHT), C8 (JPG extension) and CC (DAC) do not.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data, problems):
    """(size or None, offset of the first scan): walk the segments to the frame header (SOF) and
    check that the scan ends with an end-of-image marker.

    Reading the header is ~1000x faster than decoding a 12 MP photo; the EOI check after the main
    image's first scan (the thumbnail inside APP1 is skipped with its segment) finds truncated files.
    """
    pos, size, n = 2, None, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            problems.append(f"damaged JPEG: no segment marker at byte {pos}")
            return None, 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF_MARKERS and pos + 9 <= n:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            size = (int(width), int(height))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                problems.append("damaged JPEG: scan data before any frame header")
                return None, 0
            if data.find(b"\xff\xd9", pos + 2 + length) < 0:
                problems.append("truncated JPEG: the image data ends before its end-of-image marker")
                return None, 0
            if size[0] == 0 or size[1] == 0:
                problems.append(f"damaged JPEG: frame size {size[0]}x{size[1]}")
                return None, 0
            return size, pos
        pos += 2 + length
    problems.append("truncated JPEG: the file ends inside its header" + ("" if size else " (no frame size)"))
    return None, 0


def _gdal_open(path):
    """Open read-only with GDAL's .aux.xml side files off for this thread: the photo folder is never written."""
    from osgeo import gdal

    # No gdal.UseExceptions(): it is process-wide, and inside QGIS it would change other code's GDAL.
    previous = gdal.GetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        return gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY)
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", previous)


def _gdal_size(path, problems):
    """TIFF (and anything else GDAL reads): size and XMP from GDAL, read-only, no side files."""
    try:
        ds = _gdal_open(path)
    except RuntimeError as e:
        problems.append(f"GDAL cannot open the image: {e}")
        return None, None
    if ds is None:
        problems.append("GDAL cannot open the image")
        return None, None
    xmp = ds.GetMetadata("xml:XMP")
    size = (int(ds.RasterXSize), int(ds.RasterYSize))
    ds = None
    return size, (xmp[0] if xmp else None)


# --------------------------------------------------------------------------- EXIF


def _exif_tags(path, data, prior):
    """EXIF as a dict of exif-package attribute names; the exif package first, GDAL's reader as fallback."""
    tags, error = {}, None
    try:
        import exif

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package warns about padded ASCII tags
            image = exif.Image(data)
            if image.has_exif:
                for name in _EXIF_NAMES:
                    try:
                        value = image.get(name)
                    except Exception:  # noqa: BLE001 - one malformed tag must not hide the others
                        value = None
                    if value is not None:
                        tags[name] = value
    except Exception as e:  # noqa: BLE001 - the package raises many types on malformed files
        error = f"{type(e).__name__}: {e}"
    if tags:
        prior.metadata_source = "exif"
        return tags
    tags = _gdal_exif(path)
    if tags:
        prior.metadata_source = "gdal"
        if error:
            prior.problems.append(f"the exif package could not read the EXIF ({error}); read it with GDAL instead")
        return tags
    prior.problems.append("no EXIF metadata" + (f" (exif package: {error})" if error else ""))
    return {}


_EXIF_NAMES = (
    "make", "model", "orientation", "datetime_original", "datetime", "offset_time_original",
    "focal_length", "focal_length_in_35mm_film", "focal_plane_x_resolution", "focal_plane_resolution_unit",
    "gps_latitude", "gps_latitude_ref", "gps_longitude", "gps_longitude_ref", "gps_altitude", "gps_altitude_ref",
)
_GDAL_NAMES = {
    "EXIF_Make": "make", "EXIF_Model": "model", "EXIF_Orientation": "orientation",
    "EXIF_DateTimeOriginal": "datetime_original", "EXIF_DateTime": "datetime",
    "EXIF_OffsetTimeOriginal": "offset_time_original", "EXIF_FocalLength": "focal_length",
    "EXIF_FocalLengthIn35mmFilm": "focal_length_in_35mm_film",
    "EXIF_FocalPlaneXResolution": "focal_plane_x_resolution",
    "EXIF_FocalPlaneResolutionUnit": "focal_plane_resolution_unit",
    "EXIF_GPSLatitude": "gps_latitude", "EXIF_GPSLatitudeRef": "gps_latitude_ref",
    "EXIF_GPSLongitude": "gps_longitude", "EXIF_GPSLongitudeRef": "gps_longitude_ref",
    "EXIF_GPSAltitude": "gps_altitude", "EXIF_GPSAltitudeRef": "gps_altitude_ref",
    "TIFFTAG_MAKE": "make", "TIFFTAG_MODEL": "model", "TIFFTAG_DATETIME": "datetime",
}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _gdal_exif(path):
    """EXIF tags through GDAL (JPEG and TIFF drivers), converted to the exif package's names and types."""
    try:
        ds = _gdal_open(path)
        md = dict(ds.GetMetadata() or {})
        md.update(ds.GetMetadata("EXIF") or {})
        ds = None
    except Exception:  # noqa: BLE001 - GDAL cannot read it either: the caller reports "no EXIF"
        return {}
    tags = {}
    for key, name in _GDAL_NAMES.items():
        if key not in md or name in tags:
            continue
        text = md[key].strip()
        if name in ("gps_latitude", "gps_longitude"):
            numbers = [float(x) for x in _NUMBER.findall(text)]
            value = tuple(numbers) if numbers else None
        elif name in ("focal_length", "focal_length_in_35mm_film", "focal_plane_x_resolution", "gps_altitude",
                      "orientation", "focal_plane_resolution_unit", "gps_altitude_ref"):
            numbers = _NUMBER.findall(text.replace("0x", ""))
            value = float(numbers[0]) if numbers else None
        else:
            value = text
        if value not in (None, ""):
            tags[name] = value
    return tags


def _clean_text(value):
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None


def _as_int(value):
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _as_float(value):
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _capture_time(tags, problems):
    text = _clean_text(tags.get("datetime_original")) or _clean_text(tags.get("datetime"))
    if not text:
        problems.append("no capture time (DateTimeOriginal) in EXIF")
        return None
    try:
        stamp = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        problems.append(f"unreadable capture time {text!r}")
        return None
    iso = stamp.isoformat()
    offset = _clean_text(tags.get("offset_time_original"))
    return iso + offset if offset and re.fullmatch(r"[+-]\d\d:\d\d", offset) else iso


# --------------------------------------------------------------------------- GPS


def _dms(value):
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return _as_float(value)
    parts = [_as_float(v) for v in value]
    if not parts or any(p is None for p in parts):
        return None
    return sum(p / 60.0**i for i, p in enumerate(parts[:3]))


def _fill_gps(prior, tags):
    problems = prior.problems
    lat, lon = _dms(tags.get("gps_latitude")), _dms(tags.get("gps_longitude"))
    if lat is None or lon is None:
        problems.append("no GPS position in EXIF")
        return
    lat_ref = _clean_text(tags.get("gps_latitude_ref"))
    lon_ref = _clean_text(tags.get("gps_longitude_ref"))
    if lat_ref is None or lon_ref is None:
        problems.append("GPS latitude/longitude reference (N/S, E/W) missing: assumed N and E")
    lat = -lat if (lat_ref or "N").upper().startswith("S") else lat
    lon = -lon if (lon_ref or "E").upper().startswith("W") else lon
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        problems.append(f"implausible GPS position lat {lat:.6f}, lon {lon:.6f}: ignored")
        return
    if lat == 0.0 and lon == 0.0:
        problems.append("GPS position is 0, 0 (no fix): ignored")
        return
    prior.lat, prior.lon = lat, lon
    alt = _as_float(tags.get("gps_altitude"))
    if alt is None:
        problems.append("no GPS altitude in EXIF")
        return
    if _as_int(tags.get("gps_altitude_ref")) == 1:  # 1 = below sea level
        alt = -alt
    if alt == 0.0:
        problems.append("GPS altitude is exactly 0 m (no altitude fix?)")
    prior.gps_alt = alt


# --------------------------------------------------------------------------- DJI XMP

_XMP_FIELDS = {
    "RelativeAltitude": "rel_alt", "AbsoluteAltitude": "abs_alt",
    "GimbalYawDegree": "gimbal_yaw", "GimbalPitchDegree": "gimbal_pitch", "GimbalRollDegree": "gimbal_roll",
    "FlightYawDegree": "flight_yaw", "FlightPitchDegree": "flight_pitch", "FlightRollDegree": "flight_roll",
    "RtkStdLat": "rtk_std_lat", "RtkStdLon": "rtk_std_lon", "RtkStdHgt": "rtk_std_alt",
}


def _xmp_packet(data):
    """The XMP packet text of a JPEG (the one with DJI's namespace when there are several)."""
    packets, start = [], 0
    while True:
        i = data.find(b"<x:xmpmeta", start)
        if i < 0:
            break
        j = data.find(b"</x:xmpmeta>", i)
        if j < 0:
            break
        packets.append(data[i:j + 12].decode("utf-8", "replace"))
        start = j
    for p in packets:
        if "drone-dji" in p:
            return p
    return packets[0] if packets else None


def _xmp_value(text, prefix, name):
    """A simple XMP property in attribute (prefix:Name="v") or element (<prefix:Name>v</...>) form.

    A regular expression rather than an XML parser: the packets are flat, and it keeps untrusted
    files away from XML entity expansion (bandit B314).
    """
    m = re.search(rf'{re.escape(prefix)}:{name}\s*=\s*["\']([^"\']*)["\']', text)
    if m is None:
        m = re.search(rf"<{re.escape(prefix)}:{name}>\s*([^<]*?)\s*</{re.escape(prefix)}:{name}>", text)
    return m.group(1).strip() if m else None


def _dji_xmp(text):
    if not text:
        return {}
    values = {}
    for name in _XMP_FIELDS:
        raw = _xmp_value(text, "drone-dji", name)
        if raw is not None:
            values[name] = raw
    for name in ("Make", "Model"):
        raw = _xmp_value(text, "tiff", name)
        if raw:
            values[name] = raw
    return values


def _fill_xmp(prior, xmp):
    problems = prior.problems
    for name, attr in _XMP_FIELDS.items():
        if name not in xmp:
            continue
        value = _as_float(xmp[name])
        if value is None:
            problems.append(f"unreadable XMP {name} {xmp[name]!r}")
        elif "Yaw" in name and not -360.0 <= value <= 360.0:
            problems.append(f"implausible XMP {name} {value}: ignored")
        elif ("Pitch" in name or "Roll" in name) and not -180.0 <= value <= 180.0:
            problems.append(f"implausible XMP {name} {value}: ignored")
        else:
            setattr(prior, attr, value)
    if prior.rel_alt is None:
        problems.append("no RelativeAltitude (height above take-off) in XMP: footprints need a ground height")
    elif not PLAUSIBLE_REL_ALT_M[0] <= prior.rel_alt <= PLAUSIBLE_REL_ALT_M[1]:
        problems.append(f"implausible RelativeAltitude {prior.rel_alt:g} m (taken on the ground?)")
    if prior.gimbal_yaw is None and prior.flight_yaw is None:
        problems.append("no gimbal or flight yaw in XMP: heading unknown")
    elif prior.gimbal_yaw is None:
        problems.append("no gimbal yaw in XMP: the flight yaw stands in for the camera heading")


# --------------------------------------------------------------------------- focal length


def _fill_focal(prior, tags):
    problems = prior.problems
    long_side, short_side = max(prior.width, prior.height), min(prior.width, prior.height)
    focal_mm = _as_float(tags.get("focal_length"))
    if focal_mm is not None and not 0.5 <= focal_mm <= 2000.0:
        problems.append(f"implausible EXIF FocalLength {focal_mm:g} mm: ignored")
        focal_mm = None
    focal_35 = _as_float(tags.get("focal_length_in_35mm_film"))
    if focal_35 is not None and not 5.0 <= focal_35 <= 5000.0:
        if focal_35 != 0:  # 0 is EXIF's "unknown"
            problems.append(f"implausible EXIF FocalLengthIn35mmFilm {focal_35:g}: ignored")
        focal_35 = None
    prior.focal_mm, prior.focal_35mm = focal_mm, focal_35
    if focal_mm is None:
        problems.append("no focal length (mm) in EXIF")

    spec = sensors.lookup_sensor(prior.make, prior.model)
    pitch_mm = _focal_plane_pitch_mm(tags, prior.width, problems)

    focal_px = None
    if focal_mm is not None and spec is not None:
        focal_px = focal_mm * _pixels_per_mm(spec, long_side, short_side)
        prior.sensor_width_mm, prior.sensor_source, prior.focal_source = spec.width_mm, "sensor_table", \
            "focal_and_sensor_width"
    elif focal_mm is not None and pitch_mm is not None:
        focal_px = focal_mm / pitch_mm
        prior.sensor_width_mm, prior.sensor_source, prior.focal_source = pitch_mm * prior.width, \
            "exif_focal_plane", "focal_and_sensor_width"
    elif focal_35 is not None:
        focal_px = focal_from_35mm(focal_35, prior.width, prior.height, problems)
        prior.focal_source = "35mm_equivalent"
        if focal_mm is not None:
            problems.append("sensor width unknown (camera not in the sensor table, no EXIF focal plane "
                            "resolution): focal from the 35 mm equivalent")
    elif spec is not None and spec.focal_mm is not None:
        focal_px = spec.focal_mm * _pixels_per_mm(spec, long_side, short_side)
        prior.focal_mm = spec.focal_mm
        prior.sensor_width_mm, prior.sensor_source, prior.focal_source = spec.width_mm, "sensor_table", "sensor_table"
        problems.append(f"focal length {spec.focal_mm:g} mm taken from the sensor table ({prior.make} {prior.model})")
    else:
        focal_px = FALLBACK_FOCAL_FACTOR * long_side
        prior.focal_source = "fallback_guess"
        problems.append(f"focal length unknown: guessed {FALLBACK_FOCAL_FACTOR} x the long side = {focal_px:.0f} px")

    if prior.focal_source == "focal_and_sensor_width" and focal_35 is not None:
        check = focal_from_35mm(focal_35, prior.width, prior.height, [])
        if abs(check / focal_px - 1.0) > FOCAL_35MM_DISAGREEMENT:
            problems.append(f"the 35 mm equivalent ({focal_35:g} mm -> {check:.0f} px) disagrees with focal/sensor "
                            f"({focal_px:.0f} px) by {100 * abs(check / focal_px - 1):.0f}%")
    ratio = focal_px / long_side
    if not PLAUSIBLE_FOCAL_RATIO[0] <= ratio <= PLAUSIBLE_FOCAL_RATIO[1]:
        problems.append(f"implausible focal length {focal_px:.0f} px for a {long_side} px wide image")
    prior.focal_px = float(focal_px)


def _pixels_per_mm(spec, long_side, short_side):
    """Pixels per mm on the focal plane. A crop keeps the sensor dimension it fills: a 16:9 photo on a
    4:3 sensor spans its full width, a 4:3 photo on a 3:2 sensor its full height."""
    if long_side / short_side >= spec.width_mm / spec.height_mm - 0.01:
        return long_side / spec.width_mm
    return short_side / spec.height_mm


def _focal_plane_pitch_mm(tags, width, problems):
    """Pixel pitch (mm) from EXIF FocalPlaneXResolution, if it is plausible for this image's width."""
    resolution = _as_float(tags.get("focal_plane_x_resolution"))
    if not resolution or resolution <= 0:
        return None
    unit_mm = _RESOLUTION_UNIT_MM.get(_as_int(tags.get("focal_plane_resolution_unit")) or 2)
    if unit_mm is None:
        problems.append("unknown EXIF FocalPlaneResolutionUnit: focal plane resolution ignored")
        return None
    pitch = unit_mm / resolution
    sensor_width = pitch * width
    if not PLAUSIBLE_SENSOR_WIDTH_MM[0] <= sensor_width <= PLAUSIBLE_SENSOR_WIDTH_MM[1]:
        problems.append(f"EXIF FocalPlaneXResolution implies a {sensor_width:.3g} mm wide sensor for "
                        f"{width} px (photo resized after capture?): ignored")
        return None
    return pitch


def focal_from_35mm(focal_35mm, width, height, problems):
    """Focal in pixels from the 35 mm equivalent by its diagonal definition (see module docstring)."""
    long_side, short_side = max(width, height), min(width, height)
    full_short = short_side
    if long_side / short_side > 1.5 + 0.01:  # wider than 3:2: assume a height crop of a 4:3 sensor
        full_short = 0.75 * long_side
        problems.append(f"{width}x{height} is wider than 3:2: assumed a crop of a 4:3 sensor for the 35 mm "
                        f"equivalent")
    return focal_35mm / FULL_FRAME_DIAGONAL_MM * math.hypot(long_side, full_short)


# --------------------------------------------------------------------------- orientation

# Camera axes (OpenCV: x right, y down, z forward) in the gimbal frame (x forward, y right, z down).
_CAMERA_IN_BODY = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_NED_TO_ENU = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_gimbal(yaw_deg, pitch_deg, roll_deg=0.0):
    """World (ENU) -> camera (OpenCV axes) rotation from DJI gimbal angles.

    DJI convention: yaw clockwise from north, pitch 0 = horizontal and -90 = nadir, roll positive
    = right side down. The angles compose in the gimbal's mechanical order, yaw then roll then
    pitch (camera on the innermost, pitch axis): R_ned_from_gimbal = Rz(yaw) Rx(roll) Ry(pitch),
    as core/synthetic.py writes them. Unlike yaw-pitch-roll it has no singularity at nadir. At
    yaw 0, pitch -90 the image top points north and its right side east.
    """
    yaw, pitch, roll = np.radians([yaw_deg, pitch_deg, roll_deg])
    gimbal_to_enu = _NED_TO_ENU @ _rot_z(yaw) @ _rot_x(roll) @ _rot_y(pitch) @ _CAMERA_IN_BODY
    return np.ascontiguousarray(gimbal_to_enu.T)


def angles_from_rotation(R):
    """(yaw, pitch, roll) in degrees of a world (ENU) -> camera rotation; inverse of rotation_from_gimbal.

    Yaw in [0, 360). Singular only when the camera's right axis is vertical (roll +-90).
    """
    g = _NED_TO_ENU.T @ np.asarray(R, dtype=np.float64).T @ _CAMERA_IN_BODY.T  # Rz(yaw) Rx(roll) Ry(pitch)
    roll = np.arcsin(np.clip(g[2, 1], -1.0, 1.0))
    yaw = np.arctan2(-g[0, 1], g[1, 1])
    pitch = np.arctan2(-g[2, 0], g[2, 2])
    return float(np.degrees(yaw)) % 360.0, float(np.degrees(pitch)), float(np.degrees(roll))


def camera_rotation(prior):
    """(R, source) for a prior: gimbal angles, else flight yaw looking down, else nadir north-up."""
    if prior.gimbal_yaw is not None:
        pitch = prior.gimbal_pitch if prior.gimbal_pitch is not None else -90.0
        roll = prior.gimbal_roll if prior.gimbal_roll is not None else 0.0
        return rotation_from_gimbal(prior.gimbal_yaw, pitch, roll), "gimbal"
    if prior.flight_yaw is not None:
        pitch = prior.gimbal_pitch if prior.gimbal_pitch is not None else -90.0
        return rotation_from_gimbal(prior.flight_yaw, pitch, 0.0), "flight_yaw"
    return rotation_from_gimbal(0.0, -90.0, 0.0), "assumed_nadir_north_up"

