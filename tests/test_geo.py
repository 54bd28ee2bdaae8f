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


def test_egm96_heights_match_proj_and_the_nga_reference():
    """Ellipsoidal <-> EGM96 at NGA's published EGM96 test point (38.6281550 N, 269.7791550 E:
    N = -31.628 m from the full model; PROJ's 15' grid interpolates it to a few cm): our conversion
    equals PROJ's own vgridshift to 1 cm, and the published value to 5 cm."""
    from alignkit.core.geo import from_ellipsoidal, geoid_undulation, to_ellipsoidal

    lat, lon, h_ortho = 38.6281550, 269.7791550 - 360.0, 150.0
    pipeline = Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad +step +proj=vgridshift "
        "+grids=egm96_15.gtx +multiplier=1 +step +proj=unitconvert +xy_in=rad +xy_out=deg")
    _, _, h_proj = pipeline.transform(lon, lat, h_ortho)  # orthometric + N = ellipsoidal
    h_ell = float(to_ellipsoidal(lat, lon, h_ortho, "egm96"))
    assert abs(h_ell - h_proj) < 0.01
    assert abs(float(geoid_undulation(lat, lon)[0]) - (-31.628)) < 0.05
    assert abs(float(from_ellipsoidal(lat, lon, h_ell, "egm96")) - h_ortho) < 1e-6
    assert to_ellipsoidal(lat, lon, 10.0, "offset", 5.5) == 15.5
    with pytest.raises(ValueError, match="unknown altitude reference"):
        to_ellipsoidal(lat, lon, 10.0, "msl")


def test_frame_writes_heights_in_the_target_crs_vertical_reference():
    """A frame on ellipsoidal heights: a compound UTM + EGM96 CRS gets EGM96 heights, EPSG:4979
    ellipsoidal ones, plain UTM the input reference's; all round-trip."""
    from alignkit.core.geo import geoid_undulation, has_vertical_axis

    f = LocalFrame(44.9, -93.1, 250.0, plain_heights="egm96")
    enu = np.array([[10.0, -20.0, 30.0], [-50.0, 40.0, 2.0]])
    lat, lon, h_ell = f.to_geodetic(enu)
    n = geoid_undulation(lat, lon)
    compound = f.to_crs(enu, "EPSG:32615+5773")
    plain = f.to_crs(enu, "EPSG:32615")
    ell = f.to_crs(enu, "EPSG:4979")
    assert np.allclose(compound[:, 2], h_ell - n, atol=0.01) and np.allclose(plain[:, 2], h_ell - n, atol=0.01)
    assert np.allclose(ell[:, 2], h_ell, atol=1e-6)
    assert np.allclose(compound[:, :2], plain[:, :2], atol=1e-6)
    for crs, xyz in (("EPSG:32615+5773", compound), ("EPSG:32615", plain), ("EPSG:4979", ell)):
        assert np.allclose(f.from_crs(xyz, crs), enu, atol=1e-4)
    assert has_vertical_axis("EPSG:32615+5773") and has_vertical_axis("EPSG:4979")
    assert not has_vertical_axis("EPSG:32615")
    legacy = LocalFrame(44.9, -93.1, 250.0)  # no plain_heights: heights pass through as the input had them
    assert np.allclose(legacy.to_crs(enu, "EPSG:32615")[:, 2], legacy.to_geodetic(enu)[2])
