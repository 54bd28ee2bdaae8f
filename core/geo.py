"""Coordinate frames: GPS (EPSG:4979) <-> ECEF (EPSG:4978) <-> local ENU, and export to any CRS.

Heights have a stated meaning. The input altitude's reference is a setting (config
altitude_reference): "egm96" (the default and a stated assumption: EXIF GPSAltitude on DJI photos is
roughly above mean sea level), "ellipsoidal", "egm2008" (where PROJ has its grid) or "offset"
(ellipsoidal = altitude + altitude_offset_m). The pipeline converts GPS altitudes to ellipsoidal
heights (to_ellipsoidal, PROJ's geoid grids: Debian's proj-data ships egm96_15.gtx) before building
the ENU frame, and a frame made with `plain_heights` writes:
- to a CRS with a vertical axis (a compound CRS such as EPSG:32632+5773, EPSG:4979, ECEF): that CRS's
  heights, transformed by PROJ;
- to a horizontal-only CRS (EPSG:32632): heights in the input's reference (plain_heights).
A frame made without `plain_heights` (legacy, tests, synthetic ground truth) passes its heights
through unchanged, as the input had them; the frame is metric and locally exact either way (a 30 m
datum offset changes its curvature by ~5e-6).
"""
import functools

import numpy as np
from pyproj import CRS, Transformer

GEODETIC_3D = "EPSG:4979"  # latitude, longitude (degrees), height (metres)
ECEF = "EPSG:4978"


def utm_crs_for(lon, lat):
    """EPSG code string of the WGS 84 / UTM zone containing (lon, lat)."""
    zone = int(np.floor((float(lon) + 180.0) / 6.0)) % 60 + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


@functools.lru_cache(maxsize=64)
def transformer(source, target):
    """Transformer.from_crs(source, target, always_xy=True), built once per pair: building one takes
    tens of milliseconds (a geoid grid's more), which a per-footprint call paid a thousand times.
    pyproj's Transformers are safe to share between threads (since 3.1)."""
    return Transformer.from_crs(source, target, always_xy=True)


ALTITUDE_REFERENCES = ("egm96", "ellipsoidal", "egm2008", "offset")
_GEOID_CRS = {"egm96": "EPSG:4326+5773", "egm2008": "EPSG:4326+3855"}  # lat/lon + geoid heights
_GEOID_NAME = {"egm96": "EGM96 height (EPSG:5773)", "egm2008": "EGM2008 height (EPSG:3855)"}


def geoid_undulation(lat, lon, model="egm96"):
    """Geoid height N (m) above the WGS 84 ellipsoid at (lat, lon): ellipsoidal = orthometric + N.
    Raises ValueError when PROJ lacks the model's grid (it would otherwise return 0 silently)."""
    lat = np.atleast_1d(np.asarray(lat, np.float64))
    lon = np.atleast_1d(np.asarray(lon, np.float64))
    t = transformer(_GEOID_CRS[model], GEODETIC_3D)
    _, _, h = t.transform(lon, lat, np.zeros_like(lat))
    h = np.asarray(h, np.float64)
    if not np.all(np.isfinite(h)) or np.all(h == 0.0):
        raise ValueError(f"PROJ has no {model.upper()} geoid grid on this machine (install proj-data, or set "
                         f"altitude_reference to 'ellipsoidal' or 'offset')")
    return h


def to_ellipsoidal(lat, lon, h, reference, offset_m=0.0):
    """Heights `h` in `reference` (ALTITUDE_REFERENCES) -> ellipsoidal heights (WGS 84), metres."""
    h = np.asarray(h, np.float64)
    if reference == "ellipsoidal":
        return h.copy()
    if reference == "offset":
        return h + float(offset_m)
    if reference in _GEOID_CRS:
        return h + geoid_undulation(lat, lon, reference).reshape(h.shape)
    raise ValueError(f"unknown altitude reference {reference!r}; expected one of {', '.join(ALTITUDE_REFERENCES)}")


def from_ellipsoidal(lat, lon, h, reference, offset_m=0.0):
    """Inverse of to_ellipsoidal."""
    h = np.asarray(h, np.float64)
    return h - (to_ellipsoidal(lat, lon, np.zeros_like(h), reference, offset_m))


def has_vertical_axis(crs):
    """Whether coordinates in `crs` carry their own height (compound, 3D geographic, geocentric)."""
    crs = CRS.from_user_input(crs)
    return bool(crs.is_compound or crs.is_geocentric or len(crs.axis_info) == 3)


def describe_reference(reference, offset_m=0.0):
    if reference == "ellipsoidal":
        return "ellipsoidal height above WGS 84 (EPSG:4979)"
    if reference == "offset":
        return f"ellipsoidal height minus {offset_m:+.3f} m (a given offset)"
    return _GEOID_NAME[reference] + " through PROJ's geoid grid"


def vertical_reference(crs, reference, offset_m=0.0, assumed=True):
    """The summary's `vertical_reference`: what the input altitudes were taken to be and what the
    output heights are."""
    crs_obj = CRS.from_user_input(crs) if crs else None
    if crs_obj is not None and has_vertical_axis(crs_obj):
        out = f"heights of {crs_obj.name} ({crs}), transformed by PROJ"
    else:
        out = describe_reference(reference, offset_m) + " (the target CRS has no vertical axis: heights in the " \
              "input altitudes' reference)"
    return {"input_altitude": describe_reference(reference, offset_m), "input_assumed": bool(assumed),
            "output": out, "setting": "config altitude_reference" + (f" = {reference}" if reference else "")}


def crs_units_are_metres(crs):
    crs = CRS.from_user_input(crs)
    return crs.is_projected and all(a.unit_name in ("metre", "meter") for a in crs.axis_info[:2])


class LocalFrame:
    """East-North-Up tangent plane at an origin (lat0, lon0, h0); all arrays float64 (N, 3)."""

    def __init__(self, lat0, lon0, h0=0.0, plain_heights=None, offset_m=0.0):
        """h0 and every geodetic height: ellipsoidal when plain_heights is given (the reference of the
        heights written to CRSs without a vertical axis), else as the caller's input had them."""
        self.lat0, self.lon0, self.h0 = float(lat0), float(lon0), float(h0)
        self.plain_heights, self.offset_m = plain_heights, float(offset_m)
        self._to_ecef = transformer(GEODETIC_3D, ECEF)
        self._from_ecef = transformer(ECEF, GEODETIC_3D)
        self.origin_ecef = np.array(self._to_ecef.transform(self.lon0, self.lat0, self.h0), dtype=np.float64)
        la, lo = np.radians(self.lat0), np.radians(self.lon0)
        # Rows: east, north, up unit vectors expressed in ECEF.
        self.rotation = np.array(
            [
                [-np.sin(lo), np.cos(lo), 0.0],
                [-np.sin(la) * np.cos(lo), -np.sin(la) * np.sin(lo), np.cos(la)],
                [np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)],
            ]
        )

    @classmethod
    def centred_on(cls, lat, lon, h, **kwargs):
        """A frame at the mean of the given positions (NaNs ignored)."""
        return cls(np.nanmean(lat), np.nanmean(lon), np.nanmean(h), **kwargs)

    def to_dict(self):
        d = {"lat0": self.lat0, "lon0": self.lon0, "h0": self.h0}
        if self.plain_heights is not None:
            d.update(plain_heights=self.plain_heights, offset_m=self.offset_m)
        return d

    def to_enu(self, lat, lon, h):
        x, y, z = self._to_ecef.transform(np.asarray(lon, float), np.asarray(lat, float), np.asarray(h, float))
        ecef = np.column_stack([np.ravel(x), np.ravel(y), np.ravel(z)])
        return np.ascontiguousarray((ecef - self.origin_ecef) @ self.rotation.T)

    def to_geodetic(self, enu):
        enu = np.atleast_2d(np.asarray(enu, dtype=np.float64))
        ecef = enu @ self.rotation + self.origin_ecef
        lon, lat, h = self._from_ecef.transform(ecef[:, 0], ecef[:, 1], ecef[:, 2])
        return np.asarray(lat), np.asarray(lon), np.asarray(h)

    def to_crs(self, enu, crs):
        """ENU points -> (x, y, z) in `crs`: z in the CRS's own vertical reference when it has one
        (and the frame has plain_heights), else in plain_heights (or as the input heights were)."""
        lat, lon, h = self.to_geodetic(enu)
        crs = CRS.from_user_input(crs)
        if self.plain_heights is not None and has_vertical_axis(crs):
            x, y, z = transformer(GEODETIC_3D, crs).transform(lon, lat, h)
            return np.column_stack([np.ravel(x), np.ravel(y), np.ravel(z)]).astype(np.float64)
        xy = transformer("EPSG:4326", crs)
        x, y = xy.transform(lon, lat)
        if self.plain_heights is not None:
            h = from_ellipsoidal(lat, lon, h, self.plain_heights, self.offset_m)
        return np.column_stack([np.ravel(x), np.ravel(y), np.ravel(h)]).astype(np.float64)

    def from_crs(self, xyz, crs):
        """(x, y, z) in `crs` (z as in to_crs) -> ENU."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        crs = CRS.from_user_input(crs)
        if self.plain_heights is not None and has_vertical_axis(crs):
            lon, lat, h = transformer(crs, GEODETIC_3D).transform(xyz[:, 0], xyz[:, 1], xyz[:, 2])
            return self.to_enu(lat, lon, h)
        t = transformer(crs, "EPSG:4326")
        lon, lat = t.transform(xyz[:, 0], xyz[:, 1])
        h = xyz[:, 2]
        if self.plain_heights is not None:
            h = to_ellipsoidal(lat, lon, h, self.plain_heights, self.offset_m)
        return self.to_enu(lat, lon, h)
