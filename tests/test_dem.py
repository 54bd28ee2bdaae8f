"""REFERENCE_DEM: the sparse ground tied to a raster by a robust vertical offset and depth scale."""
import numpy as np
import pytest
from osgeo import gdal, osr

from alignkit.core.dem import DemError, tie_to_dem
from alignkit.core.geo import LocalFrame
from alignkit.core.reconstruction import Reconstruction

FRAME = LocalFrame(46.5, 6.6, 400.0)
CRS = "EPSG:32632"


def surface(x, y, x0, y0):
    return 380.0 + 0.1 * (x - x0) + 12.0 * np.sin((y - y0) / 40.0) * np.cos((x - x0) / 55.0)


def write_dem(path, x0, y0, size=300.0, cell=1.0, srs=True, nodata_hole=False):
    n = int(size / cell)
    xs = x0 - size / 2 + cell * (np.arange(n) + 0.5)
    ys = y0 + size / 2 - cell * (np.arange(n) + 0.5)
    z = surface(xs[None, :], ys[:, None], x0, y0).astype(np.float32)
    if nodata_hole:
        z[: n // 2] = -9999
    ds = gdal.GetDriverByName("GTiff").Create(str(path), n, n, 1, gdal.GDT_Float32)
    ds.SetGeoTransform((x0 - size / 2, cell, 0, y0 + size / 2, 0, -cell))
    if srs:
        s = osr.SpatialReference()
        s.SetFromUserInput(CRS)
        ds.SetProjection(s.ExportToWkt())
    ds.GetRasterBand(1).SetNoDataValue(-9999)
    ds.GetRasterBand(1).WriteArray(z)
    ds = None
    return path


def recon_on(frame, scale, offset, seed=0, n=3000, outliers=0.1):
    """Sparse points on the surface, then moved as a wrong focal (depth scale) and GPS datum would."""
    rng = np.random.default_rng(seed)
    x0, y0 = FRAME.to_crs(np.zeros((1, 3)), CRS)[0, :2]
    xy = np.column_stack([x0, y0]) + rng.uniform(-110, 110, (n, 2))
    true = frame.from_crs(np.column_stack([xy, surface(xy[:, 0], xy[:, 1], x0, y0)]), CRS)
    C = np.column_stack([rng.uniform(-80, 80, (12, 2)), np.full(12, 90.0)])
    z_c = C[:, 2].mean()
    pts = true.copy()
    pts[:, 2] = z_c + scale * (true[:, 2] - z_c) + offset + rng.normal(0, 0.03, n)
    trees = rng.uniform(0, 1, n) < outliers
    pts[trees, 2] += rng.uniform(2, 15, trees.sum())
    k = len(C)
    rec = Reconstruction(
        registered=np.ones(k, bool), component=np.zeros(k, int), R=np.tile(np.eye(3), (k, 1, 1)), C=C,
        focal=np.full(k, 1000.0), k1=np.zeros(k), k2=np.zeros(k), points=pts, point_track=np.arange(n),
        point_rgb=np.zeros((n, 3), np.uint8), point_error_px=np.zeros(n), point_component=np.zeros(n, int),
        n_obs=np.zeros(k, int), reproj_rmse_px=np.zeros(k), gps_residual=np.zeros((k, 3)), gps_sigma_h_m=1.0,
        gps_sigma_v_m=1.0, mean_reproj_px=0.3, obs_point=np.zeros(0, int), obs_image=np.zeros(0, int),
        obs_xy=np.zeros((0, 2)), georeferenced=True)
    return rec, true, trees, (x0, y0)


def test_offset_and_depth_scale_recovered_with_trees_ignored(tmp_path):
    rec, true, trees, (x0, y0) = recon_on(FRAME, scale=0.97, offset=-2.1)
    dem = write_dem(tmp_path / "dem.tif", x0, y0)
    before = np.median(np.abs(rec.points[~trees, 2] - true[~trees, 2]))
    out, fit = tie_to_dem(rec, FRAME, dem)
    after = np.abs(out.points[~trees, 2] - true[~trees, 2])
    print(f"median |dz| {before:.2f} m -> {np.median(after):.3f} m; fit {fit}")
    assert before > 1.0
    assert np.median(after) < 0.03 and np.percentile(after, 90) < 0.1
    assert fit["scale"] == pytest.approx(1 / 0.97, abs=0.005) and fit["spread_m"] < 0.06
    assert fit["inliers"] < 0.93 * fit["points_on_dem"]  # the trees were left out
    assert out.C[0, 2] != rec.C[0, 2] and rec.points is not out.points
    kept, fit2 = tie_to_dem(rec, FRAME, dem, apply=False)
    assert kept is rec and not fit2["applied"] and fit2["offset_m"] == pytest.approx(fit["offset_m"])


def test_bad_dems_are_clear_errors(tmp_path):
    rec, _, _, (x0, y0) = recon_on(FRAME, 1.0, 0.0, n=200)
    with pytest.raises(DemError, match="has no CRS"):
        tie_to_dem(rec, FRAME, write_dem(tmp_path / "nocrs.tif", x0, y0, srs=False))
    with pytest.raises(DemError, match="sparse points fall on the raster"):
        tie_to_dem(rec, FRAME, write_dem(tmp_path / "far.tif", x0 + 5000, y0))
    (tmp_path / "junk.tif").write_text("not a raster")
    with pytest.raises(DemError, match="junk.tif: not a readable raster"):
        tie_to_dem(rec, FRAME, tmp_path / "junk.tif")
    out, fit = tie_to_dem(rec, FRAME, write_dem(tmp_path / "hole.tif", x0, y0, nodata_hole=True))
    assert fit["points_on_dem"] < 150  # nodata cells are not ground
