"""Synthetic surveys: deterministic, readable like DJI photos, and geometrically exact.

The geometry checks compare SIFT measurements on the rendered JPEGs with the ground-truth poses,
never the generator's output with itself.
"""

import functools
import importlib.util
import math
import re

import cv2
import exif
import numpy as np
import pytest

from alignkit.core.camera import angles_from_rotation, rotation_from_gimbal
from alignkit.core.geo import LocalFrame
from alignkit.core.synthetic import (
    Scene,
    SurveySpec,
    generate_survey,
    load_ground_truth,
    project,
    terrain_height,
)
from alignkit.tools import make_survey
from alignkit.tools.evaluate import sampson_distance

SIFT_OFFSET_PX = 0.25  # OpenCV keypoints sit +0.25 px off the pixel-centre convention (DESIGN.md, Traps)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Two flight lines of two full-size images: same-heading and opposite-heading neighbours."""
    spec = SurveySpec(rows=2, cols=2, gps_noise_h_m=2.0, gps_noise_v_m=4.0, yaw_deg=30.0, seed=7)
    out = generate_survey(tmp_path_factory.mktemp("survey"), spec)
    return out, spec, load_ground_truth(out)


@functools.lru_cache(maxsize=8)
def _sift(path, n_features=0):
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    kps, desc = cv2.SIFT_create(nfeatures=n_features).detectAndCompute(grey, None)
    return np.array([k.pt for k in kps], np.float64) - SIFT_OFFSET_PX, desc


def _true_fundamental(gt, i, j):
    K1, K2 = gt["K"][i], gt["K"][j]
    R = gt["R"][j] @ gt["R"][i].T
    t = gt["R"][j] @ (gt["C"][i] - gt["C"][j])
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(K2).T @ tx @ R @ np.linalg.inv(K1)



def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    spec = SurveySpec(rows=1, cols=2, width=320, height=240, gps_noise_h_m=1.0)
    a = generate_survey(tmp_path / "a", spec)
    b = generate_survey(tmp_path / "b", spec)
    c = generate_survey(
        tmp_path / "c", SurveySpec(rows=1, cols=2, width=320, height=240, gps_noise_h_m=1.0, seed=2)
    )
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == ["img_0001.jpg", "img_0002.jpg"]
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        assert (a / "images" / name).read_bytes() != (c / "images" / name).read_bytes()
    assert (a / "ground_truth.json").read_bytes() == (b / "ground_truth.json").read_bytes()


def test_exif_and_xmp_carry_the_truth(survey):
    out, spec, gt = survey
    frame = LocalFrame(gt["origin"]["lat0"], gt["origin"]["lon0"], gt["origin"]["h0"])
    times = []
    for cam, gps_enu in zip(gt["cameras"], gt["gps"]):
        data = (out / "images" / cam["image"]).read_bytes()
        im = exif.Image(data)
        assert im.has_exif
        assert (im.make, im.model) == ("AlignKit", "SynthCam")
        assert (im.pixel_x_dimension, im.pixel_y_dimension) == (1200, 900)
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (900, 1200, 3)
        # FocalLength is exact; the 35 mm equivalent (diagonal definition) is the rounded integer.
        f_px = gt["K"][0][0, 0]
        assert im.focal_length / spec.sensor_width_mm * spec.width == pytest.approx(f_px, rel=1e-4)
        diag_px = math.hypot(spec.width, spec.height)
        assert im.focal_length_in_35mm_film / math.hypot(36, 24) * diag_px == pytest.approx(f_px, rel=0.005)
        times.append(im.datetime_original)

        def degrees(dms, ref):
            return (dms[0] + dms[1] / 60 + dms[2] / 3600) * (-1 if ref in ("S", "W") else 1)

        lat = degrees(im.gps_latitude, im.gps_latitude_ref)
        lon = degrees(im.gps_longitude, im.gps_longitude_ref)
        enu = frame.to_enu(lat, lon, im.gps_altitude)[0]
        assert np.abs(enu - gps_enu).max() < 0.01  # written GPS = the noisy gps_enu of the ground truth

        xmp = dict(re.findall(rb'drone-dji:(\w+)="([-+0-9.]+)"', data[data.find(b"<x:xmpmeta") :]))
        assert float(xmp[b"RelativeAltitude"]) == pytest.approx(gps_enu[2], abs=0.006)
        assert float(xmp[b"AbsoluteAltitude"]) - float(xmp[b"RelativeAltitude"]) == pytest.approx(
            400.0, abs=0.011
        )
        R_xmp = rotation_from_gimbal(
            float(xmp[b"GimbalYawDegree"]), float(xmp[b"GimbalPitchDegree"]), float(xmp[b"GimbalRollDegree"])
        )
        angle = np.degrees(np.arccos(np.clip((np.trace(R_xmp @ np.array(cam["R"]).T) - 1) / 2, -1, 1)))
        assert angle < 0.02  # two decimals of degrees
    seconds = [int(t[-2:]) + 60 * int(t[-5:-3]) for t in times]
    assert np.all(np.diff(seconds) == 1)
    # GPS noise is really there (std 2 m / 4 m requested) and the true positions are not in EXIF.
    err = gt["gps"] - gt["C"]
    assert 0.5 < np.abs(err[:, :2]).mean() < 5 and 1 < np.abs(err[:, 2]).mean() < 10


@pytest.mark.skipif(
    importlib.util.find_spec("alignkit.core.camera") is None, reason="core/camera.py not yet there"
)
def test_camera_priors_reader_recovers_K(survey):
    from alignkit.core.camera import read_prior

    out, spec, gt = survey
    prior = read_prior(out / "images" / gt["cameras"][0]["image"])
    assert prior.status == "ok", prior.problems
    assert prior.focal_px == pytest.approx(gt["K"][0][0, 0], rel=0.005)


def test_sift_finds_thousands_of_features(survey):
    out, _, gt = survey
    pts, _ = _sift(out / "images" / gt["cameras"][0]["image"])
    assert len(pts) >= 2000


@pytest.mark.parametrize("pair", [(0, 1), (1, 2), (0, 3), (0, 2)])  # (1,2), (0,3): opposite headings
def test_sift_matches_agree_with_true_relative_pose(survey, pair):
    out, _, gt = survey
    i, j = pair
    p1, d1 = _sift(out / "images" / gt["cameras"][i]["image"], 3000)  # the strongest: keeps the test quick
    p2, d2 = _sift(out / "images" / gt["cameras"][j]["image"], 3000)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [m for m, n in knn if m.distance < 0.8 * n.distance]
    x1 = p1[[m.queryIdx for m in good]]
    x2 = p2[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)
    _, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, 1.0, 0.999)
    inliers = mask.ravel().astype(bool)
    assert inliers.sum() >= 200
    dist = sampson_distance(_true_fundamental(gt, i, j), x1[inliers], x2[inliers])
    assert np.median(dist) < 0.2
    assert np.percentile(dist, 90) < 0.5


@pytest.mark.parametrize("relief_m", [12.0, 35.0])
def test_rendered_texture_lies_where_true_camera_projects_it(relief_m):
    """A Gaussian spot painted on the ground texture appears at K R (X - C), X on the analytic terrain."""
    spec = SurveySpec(rows=1, cols=2, width=400, height=300, relief_m=relief_m, k1=-0.08, k2=0.02, seed=3)
    scene = Scene(spec)
    tex = scene.texture
    cam = scene.cameras[0]
    K = cam["K"]
    # Ground points seen at a few pixels, found through the analytic terrain by bisection on depth.
    pixels = np.array([[60.0, 50.0], [200.0, 150.0], [333.0, 260.0], [380.0, 20.0]])
    yy, xx = np.mgrid[0:300, 0:400]
    for px in pixels:
        xn = np.linalg.solve(K, [px[0], px[1], 1.0])
        # undistort by fixed point so that the ray really goes through the distorted pixel
        x, y = xn[0], xn[1]
        for _ in range(100):
            r2 = x * x + y * y
            s = 1 + spec.k1 * r2 + spec.k2 * r2 * r2
            x, y = xn[0] / s, xn[1] / s
        d = cam["R"].T @ np.array([x, y, 1.0])
        lo, hi = 1.0, 200.0
        for _ in range(80):
            t = (lo + hi) / 2
            X = cam["C"] + t * d
            lo, hi = (t, hi) if X[2] > terrain_height(scene.terrain, X[0], X[1]) else (lo, t)
        X = cam["C"] + lo * d
        assert project(K, cam["R"], cam["C"], X[None], spec.k1, spec.k2)[0] == pytest.approx(px, abs=1e-6)
        col = (X[0] - tex.e0) / tex.cell
        row = (tex.n0 - X[1]) / tex.cell
        ty, tx = np.mgrid[0 : tex.data.shape[0], 0 : tex.data.shape[1]]
        spot = 150.0 * np.exp(
            -((tx - col) ** 2 + (ty - row) ** 2) / (2 * 2.5**2)
        )  # small: the projection is locally non-affine
        tex.data = np.repeat((60 + spot)[..., None], 3, axis=2).astype(np.float32)
        img = scene.render(0)[..., 1].astype(np.float64) - 60
        w = np.clip(img, 0, None)
        centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        assert centroid == pytest.approx(px, abs=0.04)
    # The per-pixel intersection lands on the analytic terrain.
    e, n, u = scene.ground_points(1)
    assert np.abs(terrain_height(scene.terrain, e.astype(float), n.astype(float)) - u).max() < 0.001


def test_lawnmower_flight_and_terrain(tmp_path):
    spec = SurveySpec(rows=3, cols=4, width=320, height=240, relief_m=10.0, yaw_deg=90.0, seed=5)
    gt = load_ground_truth(generate_survey(tmp_path, spec))
    headings = [c["heading_deg"] for c in gt["cameras"]]
    assert headings == [90.0] * 4 + [270.0] * 4 + [90.0] * 4
    # Heading east: camera x (image right) points south, optical axis near nadir (jitter ~1 deg).
    for c, h in zip(gt["R"], headings):
        sign = 1 if h == 90.0 else -1
        assert c[0] @ [0, -sign, 0] > math.cos(math.radians(6))
        assert c[2] @ [0, 0, -1] > math.cos(math.radians(6))
    # Forward overlap: along-line spacing = (1 - overlap) x footprint length on the take-off plane.
    footprint = spec.height / spec.focal_px * spec.altitude_m
    steps = np.linalg.norm(np.diff(gt["C"][:4, :2], axis=0), axis=1)
    assert steps == pytest.approx(footprint * (1 - spec.overlap), abs=1.5)
    across = abs(gt["C"][4, 1] - gt["C"][3, 1])
    assert across == pytest.approx(spec.width / spec.focal_px * spec.altitude_m * (1 - spec.sidelap), abs=1.5)
    assert gt["C"][:, 2] == pytest.approx(spec.altitude_m, abs=1.5)
    # Terrain: zero at take-off, real relief over the area, same surface from the spec and from the JSON.
    assert terrain_height(gt, 0.0, 0.0) == pytest.approx(0.0, abs=1e-9)
    e0, n0, e1, n1 = gt["extent_enu"]
    ge, gn = np.meshgrid(np.linspace(e0, e1, 200), np.linspace(n0, n1, 200))
    h = terrain_height(gt, ge, gn)
    assert h.max() - h.min() == pytest.approx(10.0, rel=0.05)
    assert np.array_equal(h, terrain_height(spec, ge, gn))


def test_gimbal_angles_round_trip_and_nadir_axes():
    R = rotation_from_gimbal(0.0, -90.0, 0.0)
    assert R == pytest.approx(
        np.array([[1, 0, 0], [0, -1, 0], [0, 0, -1]]), abs=1e-12
    )  # x east, y south, z down
    for angles in [(33.0, -88.0, 1.5), (271.0, -91.0, -0.7), (0.5, -45.0, 10.0)]:
        assert angles_from_rotation(rotation_from_gimbal(*angles)) == pytest.approx(angles, abs=1e-9)


def test_cli_writes_a_survey_and_rejects_bad_values(tmp_path, capsys):
    assert (
        make_survey.main(
            ["--out", str(tmp_path), "--rows", "1", "--cols", "2", "--width", "200", "--height", "150"]
        )
        == 0
    )
    assert (tmp_path / "ground_truth.json").is_file() and len(list((tmp_path / "images").glob("*.jpg"))) == 2
    with pytest.raises(SystemExit):
        make_survey.main(["--out", str(tmp_path), "--overlap", "1.5"])
    assert "overlap" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert make_survey.main(["--out", str(tmp_path / "a_file"), "--rows", "1", "--cols", "1"]) == 2
    assert "a_file" in capsys.readouterr().err


def test_regenerating_into_a_folder_replaces_the_old_survey_and_refuses_foreign_files(tmp_path):
    generate_survey(tmp_path, SurveySpec(rows=1, cols=3, width=160, height=120))
    generate_survey(tmp_path, SurveySpec(rows=1, cols=2, width=160, height=120))
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["img_0001.jpg", "img_0002.jpg"]
    assert len(load_ground_truth(tmp_path)["cameras"]) == 2
    (tmp_path / "images" / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="holiday.jpg"):
        generate_survey(tmp_path, SurveySpec(rows=1, cols=2, width=160, height=120))
    assert (tmp_path / "images" / "holiday.jpg").read_bytes() == b"not ours"
    with pytest.raises(ValueError, match="overlap"):
        SurveySpec(overlap=1.0)


def test_gps_drift_and_attitude_records_are_simulated_with_their_truth(tmp_path):
    """--gps-drift-v: the EXIF GPS altitude drifts linearly over the flight (RelativeAltitude, a
    barometer's, does not); --attitude-noise: the XMP gimbal angles are the truth plus noise;
    --no-attitude: no gimbal or flight angles at all."""
    from alignkit.core.camera import read_priors

    args = ["--rows", "2", "--cols", "3", "--width", "160", "--height", "120", "--gps-drift-v", "50"]
    assert make_survey.main(["--out", str(tmp_path / "a"), *args, "--attitude-noise", "2"]) == 0
    assert make_survey.main(["--out", str(tmp_path / "b"), *args, "--no-attitude"]) == 0
    gt = load_ground_truth(tmp_path / "a")
    drift = np.array([c["gps_drift_m"][2] for c in gt["cameras"]])
    assert np.allclose(drift, 50.0 * np.arange(6) / 5) and np.allclose(gt["gps"][:, 2] - gt["C"][:, 2], drift)
    priors = sorted(read_priors(str(tmp_path / "a" / "images")), key=lambda p: p.name)
    frame = LocalFrame(**gt["origin"])
    for p, c in zip(priors, gt["cameras"]):
        assert abs(p.gps_alt - frame.h0 - c["gps_enu"][2]) < 0.05  # rounding of the stored altitude
        assert abs(p.rel_alt - (c["gps_enu"][2] - c["gps_drift_m"][2])) < 0.01
        recorded = np.array(c["gimbal_recorded_ypr_deg"])
        assert abs(p.gimbal_pitch - recorded[1]) < 0.01 and abs(p.gimbal_roll - recorded[2]) < 0.01
    noise = np.array([np.subtract(c["gimbal_recorded_ypr_deg"][1:], c["gimbal_ypr_deg"][1:]) for c in gt["cameras"]])
    assert 0.3 < np.abs(noise).mean() < 5.0
    bare = read_priors(str(tmp_path / "b" / "images"))
    assert all(p.gimbal_pitch is None and p.flight_yaw is None for p in bare)
    assert load_ground_truth(tmp_path / "b")["cameras"][0]["gimbal_recorded_ypr_deg"] is None
