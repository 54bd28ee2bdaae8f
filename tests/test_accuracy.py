"""Camera shape precision on a generated block with exact truth (issue 16; `make bench-accuracy`).

The issue asks for <= 0.015 % of the flying height at 240 photos; a 240-photo block takes minutes,
so this test flies the same kind of block small: three flight lines of opposite headings (so a
keypoint-convention or principal-point bias shows up as lines shifted against each other), 1 m /
2 m GPS noise like a consumer drone, at the generator's default 1200x900 (the 240-photo block's
size, so the same ground sample distance), with the default settings a user gets. The centres are
read from the GeoPackage (the delivered product), mapped back to the truth's frame and compared
after a similarity: only the block's shape counts, not where the noisy GPS placed it.
"""
import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import pipeline
from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.config import AlignConfig
from alignkit.core.geo import LocalFrame
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth
from alignkit.tools.evaluate import camera_shape_error

pytestmark = pytest.mark.slow

BLOCK = dict(rows=3, cols=6, width=1200, height=900, gps_noise_h_m=1.0, gps_noise_v_m=2.0)
# Measured 2026-11-30 on this block with the default settings: seed 5 0.0144 % (8.65 mm RMS), seed 6
# 0.0104 % (6.25 mm); seed 5 is the one tested, so 0.02 % is a 1.4x margin (before the distortion gate,
# the focal refined after track completion and the last adjustment's 4000 points per image: 0.0303 %).
# Leaving OpenCV's +0.25 px keypoint offset uncorrected costs ~20 mm at 2000x1500 (7.8 -> 28.5 mm),
# more at this ground sample distance: that regression fails here.
SHAPE_LIMIT_PERCENT = 0.02
ROTATION_LIMIT_DEG = 0.03  # measured: 0.0099 deg (seed 5), 0.0091 deg (seed 6), largest camera


def _cameras(gpkg, frame):
    ds = ogr.Open(str(gpkg))
    lyr = ds.GetLayerByName("cameras")
    crs = lyr.GetSpatialRef().GetAuthorityCode(None)
    rows = [(f.items(), f.GetGeometryRef().GetPoint()) for f in lyr if f.GetField("registered")]
    names = [a["image"] for a, _ in rows]
    C = frame.from_crs(np.array([g for _, g in rows]), f"EPSG:{crs}")
    R = np.array([rotation_from_gimbal(a["yaw"], a["pitch"], a["roll"]) for a, _ in rows])
    return names, C, R


def test_camera_shape_after_a_similarity_is_within_the_measured_bound(tmp_path):
    survey = generate_survey(tmp_path / "survey", SurveySpec(**BLOCK, seed=5))
    out = tmp_path / "result.gpkg"
    summary = pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out), workers=2))
    truth = load_ground_truth(survey)
    assert summary["registered"] == summary["images"] == len(truth["cameras"])
    names, C, R = _cameras(out, LocalFrame(**truth["origin"]))
    error = camera_shape_error(names, C, R, truth)
    assert error["cameras"] == len(truth["cameras"])
    assert error["shape_percent_of_height"] <= SHAPE_LIMIT_PERCENT, error
    assert error["rotation_max_deg"] < ROTATION_LIMIT_DEG, error
    # The generated lens has no distortion: the photos cannot show one, so the gate holds it at zero.
    model, = summary["camera_models"]
    assert model["distortion_held"] and model["k1"] == model["k2"] == 0.0, model


def test_a_240_photo_block_is_within_the_issue_bound(tmp_path):
    """The issue's own block: 12 lines of 20 photos, 1200x900, 1 m / 2 m GPS noise (`make_survey
    --rows 12 --cols 20 --gps-noise-h 1 --gps-noise-v 2`), default settings: camera shape within
    0.015 % of the flying height after a similarity. Measured 2026-12-01: 4.62 mm = 0.0077 %,
    rotations 0.0033 deg mean, 0.0096 deg largest (COLMAP's global mapper: 7.6 mm = 0.013 %)."""
    survey = generate_survey(tmp_path / "survey", SurveySpec(rows=12, cols=20, gps_noise_h_m=1.0, gps_noise_v_m=2.0))
    out = tmp_path / "result.gpkg"
    summary = pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out), workers=2))
    truth = load_ground_truth(survey)
    assert summary["registered"] == summary["images"] == 240 and summary["components"] == 1
    names, C, R = _cameras(out, LocalFrame(**truth["origin"]))
    error = camera_shape_error(names, C, R, truth)
    assert error["cameras"] == 240
    assert error["shape_percent_of_height"] <= 0.015, error
    assert error["rotation_max_deg"] < ROTATION_LIMIT_DEG, error
