import numpy as np
import pytest
from pyproj import Transformer

from alignkit.core.geo import LocalFrame, utm_crs_for


@pytest.mark.parametrize(
    "lon, lat, expected",
    [(-93.1, 44.9, "EPSG:32615"), (6.6, 46.5, "EPSG:32632"), (13.4, 52.5, "EPSG:32633"),
     (151.2, -33.9, "EPSG:32756"), (179.99, 10.0, "EPSG:32660"), (-180.0, 10.0, "EPSG:32601")],
)
def test_utm_zone(lon, lat, expected):
    assert utm_crs_for(lon, lat) == expected


def test_enu_axes_and_distances():
    f = LocalFrame(46.5, 6.6, 400.0)
    # 1/1000 degree north is ~111.2 m north; up is up
    enu = f.to_enu([46.501, 46.5, 46.5], [6.6, 6.6, 6.6], [400.0, 400.0, 450.0])
    assert enu[0, 1] == pytest.approx(111.2, abs=0.2) and abs(enu[0, 0]) < 1e-6
    assert enu[2] == pytest.approx([0, 0, 50.0], abs=1e-6)
    east = f.to_enu([46.5], [6.601], [400.0])[0]
    assert east[0] == pytest.approx(111.32 * np.cos(np.radians(46.5)) * 1000 / 1000, rel=2e-3)


def test_round_trip_and_crs_export_agree_with_pyproj():
    f = LocalFrame(44.9, -93.1, 250.0)
    rng = np.random.default_rng(0)
    enu = rng.uniform(-500, 500, size=(50, 3))
    lat, lon, h = f.to_geodetic(enu)
    assert np.allclose(f.to_enu(lat, lon, h), enu, atol=1e-6)
    xyz = f.to_crs(enu, "EPSG:32615")
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32615", always_xy=True).transform(lon, lat)
    assert np.allclose(xyz[:, 0], x) and np.allclose(xyz[:, 1], y) and np.allclose(xyz[:, 2], h)
    assert np.allclose(f.from_crs(xyz, "EPSG:32615"), enu, atol=1e-5)
