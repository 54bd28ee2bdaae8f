"""The control adjustment on a numeric scene with known truth: a block placed by noisy GPS with a wrong
focal is moved onto its control; check points triangulated from the adjusted cameras land on truth."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from alignkit.core.config import AlignConfig
from alignkit.core.control_adjust import adjust_with_control, spans_block, triangulate
from alignkit.core.reconstruction import Reconstruction

W, H, F = 1000, 750, 1100.0
PP = np.array([(W - 1) / 2, (H - 1) / 2])


def _project(R, C, X):
    xc = (X - C) @ R.T
    return F * xc[:, :2] / xc[:, 2:] + PP


def truth(seed=0, rows=3, cols=4, n_points=900, relief=6.0):
    rng = np.random.default_rng(seed)
    down = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    C = np.array([[c * 18.0, r * 22.0, 70.0 + rng.normal(0, 0.5)] for r in range(rows) for c in range(cols)])
    R = np.array([Rotation.from_euler("xyz", rng.normal(0, 1.5, 3), degrees=True).as_matrix() @ down for _ in C])
    xy = rng.uniform(C[:, :2].min(0) - 20, C[:, :2].max(0) + 20, (n_points, 2))
    X = np.column_stack([xy, relief * np.sin(xy[:, 0] / 15.0) * np.cos(xy[:, 1] / 11.0)])
    return C, R, X, rng


def observe(C, R, X, rng, noise_px):
    oi, op, oxy = [], [], []
    for i in range(len(C)):
        uv = _project(R[i], C[i], X)
        vis = np.flatnonzero((uv >= 0).all(1) & (uv[:, 0] < W) & (uv[:, 1] < H))
        oi.append(np.full(len(vis), i))
        op.append(vis)
        oxy.append(uv[vis] + rng.normal(0, noise_px, (len(vis), 2)))
    return np.concatenate(oi), np.concatenate(op), np.concatenate(oxy)


def gps_placed_reconstruction(C, R, X, obs, gps, focal):
    """The block as a GPS-only alignment leaves it: placed by a similarity onto noisy GPS, then adjusted
    with GPS priors and the (wrong) EXIF focal's prior, as the reconstruction does."""
    from alignkit.core.bundle import bundle_adjust
    from alignkit.core.reconstruction import umeyama

    s, rot, t = umeyama(C, gps)
    n = len(C)
    oi, op, oxy = obs
    ba = bundle_adjust(R @ rot.T, s * C @ rot.T + t, [focal], [0.0], [0.0], PP[None], np.zeros(n, int),
                       s * X @ rot.T + t, oi, op, oxy, refine_distortion=False, gps_enu=gps, gps_sigma_h=2.0,
                       gps_sigma_v=3.0, focal_prior=[focal], focal_prior_sigma=0.05, obs_sigma_px=0.3, max_nfev=100)
    return Reconstruction(
        registered=np.ones(n, bool), component=np.zeros(n, int), R=ba.R, C=ba.C,
        focal=np.full(n, ba.focal[0]), k1=np.zeros(n), k2=np.zeros(n), points=ba.points,
        point_track=np.arange(len(X)), point_rgb=np.zeros((len(X), 3), np.uint8), point_error_px=np.zeros(len(X)),
        point_component=np.zeros(len(X), int), n_obs=np.bincount(oi, minlength=n), reproj_rmse_px=np.zeros(n),
        gps_residual=np.zeros((n, 3)), gps_sigma_h_m=2.0, gps_sigma_v_m=3.0, mean_reproj_px=0.3,
        obs_point=op, obs_image=oi, obs_xy=oxy, georeferenced=True)


@pytest.fixture(scope="module")
def block():
    C, R, X, rng = truth()
    obs = observe(C, R, X, rng, 0.3)
    gps = C + rng.normal(0, 1, C.shape) * [2.0, 2.0, 3.0]
    cams = [{"K": np.array([[F * 0.96, 0, PP[0]], [0, F * 0.96, PP[1]], [0, 0, 1]]), "camera_key": "cam"}] * len(C)
    ground = np.array([[10, 5], [45, 8], [8, 42], [50, 45], [27, 22], [20, 30], [38, 15], [35, 35]], float)
    gcp = np.column_stack([ground, 6.0 * np.sin(ground[:, 0] / 15.0) * np.cos(ground[:, 1] / 11.0)])
    meas = []
    for g in gcp:
        im, xy = [], []
        for i in range(len(C)):
            uv = _project(R[i], C[i], g[None])[0]
            if 0 <= uv[0] < W and 0 <= uv[1] < H:
                im.append(i)
                xy.append(uv + rng.normal(0, 0.1, 2))
        meas.append((np.array(im), np.array(xy)))
    rec = gps_placed_reconstruction(C, R, X, obs, gps, F * 0.96)
    return C, R, gps, cams, gcp, meas, rec


def _control(gcp, meas, which):
    return [(f"p{k}", gcp[k], np.array([0.02, 0.02, 0.03]), *meas[k]) for k in which]


def test_control_moves_the_block_onto_truth_and_frees_the_focal(block):
    C, R, gps, cams, gcp, meas, rec = block
    before = np.linalg.norm(rec.C - C, axis=1)
    cfg = AlignConfig(refine_distortion=False)
    out, adjusted, log, freed = adjust_with_control(rec, cams, gps, _control(gcp, meas, range(5)), cfg)
    after = np.linalg.norm(out.C - C, axis=1)
    print(f"camera centre error: GPS only median {np.median(before):.2f} m, with control max {after.max():.4f} m; "
          f"focal {out.focal[0]:.1f} px (true {F})")
    assert np.median(before) > 1.0
    # What is left is the focal/height trade-off that 12 m of relief under 70 m leaves open (the GPS
    # heights no longer help: their bias against the control is estimated): 0.2 % of the height.
    assert after.max() < 0.002 * 70.0
    assert abs(out.focal[0] / F - 1) < 0.003  # the EXIF focal was 4 % short
    assert freed and "focal is freed" in log[-2]
    for k in range(5):  # control points adjusted onto their survey
        assert np.linalg.norm(adjusted[f"p{k}"] - gcp[k]) < 0.02
    for k in range(5, 8):  # check points: triangulated from the adjusted cameras, never adjusted
        X, res = triangulate(meas[k][0], meas[k][1], out.R, out.C, out.focal, out.k1, out.k2, np.tile(PP, (len(C), 1)))
        assert np.linalg.norm(X - gcp[k]) < 0.03 and np.abs(res).max() < 0.5
    assert rec.C is not out.C and np.median(np.linalg.norm(rec.C - C, axis=1)) == np.median(before)  # input untouched


def test_fewer_than_three_control_points_fall_back_to_gps(block):
    C, R, gps, cams, gcp, meas, rec = block
    out, adjusted, log, freed = adjust_with_control(rec, cams, gps, _control(gcp, meas, [0, 4]), AlignConfig())
    assert not freed
    assert "fewer than three control points (2 used)" in log[0] and "falls back to the GPS" in log[0]
    assert sorted(adjusted) == ["p0", "p4"]
    for k in (0, 4):
        assert np.linalg.norm(adjusted[f"p{k}"] - gcp[k]) < 0.05


def test_spans_block():
    cams = np.array([[x, y] for x in range(0, 100, 10) for y in range(0, 60, 10)], float)
    assert spans_block(np.array([[5, 5], [95, 5], [50, 55]]), cams)
    assert not spans_block(np.array([[5, 5], [95, 5], [50, 8]]), cams)  # along one edge
    assert not spans_block(np.array([[40, 25], [45, 30], [50, 28]]), cams)  # in the middle
    assert not spans_block(np.array([[5, 5], [95, 55]]), cams)


def test_run_control_reports_rmse_layer_and_warnings(block, tmp_path):
    """Through the pipeline's control stage: roles, RMSE per role, the layer, and the warnings for a
    point in one photo and for a measurement clicked 20 px off (named by photo)."""
    from types import SimpleNamespace

    from alignkit.core.control_report import control_section_html, run_control
    from alignkit.core.geo import LocalFrame

    C, R, gps, cams, gcp, meas, rec = block
    frame, crs = LocalFrame(46.5, 6.6, 400.0), "EPSG:32632"
    names = [f"img_{i:02d}.jpg" for i in range(len(C))]
    xyz = frame.to_crs(gcp, crs)
    lines = [crs]
    for k, (im, xy) in enumerate(meas):
        for n, (i, (x, y)) in enumerate(zip(im, xy)):
            if k == 1 and n == 0:
                x += 20.0  # clicked wrong
            lines.append(f"{xyz[k, 0]:.4f} {xyz[k, 1]:.4f} {xyz[k, 2]:.4f} {x:.3f} {y:.3f} {names[i]} p{k}")
    lines.append(f"{xyz[0, 0] + 5:.4f} {xyz[0, 1]:.4f} {xyz[0, 2]:.4f} 10 10 {names[0]} lonely")
    (tmp_path / "gcp_list.txt").write_text("\n".join(lines) + "\n")
    priors = [SimpleNamespace(name=n, width=W, height=H) for n in names]
    cfg = AlignConfig(gcp_file=str(tmp_path / "gcp_list.txt"), check_points="p5,p6,p7", refine_distortion=False)
    out, result = run_control(cfg, priors, priors, rec, cams, gps, frame, crs)
    by = {r["name"]: r for r in result["rows"]}
    assert [by[f"p{k}"]["role"] for k in range(8)] == ["control"] * 5 + ["check"] * 3
    assert result["control_rmse_m"]["n"] == 5 and result["check_rmse_m"]["n"] == 3
    assert result["check_rmse_m"]["horizontal"] < 0.03 and result["check_rmse_m"]["vertical"] < 0.05
    assert by["lonely"]["dx"] is None and by["lonely"]["n_images"] == 1
    bad = names[meas[1][0][0]]
    assert by["p1"]["reproj_by_image"][bad] > 15
    text = "\n".join(result["warnings"])
    assert f"control point 'p1' in photo {bad}: measured" in text and "probably clicked wrong" in text
    assert "'lonely': measured in 1 photo" in text
    assert len(result["layer"].features) == 9 and result["layer"].name == "control_points"
    html = control_section_html({"control_points": result["rows"], "control_rmse_m": result["control_rmse_m"],
                                 "check_rmse_m": result["check_rmse_m"], "control_focal_freed": True})
    assert "RMSE X (m)" in html and "check (independent)" in html and "data:image/png;base64" in html
