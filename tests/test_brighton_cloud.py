"""Issue 14 on real photos: brighton_beach's sparse cloud with the dock's default preset (balanced, where a
2-view point once sat at z = -356 m, 500 m below the beach, and 6.5 % of the points were duplicates),
checked against the independent OpenDroneMap cloud model.laz."""
import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import pipeline
from alignkit.core.config import DEFAULT_PRESET, PRESETS, AlignConfig
from alignkit.tools.evaluate import load_las_xyz

pytestmark = pytest.mark.slow


def assert_clean_cloud(summary, xyz, shared, min_points=4000):
    """No duplicate point, and every point within half the flying height of the reference ground's
    band and over the block: a point 500 m below the beach (or one stretching the layer's extent to
    345 m) is gone."""
    assert summary["registered"] == 18 and len(xyz) == summary["points"] > min_points
    assert len(np.unique(xyz, axis=0)) == len(xyz)
    reference, crs = load_las_xyz(shared("brighton_beach", "model.laz"))
    assert crs == summary["crs"]
    height = summary["height_above_ground_m"]
    low, high = np.percentile(reference[:, 2], [1, 99])
    assert low - 0.5 * height < xyz[:, 2].min() and xyz[:, 2].max() < high + 0.5 * height
    assert (xyz[:, :2].min(axis=0) > reference[:, :2].min(axis=0) - height).all()
    assert (xyz[:, :2].max(axis=0) < reference[:, :2].max(axis=0) + height).all()


@pytest.mark.parametrize("preset, min_points", [("fast", 3000), (DEFAULT_PRESET, 4000)])
def test_brighton_cloud_has_no_duplicates_and_no_point_outside_the_block(tmp_path, shared, preset, min_points):
    """Each preset (accurate, the defaults: test_brighton.py)."""
    images = shared("brighton_beach", "images")
    out = tmp_path / "brighton.gpkg"
    summary = pipeline.run(AlignConfig(images=str(images), output=str(out), workers=2, **PRESETS[preset]))
    ds = ogr.Open(str(out))
    xyz = np.array([f.GetGeometryRef().GetPoint() for f in ds.GetLayerByName("sparse_points")])
    ds = None
    assert_clean_cloud(summary, xyz, shared, min_points)
    assert summary["stray_points_removed"] >= 0 and summary["verdict_summary"]
