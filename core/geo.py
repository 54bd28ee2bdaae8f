"""Coordinate frames: GPS (EPSG:4979) <-> ECEF (EPSG:4978) <-> local ENU, and export to any CRS.

Heights are passed through with the meaning they came with: EXIF GPSAltitude on DJI photos is
roughly above mean sea level, not ellipsoidal. We put it into EPSG:4979's height slot as is; the
ENU frame built from it is metric and locally exact (a 30 m datum offset changes the frame's
curvature by ~5e-6), and heights come back out with the same meaning. Code that mixes in a truly
ellipsoidal source must convert explicitly.
"""
import numpy as np
from pyproj import CRS, Transformer

GEODETIC_3D = "EPSG:4979"  # latitude, longitude (degrees), height (metres)
ECEF = "EPSG:4978"


def utm_crs_for(lon, lat):
    """EPSG code string of the WGS 84 / UTM zone containing (lon, lat)."""
    zone = int(np.floor((float(lon) + 180.0) / 6.0)) % 60 + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def crs_units_are_metres(crs):
    crs = CRS.from_user_input(crs)
    return crs.is_projected and all(a.unit_name in ("metre", "meter") for a in crs.axis_info[:2])


class LocalFrame:
    """East-North-Up tangent plane at an origin (lat0, lon0, h0); all arrays float64 (N, 3)."""

    def __init__(self, lat0, lon0, h0=0.0):
        self.lat0, self.lon0, self.h0 = float(lat0), float(lon0), float(h0)
        self._to_ecef = Transformer.from_crs(GEODETIC_3D, ECEF, always_xy=True)
        self._from_ecef = Transformer.from_crs(ECEF, GEODETIC_3D, always_xy=True)
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
    def centred_on(cls, lat, lon, h):
        """A frame at the mean of the given positions (NaNs ignored)."""
        return cls(np.nanmean(lat), np.nanmean(lon), np.nanmean(h))

    def to_dict(self):
        return {"lat0": self.lat0, "lon0": self.lon0, "h0": self.h0}

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
        """ENU points -> (x, y, z) in `crs`; z is the height with the meaning of the input heights."""
        lat, lon, h = self.to_geodetic(enu)
        xy = Transformer.from_crs("EPSG:4326", CRS.from_user_input(crs), always_xy=True)
        x, y = xy.transform(lon, lat)
        return np.column_stack([np.ravel(x), np.ravel(y), np.ravel(h)]).astype(np.float64)

    def from_crs(self, xyz, crs):
        """(x, y, z) in `crs` (z as in to_crs) -> ENU."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        t = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)
        lon, lat = t.transform(xyz[:, 0], xyz[:, 1])
        return self.to_enu(lat, lon, xyz[:, 2])
