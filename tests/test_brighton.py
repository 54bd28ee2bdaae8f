"""Issue 4's real-photo acceptance: brighton_beach (18 DJI photos) against the independent
OpenDroneMap cloud model.laz (EPSG:32615). COLMAP 4.2 registers 18/18 here at 0.83 px but its
points, fitted to the GPS, sit 10.2 m below model.laz: the focal/height trade-off of nadir flights."""
import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import pipeline
from alignkit.core.config import AlignConfig
from alignkit.tests.test_brighton_cloud import assert_clean_cloud
from alignkit.tools.evaluate import load_las_xyz, reference_dz

pytestmark = pytest.mark.slow


# OpenSfM's focal for these photos: 35-mm equivalent 20 mm over a 36 mm width, x 4000 px. OpenDroneMap,
# which made model.laz, uses it; the physical 3.61 mm / 6.17 mm sensor width gives 2340 px.
OPENSFM_FOCAL_PX = 20.0 / 36.0 * 4000


def _align_and_compare(tmp_path_factory, shared, **options):
    images = shared("brighton_beach", "images")
    out = tmp_path_factory.mktemp("brighton") / "brighton.gpkg"
    summary = pipeline.run(AlignConfig(images=str(images), output=str(out), **options))
    ds = ogr.Open(str(out))
    points = np.array([f.GetGeometryRef().GetPoint() for f in ds.GetLayerByName("sparse_points")])
    ds = None
    reference, crs = load_las_xyz(shared("brighton_beach", "model.laz"))
    assert crs.endswith("32615")
    return summary, reference_dz(points, reference), points


@pytest.fixture(scope="module")
def brighton(tmp_path_factory, shared):
    return _align_and_compare(tmp_path_factory, shared)


def test_all_photos_register_in_one_accurate_component(brighton):
    summary, dz, _ = brighton
    assert summary["images"] == 18 and summary["registered"] == 18 and summary["components"] == 1
    assert summary["crs"] == "EPSG:32615"
    assert summary["mean_reproj_px"] <= 1.0
    assert summary["points"] >= 5000
    # Issue 14: tracks as complete as COLMAP's (4.1 here). Matching alone gives 2.95: SIFT misses the
    # point in half the photos that see it; track completion finds it there (measured 4.08).
    assert summary["mean_track_length"] >= 4.0
    assert summary["gps_fit_rmse_m"] <= 0.6  # COLMAP: 0.44 m
    assert dz["compared"] > 0.5 * summary["points"]  # the points lie over the reference cloud
    # 10x better than COLMAP's 10.2 m, and a bound that catches a focal/height drift of 1%+ ...
    assert dz["median_abs_dz_m"] <= 3.0, dz


def test_the_cloud_has_no_stray_or_duplicate_point(brighton, shared):
    """The accurate preset (the defaults); the others are in test_brighton_cloud.py."""
    summary, _, points = brighton
    assert_clean_cloud(summary, points, shared)


def test_summary_says_the_focal_is_held_and_what_it_costs_in_height(brighton):
    """On this nadir block self-calibration runs off (+18 %, as COLMAP's): the summary says the focal
    is held at EXIF and how far 1 % of focal error moves the ground, for the ~36-40 m flying height
    (GPS altitude 198.5 m; model.laz's ground 162.3 m median; RelativeAltitude 40 m above take-off)."""
    summary, _, _ = brighton
    [model] = summary["camera_models"]
    assert model["images"] == 18 and model["focal_held"] and model["focal_source"] == "focal_and_sensor_width"
    assert model["focal_px"] == pytest.approx(model["focal_prior_px"]) == pytest.approx(2340.36, abs=0.01)
    assert abs(model["focal_self_calibrated_px"] / model["focal_prior_px"] - 1) > 0.15
    assert 35.0 < summary["height_above_ground_m"] < 41.0
    [warning] = [w for w in summary["warnings"] if "focal" in w]
    assert "held at the EXIF focal, 2340 px." in warning and "focal_and_sensor_width" not in warning
    assert f"each 1% of focal error moves the ground {summary['height_above_ground_m'] / 100:.2f} m" in warning


def test_gsd_and_coverage_agree_with_the_camera_and_the_flying_height(brighton):
    """The DJI FC300S: 3.61 mm lens, 6.17 mm / 4000 px sensor (1.54 um pixels); flying 35-41 m above the
    ground (GPS altitude 198.5 m over model.laz's 162.3 m; RelativeAltitude 40 m): 1.50-1.75 cm/px.
    Each 4000 x 2250 px photo then covers 2030-2760 m2; 18 of them on an 84 x 84 m block."""
    summary, _, _ = brighton
    pitch_over_focal = 6.17 / 4000 / 3.61
    assert 100 * 35.0 * pitch_over_focal < summary["gsd_cm_median"] < 100 * 41.0 * pitch_over_focal
    assert 84.0 * 84.0 < summary["area_covered_m2"] < 18 * 2760.0
    # the rim outside the flight lines is thin; under them each point is seen by 5 or more photos
    assert summary["overlap_median"] < summary["overlap_median_flight_area"]
    assert summary["overlap_median_flight_area"] >= 5
    assert {v["item"]: v["ok"] for v in summary["verdict"]}["Overlap"]


@pytest.mark.xfail(strict=True, reason=(
    "measured 2.1 m below model.laz with the physical focal prior (3.61 mm / 6.17 mm x 4000 = "
    "2340 px). With OpenSfM's 36-mm-width focal (2222 px, which OpenDroneMap, the maker of "
    "model.laz, uses) the depth agrees to 0.27 m: see the test below and docs/NOTES.md."))
def test_ground_within_half_a_metre_of_the_reference(brighton):
    _, dz, _ = brighton
    assert dz["median_abs_dz_m"] <= 0.5, dz


def test_given_opendronemaps_focal_the_ground_agrees_with_model_laz(tmp_path_factory, shared):
    """The same photos with the focal OpenDroneMap used for model.laz (a user-given focal_px): our ground
    then lies within 0.5 m of ODM's (measured 0.27 m), so the 2.1 m of the default run is the focal
    convention, not the geometry, and a given focal is honoured end to end."""
    summary, dz, _ = _align_and_compare(tmp_path_factory, shared, focal_px=OPENSFM_FOCAL_PX)
    assert summary["registered"] == 18 and summary["components"] == 1
    [model] = summary["camera_models"]
    assert model["focal_source"] == "user" and model["focal_prior_px"] == pytest.approx(OPENSFM_FOCAL_PX)
    assert model["focal_px"] == pytest.approx(OPENSFM_FOCAL_PX, rel=0.01)
    assert summary["config"]["focal_px"] == pytest.approx(OPENSFM_FOCAL_PX)
    assert dz["compared"] > 0.5 * summary["points"] and dz["median_abs_dz_m"] <= 0.5, dz


GPS_TAGS = ("gps_latitude", "gps_latitude_ref", "gps_longitude", "gps_longitude_ref", "gps_altitude",
            "gps_altitude_ref", "gps_version_id")


def test_without_gps_the_real_photos_align_in_one_local_component(tmp_path, shared):
    """The same 18 photos with their EXIF GPS removed (everything else kept): all pairs are tried,
    every photo registers in one component, in a local frame without a CRS, and the run says so.
    Measured: 18/18, 8,026 points, 0.63 px, 153 candidate pairs, 88 verified."""
    import exif

    images = tmp_path / "nogps"
    images.mkdir()
    for path in sorted(shared("brighton_beach", "images").glob("*.JPG")):
        photo = exif.Image(path.read_bytes())
        for tag in GPS_TAGS:
            if photo.get(tag) is not None:
                photo.delete(tag)
        (images / path.name).write_bytes(photo.get_file())
    summary = pipeline.run(AlignConfig(images=str(images), output=str(tmp_path / "local.gpkg")))
    assert summary["registered"] == 18 and summary["components"] == 1
    assert summary["crs"] is None and summary["georeferenced"] is False
    assert any("NOT georeferenced" in w for w in summary["warnings"])
    assert summary["mean_reproj_px"] <= 1.0 and summary["points"] >= 5000
    assert summary["pairs_candidate"] == 18 * 17 // 2  # exhaustive below 30 photos
