"""Incremental SfM against synthetic ground truth (known poses, focal, distortion, noise, outliers)."""
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from alignkit.core.config import AlignConfig
from alignkit.core.reconstruction import reconstruct, umeyama

WIDTH, HEIGHT, FOCAL, K1, K2 = 1200, 900, 1500.0, -0.05, 0.01


def nadir_rotation(yaw_deg, tilt_deg):
    """ENU -> camera for a camera looking down (x east, y south at yaw 0), tilted by small angles."""
    down = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    yaw = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    tilt = Rotation.from_euler("xy", tilt_deg, degrees=True).as_matrix()
    return tilt @ down @ yaw.T


def survey(rows=4, cols=6, height=100.0, relief=5.0, point_density=0.12, noise_px=0.5, outliers=0.05,
           gps_noise_h=0.0, gps_noise_v=0.0, seed=0, origin=(0.0, 0.0), overlap=0.75, sidelap=0.65,
           gps_offset=(0.0, 0.0, 0.0), lens=(K1, K2), radial_bias_px=0.0):
    """A lawnmower survey over a sinusoidal relief: true poses, points, and Tracks built from projections.
    gps_offset: GPS antenna (m) ahead of, left of and above the camera, fixed to the aircraft.
    lens: the true (k1, k2); radial_bias_px: a detector's systematic radial error, this many pixels
    outward at the image corner, growing with the cube of the radius."""
    rng = np.random.default_rng(seed)
    step_x = (1 - overlap) * WIDTH / FOCAL * height
    step_y = (1 - sidelap) * HEIGHT / FOCAL * height
    centres, rotations = [], []
    for r in range(rows):
        for c in range(cols):
            cc = c if r % 2 == 0 else cols - 1 - c  # lawnmower: every other line flown back
            centres.append([origin[0] + cc * step_x, origin[1] + r * step_y, height + rng.normal(0, 1.0)])
            rotations.append(nadir_rotation(180.0 * (r % 2), rng.normal(0, 2.0, 2)))
    C, R = np.array(centres), np.array(rotations)
    half_w, half_h = 0.6 * WIDTH / FOCAL * height, 0.6 * HEIGHT / FOCAL * height
    lo = C[:, :2].min(0) - [half_w, half_h]
    hi = C[:, :2].max(0) + [half_w, half_h]
    n_points = int(point_density * np.prod(hi - lo))
    xy = rng.uniform(lo, hi, (n_points, 2))
    z = relief * np.sin((xy[:, 0] - origin[0]) / 40.0) * np.cos((xy[:, 1] - origin[1]) / 30.0)
    X = np.column_stack([xy, z])
    pp = np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    obs_t, obs_i, obs_xy = [], [], []
    for i in range(len(C)):
        xc = (X - C[i]) @ R[i].T
        xn = xc[:, :2] / xc[:, 2:3]
        r2 = (xn**2).sum(1)
        uv = FOCAL * xn * (1 + lens[0] * r2 + lens[1] * r2**2)[:, None] + pp
        radius = uv - pp
        uv += radial_bias_px * radius * (np.linalg.norm(radius, axis=1) ** 2 / np.sum(pp**2))[:, None] / np.linalg.norm(pp)
        vis = np.flatnonzero((xc[:, 2] > 0) & (uv >= 0).all(1) & (uv[:, 0] <= WIDTH - 1) & (uv[:, 1] <= HEIGHT - 1))
        uvn = uv[vis] + rng.normal(0, noise_px, (len(vis), 2))
        bad = rng.random(len(vis)) < outliers
        uvn[bad] = rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (int(bad.sum()), 2))
        obs_t.append(vis)
        obs_i.append(np.full(len(vis), i))
        obs_xy.append(uvn)
    t, i, uv = np.concatenate(obs_t), np.concatenate(obs_i), np.concatenate(obs_xy)
    order = np.lexsort((i, t))
    tracks = SimpleNamespace(obs_track=t[order].astype(np.int64), obs_image=i[order].astype(np.int32),
                             obs_feature=np.arange(len(t), dtype=np.int32), obs_xy=uv[order],
                             track_rgb=rng.integers(0, 255, (n_points, 3), dtype=np.uint8))
    along = np.repeat([1.0 if r % 2 == 0 else -1.0 for r in range(rows)], cols)  # east, then back west
    antenna = np.column_stack([along * gps_offset[0], along * gps_offset[1], np.full(len(C), gps_offset[2])])
    gps = C + antenna + rng.normal(0, 1, C.shape) * [gps_noise_h, gps_noise_h, gps_noise_v]
    return SimpleNamespace(C=C, R=R, X=X, tracks=tracks, gps=gps, height=height)


def cameras_for(n, focal_error=0.02, key="drone"):
    """Camera priors with an EXIF focal `focal_error` off the truth and no distortion."""
    f = FOCAL * (1 + focal_error)
    K = np.array([[f, 0, (WIDTH - 1) / 2], [0, f, (HEIGHT - 1) / 2], [0, 0, 1]])
    return [dict(K=K, width=WIDTH, height=HEIGHT, camera_key=key) for _ in range(n)]


def check_against_truth(rec, truth, images=None, centre_tol=0.002, rot_tol_deg=0.1, focal_tol=0.005):
    """The acceptance checks: centres (after a similarity fit), rotations, focal."""
    idx = np.arange(len(truth.C)) if images is None else np.asarray(images)
    assert rec.registered[idx].all(), f"unregistered: {np.flatnonzero(~rec.registered[idx])}"
    s, rot, t = umeyama(rec.C[idx], truth.C[idx])
    fitted = s * rec.C[idx] @ rot.T + t
    centre_err = np.linalg.norm(fitted - truth.C[idx], axis=1).max() / truth.height
    R_fit = rec.R[idx] @ rot.T
    rel = Rotation.from_matrix(R_fit @ np.transpose(truth.R[idx], (0, 2, 1))).magnitude()
    focal_err = np.abs(rec.focal[idx] / FOCAL - 1).max()
    assert centre_err < centre_tol, f"centre error {100 * centre_err:.3f}% of flying height"
    assert np.degrees(rel).max() < rot_tol_deg, f"rotation error {np.degrees(rel).max():.3f} deg"
    assert focal_err < focal_tol, f"focal error {100 * focal_err:.2f}%"
    return centre_err, np.degrees(rel).max(), focal_err


def test_nadir_survey_with_gps_recovers_truth_and_is_georeferenced():
    truth = survey(rows=4, cols=6, seed=1)
    t0 = time.perf_counter()
    rec = reconstruct(truth.tracks, cameras_for(24), truth.gps, [], AlignConfig())
    print(f"24 images: {time.perf_counter() - t0:.1f} s", rec.timings)
    check_against_truth(rec, truth)
    assert (rec.component == 0).all() and rec.georeferenced
    # Exact GPS: the model sits on it without any further fit (metric, ENU).
    assert np.abs(rec.C - truth.C).max() < 0.002 * truth.height
    assert abs(rec.k1[0] - K1) < 0.01 and abs(rec.k2[0] - K2) < 0.01
    # A real lens's distortion is evident: the distortion gate leaves it free.
    assert not rec.distortion_held.any() and rec.distortion_wald[0] > 10 * rec.distortion_threshold
    assert 0.3 < rec.mean_reproj_px < 0.9  # 0.5 px noise per axis, outliers removed
    # Points sit on the true surface: compare to the track's true 3D point.
    assert np.median(np.linalg.norm(rec.points - truth.X[rec.point_track], axis=1)) < 0.002 * truth.height
    assert rec.points.shape[0] > 0.5 * len(np.unique(truth.tracks.obs_track))


@pytest.mark.slow
def test_sixty_images_with_3m_gps_noise():
    truth = survey(rows=6, cols=10, gps_noise_h=3.0, gps_noise_v=3.0, seed=2)
    rec = reconstruct(truth.tracks, cameras_for(60), truth.gps, [], AlignConfig())
    check_against_truth(rec, truth)
    # The GPS accuracy was estimated from the residuals (config sigmas are 0).
    assert 1.5 < rec.gps_sigma_h_m < 5.0
    # Georeferenced through the GPS: 60 cameras average the 3 m noise down.
    assert np.linalg.norm(rec.C - truth.C, axis=1).mean() < 1.5


def test_strong_relief():
    truth = survey(rows=4, cols=5, relief=25.0, seed=3)
    rec = reconstruct(truth.tracks, cameras_for(20), truth.gps, [], AlignConfig())
    check_against_truth(rec, truth)


def test_without_gps_still_aligns_in_a_local_frame():
    truth = survey(rows=3, cols=6, seed=4, point_density=0.2)
    rec = reconstruct(truth.tracks, cameras_for(18), None, [], AlignConfig())
    # Without GPS nothing holds the weak modes (focal vs flying height, doming) but the 5 m relief:
    # looser bounds than with GPS.
    check_against_truth(rec, truth, focal_tol=0.015, rot_tol_deg=0.3)
    assert not rec.georeferenced and np.isnan(rec.gps_residual).all()
    assert np.isnan(rec.gps_antenna_offset_m).all()


def test_gps_antenna_offset_is_estimated_from_lines_flown_both_ways():
    """GPS 0.3 m ahead of and 0.4 m to the right of the camera (or late by the equivalent): it flips
    between the lines flown east and west, so no similarity absorbs it; it is estimated and the
    centres, not the antenna, land on the truth."""
    truth = survey(rows=4, cols=6, seed=10, gps_offset=(0.3, -0.4, 0.0), gps_noise_h=0.03, gps_noise_v=0.03)
    rec = reconstruct(truth.tracks, cameras_for(24), truth.gps, [], AlignConfig())
    check_against_truth(rec, truth)
    assert np.abs(rec.gps_antenna_offset_m - [0.3, -0.4, 0.0]).max() < 0.05
    assert np.abs(rec.C - truth.C).max() < 0.002 * truth.height
    # gps_residual is the model's: adjusted antenna minus GPS, down at the GPS noise.
    assert np.sqrt(np.mean(np.sum(rec.gps_residual**2, axis=1))) < 0.1


def test_two_unrelated_scenes_give_two_components():
    a = survey(rows=3, cols=4, seed=5, point_density=0.25)
    b = survey(rows=3, cols=4, seed=6, origin=(5000.0, 0.0), point_density=0.25)
    na, ta = len(a.C), int(a.tracks.obs_track.max()) + 1
    tracks = SimpleNamespace(
        obs_track=np.concatenate([a.tracks.obs_track, b.tracks.obs_track + ta]),
        obs_image=np.concatenate([a.tracks.obs_image, b.tracks.obs_image + na]).astype(np.int32),
        obs_xy=np.concatenate([a.tracks.obs_xy, b.tracks.obs_xy]),
        track_rgb=np.concatenate([a.tracks.track_rgb, b.tracks.track_rgb]),
    )
    truth = SimpleNamespace(C=np.concatenate([a.C, b.C]), R=np.concatenate([a.R, b.R]), height=a.height)
    rec = reconstruct(tracks, cameras_for(2 * na), np.concatenate([a.gps, b.gps]), [], AlignConfig())
    assert rec.registered.all()
    comp_a, comp_b = np.unique(rec.component[:na]), np.unique(rec.component[na:])
    assert len(comp_a) == 1 and len(comp_b) == 1 and comp_a[0] != comp_b[0]
    # 12-image blocks (the accuracy criteria proper are tested on 20+ images above).
    check_against_truth(rec, truth, images=np.arange(na), rot_tol_deg=0.15, focal_tol=0.015)
    check_against_truth(rec, truth, images=np.arange(na, 2 * na), rot_tol_deg=0.15, focal_tol=0.015)
    # Each component is georeferenced on its own GPS: they do not collapse onto each other.
    assert np.abs(rec.C - truth.C).max() < 0.01 * a.height
    pts_a = rec.points[rec.point_component == comp_a[0]]
    assert pts_a[:, 0].max() < 1000


def test_cancel_is_honoured():
    from alignkit.core.cancel import Canceled

    truth = survey(rows=2, cols=5, seed=7)
    with pytest.raises(Canceled):
        reconstruct(truth.tracks, cameras_for(10), truth.gps, [], AlignConfig(), is_canceled=lambda: True)


def test_fewer_than_two_images_is_a_clear_error():
    truth = survey(rows=1, cols=2, seed=8)
    with pytest.raises(ValueError, match="at least two images"):
        reconstruct(truth.tracks, cameras_for(1), truth.gps[:1], [], AlignConfig())


@pytest.mark.slow
def test_end_to_end_on_rendered_synthetic_survey(tmp_path):
    """Rendered photos -> priors -> SIFT -> pairs -> matching -> tracks -> reconstruction vs ground truth."""
    from alignkit.core import camera, features, matching, pairs, synthetic, tracks
    from alignkit.core.geo import LocalFrame

    spec = synthetic.SurveySpec(rows=4, cols=5, width=800, height=600, k1=-0.04, k2=0.01, relief_m=8.0,
                                gps_noise_h_m=0.5, gps_noise_v_m=0.5, seed=3)
    synthetic.generate_survey(tmp_path / "survey", spec)
    gt = synthetic.load_ground_truth(tmp_path / "survey" / "ground_truth.json")
    priors = camera.read_priors(tmp_path / "survey" / "images")
    config = AlignConfig(max_image_size=800, max_features=3000, workers=1)
    frame = LocalFrame(gt["origin"]["lat0"], gt["origin"]["lon0"], gt["origin"]["h0"])
    gps = frame.to_enu([p.lat for p in priors], [p.lon for p in priors], [p.gps_alt for p in priors])
    store = features.extract_features([p.path for p in priors], tmp_path / "ws", config)
    candidates = pairs.candidate_pairs(gps, None, None, config)
    pair_matches = matching.match_pairs(store, candidates, np.stack([p.K() for p in priors]), config)
    track_set = tracks.build_tracks(pair_matches, store)
    cams = [{"K": p.K(), "width": p.width, "height": p.height, "camera_key": p.camera_key} for p in priors]
    rec = reconstruct(track_set, cams, gps, pair_matches, config)

    by_name = {c["image"]: c for c in gt["cameras"]}
    truth = SimpleNamespace(
        C=np.array([by_name[p.name]["center_enu"] for p in priors]),
        R=np.array([by_name[p.name]["R"] for p in priors]),
        height=spec.altitude_m,
    )
    true_focal = np.array(by_name[priors[0].name]["K"])[0, 0]
    assert rec.registered.all() and (rec.component == 0).all()
    s, rot, t = umeyama(rec.C, truth.C)
    assert np.linalg.norm(s * rec.C @ rot.T + t - truth.C, axis=1).max() < 0.002 * spec.altitude_m
    rel = Rotation.from_matrix(rec.R @ rot.T @ np.transpose(truth.R, (0, 2, 1))).magnitude()
    assert np.degrees(rel).max() < 0.1
    assert abs(rec.focal[0] / true_focal - 1) < 0.005
    assert rec.mean_reproj_px < 0.5
    # Georeferenced by the (0.5 m noisy) GPS alone; the sparse points' shape matches the true terrain.
    assert np.linalg.norm(rec.C - truth.C, axis=1).mean() < 0.5
    points = s * rec.points @ rot.T + t
    dz = points[:, 2] - synthetic.terrain_height(gt, points[:, 0], points[:, 1])
    # The ground's shape to 1 per mille of the flying height; its level moves with the focal (focal and
    # flying height trade off on a nadir block: 0.2 % of focal is 0.12 m here), so it is held to what the
    # focal check above allows, not tighter.
    assert np.median(np.abs(dz - np.median(dz))) < 0.001 * spec.altitude_m and len(rec.points) > 2000
    assert abs(np.median(dz)) < (abs(rec.focal[0] / true_focal - 1) + 0.001) * spec.altitude_m



def test_focal_far_from_exif_is_held_at_exif():
    """Policy against the focal/height trap: a self-calibrated focal more than 3 prior sigmas from the
    EXIF focal is not trusted (on real nadir blocks it is an unmodelled effect dragging it, e.g. COLMAP's
    +25 % on brighton_beach); it is held at EXIF. With a loose prior the same data self-calibrate."""
    truth = survey(rows=3, cols=4, seed=9, point_density=0.15)
    exif_focal = FOCAL * 1.25
    free = reconstruct(truth.tracks, cameras_for(12, focal_error=0.25), truth.gps, [],
                       AlignConfig(focal_prior_sigma=1.0))
    held = reconstruct(truth.tracks, cameras_for(12, focal_error=0.25), truth.gps, [], AlignConfig())
    assert abs(free.focal[0] / FOCAL - 1) < 0.005 and not any("held at the prior" in line for line in free.log)
    assert held.focal[0] == pytest.approx(exif_focal, rel=1e-4)
    assert any("held at the prior" in line for line in held.log)
    # The value the gate rejected is kept for the summary's warning: where self-calibration went.
    assert np.isnan(free.focal_rejected_px).all()
    assert np.abs(held.focal_rejected_px[held.registered] / FOCAL - 1).max() < 0.05
    assert held.registered.all() and held.mean_reproj_px < free.mean_reproj_px + 2.0


def test_distortion_gate_keeps_a_nadir_block_from_doming(monkeypatch):
    """A lens without distortion and a detector biased 0.05 px outward at the corners: a free k1 takes
    the bias and trades it against a dome of the block; the gate sees no evidence for the distortion
    (Wald 4.6 against 21.4) and holds it. Measured: heights 5.8 mm RMS from the truth (17.0 mm free)."""
    from alignkit.core import lens_gates

    size_test_px = lens_gates.DISTORTION_MIN_PX
    truth = survey(rows=5, cols=8, lens=(0.0, 0.0), radial_bias_px=0.05, gps_noise_h=1.0, gps_noise_v=2.0,
                   seed=4, outliers=0.0, noise_px=0.3)

    def height_error(parameters, min_px):
        monkeypatch.setattr(lens_gates, "DISTORTION_PARAMETERS", parameters)  # 0: no evidence test
        monkeypatch.setattr(lens_gates, "DISTORTION_MIN_PX", min_px)  # 0: no size test
        rec = reconstruct(truth.tracks, cameras_for(40, focal_error=0.0), truth.gps, [], AlignConfig())
        assert rec.registered.all()
        s, rot, t = umeyama(rec.C, truth.C)
        return np.sqrt(np.mean((s * rec.C @ rot.T + t - truth.C)[:, 2] ** 2)), rec

    held, rec = height_error(2, 0.0)
    assert rec.distortion_held.all() and rec.k1[0] == 0.0 and rec.distortion_wald[0] < rec.distortion_threshold
    free, rec = height_error(0, 0.0)
    assert not rec.distortion_held.any()
    assert held < 0.0001 * truth.height and held < 0.5 * free, (held, free)
    # Without the evidence test, the size test alone holds it: the free k1 moved no pixel by 0.5 px.
    by_size, rec = height_error(0, size_test_px)
    assert rec.distortion_held.all() and any("px anywhere in the frame" in line for line in rec.log)
    assert by_size < 0.5 * free


def test_a_very_big_adjustment_takes_fewer_points_per_image(monkeypatch):
    """Above BA_MAX_OBSERVATIONS an adjustment takes fewer points per image, still spread over every
    photo: the whole-block adjustments stay near the cap and the block keeps its shape. (96 points per
    image make the subset bite on this small block, as 800 do on a big one.)"""
    import alignkit.core.reconstruction as rc

    truth = survey(rows=4, cols=6, seed=1)
    config = AlignConfig(ba_points_per_image=96, ba_final_points_per_image=96)
    full = reconstruct(truth.tracks, cameras_for(24), truth.gps, [], config)
    cap = max(b[3] for b in full.ba_log if b[0] == "global") // 2
    monkeypatch.setattr(rc, "BA_MAX_OBSERVATIONS", cap)
    rec = reconstruct(truth.tracks, cameras_for(24), truth.gps, [], config)
    globals_ = [b for b in rec.ba_log if b[0] == "global"]
    assert max(b[3] for b in globals_) <= 1.3 * cap, (cap, [b[3] for b in globals_])
    assert all(b[1] == 24 for b in globals_[-3:])  # still every photo
    check_against_truth(rec, truth)
