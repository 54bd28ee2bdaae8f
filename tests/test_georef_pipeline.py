"""Issue 11 end to end: a generated survey whose GPS altitude drifts by +100 m over the flight, with
3 m horizontal GPS noise and recorded gimbal attitude (1 deg noise), through the whole job; heights
written in a compound CRS (UTM + EGM96) and in ellipsoidal heights."""
import numpy as np
import pytest

from alignkit.core import pipeline
from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.config import AlignConfig
from alignkit.core.geo import LocalFrame, geoid_undulation
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth, terrain_height
from alignkit.tests.test_pipeline import layer_rows
from alignkit.tools.evaluate import rotation_angle_deg

pytestmark = pytest.mark.slow

DRIFT = SurveySpec(rows=4, cols=5, width=960, height=720, gps_noise_h_m=3.0, gps_noise_v_m=1.0,
                   gps_drift_v_m=100.0, attitude_noise_deg=1.0, seed=11)
FAST = dict(max_features=4000, workers=2)


def test_drifting_gps_altitude_end_to_end(tmp_path):
    survey = generate_survey(tmp_path / "survey", DRIFT)
    gt = load_ground_truth(survey)
    out = tmp_path / "r.gpkg"
    compound = "EPSG:32632+5773"
    summary = pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out), target_crs=compound, **FAST))
    assert summary["registered"] == DRIFT.n_images
    # Heights: the synthetic GPS altitudes are h0 + up, read as EGM96 (the stated default assumption);
    # the ground truth's frame passes heights through, so it is compared in EGM96 heights.
    truth_frame = LocalFrame(**gt["origin"])
    cams, _, crs = layer_rows(out, "cameras")
    by_name = {a["image"]: (a, g[0]) for a, g in cams}
    xyz = np.array([by_name[c["image"]][1] for c in gt["cameras"]])
    enu = truth_frame.from_crs(xyz, "EPSG:32632")  # UTM easting / northing are those of the compound CRS
    attitude = [rotation_angle_deg(rotation_from_gimbal(*(by_name[c["image"]][0][k] for k in ("yaw", "pitch", "roll"))),
                                   np.array(c["R"])) for c in gt["cameras"]]
    points = np.array([g[0] for _, g in layer_rows(out, "sparse_points")[0]])
    penu = truth_frame.from_crs(points, "EPSG:32632")
    dz = penu[:, 2] - terrain_height(gt, penu[:, 0], penu[:, 1])
    plane = np.linalg.lstsq(np.column_stack([penu[:, :2], np.ones(len(penu))]), dz, rcond=None)[0]
    tilt = float(np.degrees(np.arctan(np.hypot(*plane[:2]))))
    cam_dz = enu[:, 2] - gt["C"][:, 2]
    drift = summary["gps_drift"][0]
    print(f"attitude error max {max(attitude):.2f} deg, ground tilt {tilt:.2f} deg, drift "
          f"{drift['vertical_drift_m']:.1f} m, camera heights {np.median(cam_dz):+.2f} m (rms about it "
          f"{np.std(cam_dz):.3f} m), ground {np.median(dz):+.2f} m, warnings {summary['warnings']}")
    assert max(attitude) < 3.0
    assert tilt < 0.5
    assert abs(drift["vertical_drift_m"] - 100.0) < 10.0 and drift["modelled"]
    assert any("drifts by 100 m" in w for w in summary["warnings"])
    # Relative heights: exact up to the block's tilt (9-10 mm RMS about a plane). The tilt itself
    # (bounded above) is what 20 attitude records with 1 deg noise can
    # tell, ~0.2 deg: 0.16-0.21 deg here, ~0.1-0.15 m RMS over this 110 x 68 m block.
    design = np.column_stack([gt["C"][:, :2], np.ones(len(cam_dz))])
    tilt_plane = design @ np.linalg.lstsq(design, cam_dz, rcond=None)[0]
    assert np.std(cam_dz - tilt_plane) < 0.001 * DRIFT.altitude_m
    assert np.std(cam_dz) < 0.003 * DRIFT.altitude_m
    assert summary["off_nadir_median_deg"] < 3.0 and summary["ground_slope_deg"] < 5.0
    assert summary["vertical_source"] == "attitude records"
    assert "EGM96" in summary["vertical_reference"]["output"] or "5773" in summary["vertical_reference"]["output"]
    # footprints' ground_z: the same reference as the points beneath
    feet = {a["image"]: a["ground_z"] for a, _ in layer_rows(out, "footprints")[0]}
    assert abs(np.median(list(feet.values())) - np.median(points[:, 2])) < 1.0

    # The same result as ellipsoidal heights (EPSG:4979): every height up by the geoid undulation.
    out2 = tmp_path / "e.gpkg"
    pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out2), target_crs="EPSG:4979",
                             workspace=str(tmp_path / "r_workspace"), **FAST))
    cams2 = {a["image"]: g[0] for a, g in layer_rows(out2, "cameras")[0]}
    lonlatz = np.array([cams2[c["image"]] for c in gt["cameras"]])
    n = geoid_undulation(lonlatz[:, 1], lonlatz[:, 0])
    assert np.allclose(lonlatz[:, 2] - xyz[:, 2], n, atol=0.01)
    assert 45.0 < n.mean() < 55.0  # EGM96 near Lausanne: ~49.5 m
