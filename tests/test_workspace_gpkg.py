import os

import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import workspace
from alignkit.core.gpkg import Layer, write_geopackage


def test_atomic_writes_round_trip(tmp_path):
    workspace.write_json(tmp_path / "a" / "x.json", {"v": np.float64(1.5), "arr": np.arange(3)})
    assert workspace.read_json(tmp_path / "a" / "x.json") == {"v": 1.5, "arr": [0, 1, 2]}
    workspace.write_npz(tmp_path / "b.npz", xy=np.eye(2))
    assert np.array_equal(workspace.read_npz(tmp_path / "b.npz")["xy"], np.eye(2))
    assert [p for p in os.listdir(tmp_path / "a") if p.startswith(".tmp")] == []


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.gpkg"

    def explode(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        workspace.atomic_output(target, explode)
    assert os.listdir(tmp_path) == []


def test_geopackage_layers_fields_and_crs(tmp_path):
    path = tmp_path / "r.gpkg"
    cams = Layer("cameras", "PointZ", [("image", "str"), ("registered", "bool"), ("focal_px", "real")],
                 [((500000.0, 4970000.0, 300.0), {"image": "é 1.jpg", "registered": True, "focal_px": 2340.5}),
                  (None, {"image": "bad.jpg", "registered": False, "focal_px": None})])
    fp = Layer("footprints", "Polygon", [("image", "str")],
               [([[(0, 0), (10, 0), (10, 5), (0, 5)]], {"image": "é 1.jpg"})])
    write_geopackage(path, "EPSG:32615", [cams, fp])
    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName("cameras")
    assert lyr.GetSpatialRef().GetAuthorityCode(None) == "32615"
    feats = list(lyr)
    assert feats[0]["image"] == "é 1.jpg" and feats[0]["registered"] == 1
    assert feats[0].GetGeometryRef().GetZ() == 300.0
    assert feats[1].GetGeometryRef() is None and feats[1].IsFieldNull("focal_px")
    footprint = ds.GetLayerByName("footprints").GetNextFeature()  # keep the feature alive (OGR)
    assert footprint.GetGeometryRef().GetArea() == pytest.approx(50.0)


def test_layers_without_crs_are_cartesian_not_geographic(tmp_path):
    path = tmp_path / "local.gpkg"
    write_geopackage(path, None, [Layer("cameras", "PointZ", [("image", "str")], [((1.0, 2.0, 3.0), {"image": "a"})])])
    ds = ogr.Open(str(path))
    srs = ds.GetLayerByName("cameras").GetSpatialRef()
    assert srs is None or (srs.IsLocal() and not srs.IsGeographic())
