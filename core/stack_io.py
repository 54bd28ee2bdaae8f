"""Image stack files: reading any depth and channel count (GDAL for what OpenCV cannot read), grey
conversion, pyramid levels, and writing aligned or fused images in the input's format and bit depth (EXIF
kept for JPEG, georeferencing for GeoTIFF). Shared by core.stack and core.fusion."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from . import workspace

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".pgm", ".ppm", ".bmp")


class StackError(ValueError):
    """Bad stack input (missing folder, one image, unreadable reference ...): the message says which file."""


def list_stack_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise StackError(f"input folder does not exist: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _gdal_open(gdal, path):
    """A GDAL dataset or None, whether or not another module turned on GDAL exceptions."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # our caller's error names the file once
    try:
        return gdal.Open(os.fspath(path))
    except RuntimeError:
        return None
    finally:
        gdal.PopErrorHandler()


def read_image(path):
    """Pixels as stored (no EXIF rotation), any depth/channels; GDAL for what OpenCV cannot read."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        try:
            from osgeo import gdal

            dataset = _gdal_open(gdal, path)
            if dataset is not None:
                bands = [dataset.GetRasterBand(i + 1).ReadAsArray() for i in range(min(dataset.RasterCount, 3))]
                image = bands[0] if len(bands) == 1 else np.dstack(bands[::-1])  # BGR like OpenCV
        except ImportError:
            pass
    if image is None:
        raise StackError(f"cannot read image: {path}")
    return image


def data_range(image):
    """Full-scale value of the image's dtype (65535 for 16 bit, 1.0 for float, else 255)."""
    return 65535.0 if image.dtype == np.uint16 else (1.0 if image.dtype.kind == "f" else 255.0)


def to_gray(image):
    """float32 grey in 0..255 whatever the depth and channel count."""
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if channels >= 3 else image[:, :, 0]
    gray = image.astype(np.float32)
    if image.dtype != np.uint8:
        gray *= np.float32(255.0 / data_range(image))
    return gray


def level_matrix(size_from, size_to):
    """Maps pixel-centre coordinates of an image of size_from (w, h) onto its resize to size_to."""
    sx, sy = size_to[0] / size_from[0], size_to[1] / size_from[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def resize_to(image, max_side):
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(w, h))
    if scale >= 1.0:
        return image, np.eye(3)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), level_matrix((w, h), size)


def gradient_magnitude(gray):
    """Exposure-robust structure image: gradient magnitude normalised by the local brightness."""
    blurred = cv2.GaussianBlur(gray, (0, 0), 1.0)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    local = cv2.GaussianBlur(blurred, (0, 0), 8.0) + 8.0  # gain-invariant; +8 keeps dark noise down
    return cv2.magnitude(gx, gy) / local


def _georeference(path):
    """(geotransform, projection WKT) of a georeferenced raster, else None."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        from osgeo import gdal
    except ImportError:
        return None
    dataset = _gdal_open(gdal, path)
    if dataset is None:
        return None
    transform, projection = dataset.GetGeoTransform(can_return_null=True), dataset.GetProjection()
    if transform is None or not projection:
        return None
    return tuple(transform), projection


def earlier_outputs(output_folder):
    """File names an earlier run of this job wrote into output_folder, as its transforms.json records them
    (aligned frames, the reference, a fused image); nothing else there is ever touched."""
    path = output_folder / "transforms.json"
    if not path.is_file():
        return []
    try:
        earlier = workspace.read_json(path)
        entries = [e for e in earlier.get("images", []) if isinstance(e, dict)]
        names = [e.get("image") for e in entries if e.get("status") in ("aligned", "reference")]
        names += [earlier.get(key) for key in ("fused", "fused_depth")]
    except (OSError, ValueError, AttributeError, TypeError):
        return []  # not a transforms.json of ours: it names nothing we may remove
    # plain file names only: a record can never reach outside the output folder
    return [n for n in names if isinstance(n, str) and n and Path(n).name == n and n not in (".", "..")]


def remove_earlier_outputs(output_folder, earlier, written, progress):
    """Remove what an earlier run wrote and this run did not (a frame rejected now, a fused image not
    asked for now), so the folder holds exactly what the new transforms.json describes. Returns the names."""
    stale = sorted({n for n in earlier if n not in written and (output_folder / n).is_file()})
    for name in stale:
        (output_folder / name).unlink()
    if stale:
        progress(0.97, f"removed {len(stale)} output(s) of an earlier run that this run did not write: "
                       f"{', '.join(stale)}")
    return stale


def write_output(source, target, image, georef, crop, jpeg_quality):
    """Write `image` atomically at `target` in the format its suffix names: JPEG with `source`'s EXIF / XMP
    segments, GeoTIFF with `georef` (geotransform, WKT) shifted by the `crop` offset, else what OpenCV writes."""
    target = Path(target)
    suffix = target.suffix.lower()
    if georef is not None and suffix in (".tif", ".tiff"):
        workspace.atomic_output(target, lambda tmp: _write_geotiff(tmp, image, georef, crop))
        return
    if suffix in (".jpg", ".jpeg"):
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise StackError(f"cannot encode {target}")
        data = _with_app1(encoded.tobytes(), source)

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(data)
        workspace.atomic_output(target, write)
        return

    def write(tmp):
        if not cv2.imwrite(tmp, image):
            raise StackError(f"cannot write {target}")
    workspace.atomic_output(target, write)


def _with_app1(jpeg, source):
    """Insert the source JPEG's APP1 segments (EXIF, XMP) after the new JPEG's SOI marker."""
    try:
        data = Path(source).read_bytes()
    except OSError:
        return jpeg
    if data[:2] != b"\xff\xd8":
        return jpeg
    segments, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: no more metadata
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE1:
            segments.append(data[i:i + 2 + length])
        i += 2 + length
    if not segments:
        return jpeg
    # the encoder's own APP0 (JFIF) stays first; EXIF readers accept APP1 after it
    insert_at = 2
    if jpeg[2:4] == b"\xff\xe0":
        insert_at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:insert_at] + b"".join(segments) + jpeg[insert_at:]


def _write_geotiff(tmp, image, georef, crop):
    from osgeo import gdal

    transform, projection = georef
    x0, y0 = (crop["x"], crop["y"]) if crop else (0, 0)
    # GDAL's geotransform addresses pixel corners; a whole-pixel crop offset shifts it exactly
    shifted = (transform[0] + x0 * transform[1] + y0 * transform[2], transform[1], transform[2],
               transform[3] + x0 * transform[4] + y0 * transform[5], transform[4], transform[5])
    bands = [image] if image.ndim == 2 else [image[:, :, i] for i in range(image.shape[2])]
    if image.ndim == 3 and image.shape[2] >= 3:
        bands = [image[:, :, 2], image[:, :, 1], image[:, :, 0]] + bands[3:]  # OpenCV BGR -> RGB bands
    gdal_type = {np.uint8: gdal.GDT_Byte, np.uint16: gdal.GDT_UInt16, np.int16: gdal.GDT_Int16,
                 np.float32: gdal.GDT_Float32}.get(image.dtype.type, gdal.GDT_Float64)
    dataset = gdal.GetDriverByName("GTiff").Create(tmp, image.shape[1], image.shape[0], len(bands), gdal_type)
    dataset.SetGeoTransform(shifted)
    dataset.SetProjection(projection)
    for i, band in enumerate(bands):
        dataset.GetRasterBand(i + 1).WriteArray(band)
    dataset.FlushCache()
    dataset = None
