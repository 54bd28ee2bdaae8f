"""Issue 10 acceptance: brighton_beach with a reference DEM (model.laz rasterised here, 1 m cells):
the sparse ground, 2.1 m below model.laz from GPS and the EXIF focal alone, lands on it."""
import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from alignkit.core import pipeline
from alignkit.core.config import PRESETS, AlignConfig
from alignkit.tools.evaluate import load_las_xyz, reference_dz

pytestmark = pytest.mark.slow


def rasterise(xyz, crs, path, cell=1.0):
    """Median height per cell: a DEM (DSM) GeoTIFF like a national LiDAR product."""
    x0, y1 = np.floor(xyz[:, 0].min()), np.ceil(xyz[:, 1].max())
    w = int(np.ceil((xyz[:, 0].max() - x0) / cell))
    h = int(np.ceil((y1 - xyz[:, 1].min()) / cell))
    col = np.minimum(((xyz[:, 0] - x0) / cell).astype(int), w - 1)
    row = np.minimum(((y1 - xyz[:, 1]) / cell).astype(int), h - 1)
    key = row * w + col
    order = np.lexsort((xyz[:, 2], key))
    key_sorted, z_sorted = key[order], xyz[order, 2]
    starts = np.flatnonzero(np.r_[True, np.diff(key_sorted) > 0])
    ends = np.r_[starts[1:], len(key_sorted)]
    grid = np.full(h * w, -9999.0, np.float32)
    grid[key_sorted[starts]] = z_sorted[(starts + ends) // 2]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 1, gdal.GDT_Float32)
    ds.SetGeoTransform((x0, cell, 0.0, y1, 0.0, -cell))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).SetNoDataValue(-9999.0)
    ds.GetRasterBand(1).WriteArray(grid.reshape(h, w))
    ds = None
    return path


def test_brighton_sparse_ground_tied_to_a_reference_dem(tmp_path, shared):
    reference, crs = load_las_xyz(shared("brighton_beach", "model.laz"))
    dem = rasterise(reference, crs, tmp_path / "model_dem.tif")
    summary = pipeline.run(AlignConfig(images=str(shared("brighton_beach", "images")), output=str(tmp_path / "b.gpkg"),
                                       reference_dem=str(dem), **PRESETS["fast"]))
    ds = ogr.Open(str(tmp_path / "b.gpkg"))
    points = np.array([f.GetGeometryRef().GetPoint() for f in ds.GetLayerByName("sparse_points")])
    ds = None
    dz = reference_dz(points, reference)
    fit = summary["reference_dem_fit"]
    print(f"\nDEM fit: offset {fit['offset_m']:+.2f} m, scale {fit['scale']:.4f}, spread {fit['spread_m']:.3f} m, "
          f"{fit['inliers']}/{fit['points_on_dem']} points; against model.laz: {dz}")
    assert summary["registered"] == 18
    assert abs(fit["median_dz_before_m"]) > 1.0  # GPS + EXIF focal alone: metres off (2.1 m at full size)
    assert dz["median_abs_dz_m"] <= 0.3
