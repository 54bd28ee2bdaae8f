"""Camera priors as map layers: where each photo was taken and what ground it should cover.

Before any matching a surveyor sees coverage and gaps: one `cameras` point per photo (with every
EXIF/XMP value and its problems) and one predicted `footprints` polygon per photo, intersected
with flat ground. The ground is either RelativeAltitude below the camera (DJI's height above the
take-off point, so flat ground at take-off level) or a given ground height in the datum of the
camera altitude (EXIF GPSAltitude, ~MSL on DJI).
"""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import camera
from .footprints import ground_footprint, polygon_area
from .geo import LocalFrame, utm_crs_for
from .gpkg import Layer, write_geopackage

CAMERA_FIELDS = [
    ("image", "str"), ("status", "str"), ("problem", "str"), ("make", "str"), ("model", "str"),
    ("width", "int"), ("height", "int"), ("capture_time", "str"), ("focal_mm", "real"), ("focal_35mm", "real"),
    ("sensor_width_mm", "real"), ("focal_px", "real"), ("focal_source", "str"), ("lat", "real"), ("lon", "real"),
    ("gps_alt", "real"), ("rel_alt", "real"), ("abs_alt", "real"), ("gimbal_yaw", "real"), ("gimbal_pitch", "real"),
    ("gimbal_roll", "real"), ("flight_yaw", "real"), ("path", "str"),
]
FOOTPRINT_FIELDS = [
    ("image", "str"), ("height_above_ground", "real"), ("ground_alt", "real"), ("orientation_source", "str"),
    ("gsd_cm", "real"), ("area_m2", "real"),
]
MIN_HEIGHT_ABOVE_GROUND_M = 1.0  # below this a footprint is meaningless (photo taken on the ground)


@dataclass
class PriorsConfig:
    images: str = ""  # folder of photos (read only; never written to)
    output: str = ""  # GeoPackage to write (layers cameras, footprints)
    target_crs: str = ""  # e.g. "EPSG:32615"; empty: the UTM zone of the photos' GPS centroid
    ground_height: float | None = None  # ground height in the camera altitude's datum; None: use RelativeAltitude
    samples_per_edge: int = 8  # border points per image edge: straight edges need few, distortion would need more


def camera_altitude(prior):
    """The camera's height in the GPS datum (EXIF GPSAltitude, else DJI AbsoluteAltitude), or None."""
    return prior.gps_alt if prior.gps_alt is not None else prior.abs_alt


def prior_layers(priors, crs, ground_height=None, samples_per_edge=8):
    """(cameras Layer, footprints Layer) in `crs` from a list of CameraPrior. Adds footprint problems to priors."""
    located = [p for p in priors if p.lat is not None and p.lon is not None]
    positions, footprints = {}, []
    if located:
        alts = []
        for p in located:
            if camera_altitude(p) is None:
                p.problems.append("no camera altitude (GPSAltitude / AbsoluteAltitude): point drawn at height 0")
            alts.append(camera_altitude(p) if camera_altitude(p) is not None else 0.0)
        lat, lon = [p.lat for p in located], [p.lon for p in located]
        frame = LocalFrame(np.mean(lat), np.mean(lon), float(np.mean(alts)))
        centres = frame.to_enu(lat, lon, alts)
        # One CRS transformation for all points: a pyproj Transformer per photo would dominate the run time.
        polygons = [(p, _footprint_enu(p, c, alt, ground_height, samples_per_edge))
                    for p, c, alt in zip(located, centres, alts)]
        polygons = [(p, poly, attrs) for p, (poly, attrs) in polygons if poly is not None]
        stacked = np.vstack([centres] + [poly for _, poly, _ in polygons])
        xyz = frame.to_crs(stacked, crs)
        positions = {p.path: tuple(xyz[i]) for i, p in enumerate(located)}
        start = len(located)
        for _, poly, attrs in polygons:
            ring = [tuple(c[:2]) for c in xyz[start:start + len(poly)]]
            start += len(poly)
            footprints.append(([ring], attrs))
    cameras = [(positions.get(p.path), _camera_attributes(p)) for p in priors]
    return (Layer("cameras", "PointZ", CAMERA_FIELDS, cameras),
            Layer("footprints", "Polygon", FOOTPRINT_FIELDS, footprints))


def _footprint_enu(p, centre, alt, ground_height, samples_per_edge):
    """(ENU polygon, attributes) of a photo's predicted footprint, or (None, None) with the reason in problems."""
    if p.status == "unusable" or not p.focal_px:
        return None, None
    if ground_height is not None:
        if camera_altitude(p) is None:
            p.problems.append("no footprint: no camera altitude to subtract the ground height from")
            return None, None
        height = alt - float(ground_height)
    elif p.rel_alt is not None:
        height = p.rel_alt
    else:
        p.problems.append("no footprint: no RelativeAltitude and no ground height given")
        return None, None
    if height < MIN_HEIGHT_ABOVE_GROUND_M:
        p.problems.append(f"no footprint: camera {height:.1f} m above the ground")
        return None, None
    R, source = camera.camera_rotation(p)
    if source == "assumed_nadir_north_up":
        p.problems.append("footprint assumes a nadir, north-up camera (no yaw in the metadata)")
    poly = ground_footprint(p.K(), R, centre, centre[2] - height, p.width, p.height,
                            samples_per_edge=samples_per_edge)
    if poly is None:
        p.problems.append("no footprint: the camera looks above the horizon")
        return None, None
    attrs = {
        "image": p.name, "height_above_ground": float(height), "ground_alt": float(alt - height),
        "orientation_source": source, "gsd_cm": 100.0 * height / p.focal_px,
        "area_m2": polygon_area(poly[:, :2]),
    }
    return poly, attrs


def _camera_attributes(p):
    attrs = {name: getattr(p, name, None) for name, _ in CAMERA_FIELDS}
    attrs["image"] = p.name
    attrs["problem"] = "; ".join(p.problems) or None
    return attrs


def default_crs(priors):
    """The UTM zone of the GPS centroid; EPSG:4326 when no photo has GPS."""
    located = [p for p in priors if p.lat is not None and p.lon is not None]
    if not located:
        return "EPSG:4326"
    return utm_crs_for(np.mean([p.lon for p in located]), np.mean([p.lat for p in located]))


def run(config, progress=None, is_canceled=None):
    """Read the priors of config.images and write config.output; returns a summary dict."""
    t0 = time.perf_counter()
    images, output = Path(config.images), Path(config.output)
    if images.exists() and output.resolve().is_relative_to(images.resolve()):
        raise ValueError(f"the output {output} is inside the image folder {images}, which is never written to")
    _, skipped = camera.list_images(images) if images.is_dir() else ([], [])
    priors = camera.read_priors(images, progress=progress, is_canceled=is_canceled)
    crs = config.target_crs or default_crs(priors)
    layers = prior_layers(priors, crs, config.ground_height, config.samples_per_edge)
    write_geopackage(output, crs, layers)
    statuses = [p.status for p in priors]
    return {
        "output": str(output),
        "crs": crs,
        "images": len(priors),
        "ok": statuses.count("ok"),
        "no_gps": statuses.count("no_gps"),
        "unusable": statuses.count("unusable"),
        "footprints": len(layers[1].features),
        "skipped": [(str(path), reason) for path, reason in skipped],
        "problems": {p.name: list(p.problems) for p in priors if p.problems},
        "seconds": time.perf_counter() - t0,
    }
