"""Bundle adjustment against synthetic ground truth: Jacobian, recovery, gauge, fixed blocks, GPS sigmas."""
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from alignkit.core.bundle import build_problem, bundle_adjust, robust_gps_sigmas

W, H, F, K1, K2 = 1000, 750, 1200.0, -0.04, 0.008
PP = [[(W - 1) / 2, (H - 1) / 2]]


def scene(rows=2, cols=4, n_points=600, noise_px=0.3, seed=0, relief=6.0, height=80.0, k1=K1, k2=K2):
    """Nadir cameras on a grid over a relief; exact observations plus Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    down = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    C = np.array([[c * 15.0, r * 20.0, height + rng.normal(0, 1)] for r in range(rows) for c in range(cols)])
    R = np.array([Rotation.from_euler("xyz", rng.normal(0, 2, 3), degrees=True).as_matrix() @ down for _ in C])
    xy = rng.uniform(C[:, :2].min(0) - 30, C[:, :2].max(0) + 30, (n_points, 2))
    X = np.column_stack([xy, relief * np.sin(xy[:, 0] / 17.0) * np.cos(xy[:, 1] / 13.0)])
    obs_i, obs_p, obs_xy = [], [], []
    for i in range(len(C)):
        xc = (X - C[i]) @ R[i].T
        xn = xc[:, :2] / xc[:, 2:]
        r2 = (xn**2).sum(1)
        uv = F * xn * (1 + k1 * r2 + k2 * r2**2)[:, None] + PP[0]
        vis = np.flatnonzero((uv >= 0).all(1) & (uv[:, 0] < W) & (uv[:, 1] < H))
        obs_i.append(np.full(len(vis), i))
        obs_p.append(vis)
        obs_xy.append(uv[vis] + rng.normal(0, noise_px, (len(vis), 2)))
    obs_i, obs_p, obs_xy = np.concatenate(obs_i), np.concatenate(obs_p), np.concatenate(obs_xy)
    seen = np.bincount(obs_p, minlength=n_points) >= 2
    keep = seen[obs_p]
    return C, R, X, obs_i[keep], obs_p[keep], obs_xy[keep]


def perturbed(C, R, X, seed=1, pos_m=0.5, rot_deg=0.3, point_m=0.5):
    rng = np.random.default_rng(seed)
    R0 = Rotation.from_rotvec(np.radians(rot_deg) * rng.normal(0, 1, (len(R), 3))).as_matrix() @ R
    return C + rng.normal(0, pos_m, C.shape), R0, X + rng.normal(0, point_m, X.shape)


def rotation_error_deg(Ra, Rb):
    return np.degrees(Rotation.from_matrix(Ra @ np.transpose(Rb, (0, 2, 1))).magnitude())


@pytest.mark.parametrize("offset", [None, "fixed", "estimated"])
def test_analytic_jacobian_matches_finite_differences(offset):
    C, R, X, oi, op, oxy = scene(rows=1, cols=3, n_points=80)
    C0, R0, X0 = perturbed(C, R, X)
    fixed = np.zeros(len(C), bool)
    fixed[1] = True
    gps = C + 0.3
    gps[2] = np.nan
    x0, residuals, jacobian, _, n_obs_res, n_point_cols = build_problem(
        R0, C0, [F * 1.02], [0.01], [-0.002], PP, np.zeros(len(C), int), X0, oi, op, oxy,
        fixed_images=fixed, gps_enu=gps, gps_sigma_h=0.7, gps_sigma_v=2.0, focal_prior=[F], scale_anchor=(0, 2, 30.0),
        gps_offset=None if offset is None else [0.3, -0.5, 0.2], estimate_gps_offset=offset == "estimated",
        gps_offset_frames=None if offset is None else flight_frames([[1, 0], [0.6, 0.8], [-1, 0.1]]),
        gps_offset_sigma_m=[0.8, 0.8, 0.1],
    )
    x = x0 + np.random.default_rng(3).normal(0, 1e-3, x0.shape)  # rotation increments away from 0
    J = jacobian(x).toarray()
    numeric = np.empty_like(J)
    for k in range(len(x)):
        step = np.zeros_like(x)
        step[k] = 1e-6
        numeric[:, k] = (residuals(x + step) - residuals(x - step)) / 2e-6
    assert n_point_cols == 3 * len(np.unique(op))
    assert np.abs(J - numeric).max() < 1e-4 * np.abs(numeric).max()


def _held_problem_off_its_solution(**options):
    """The 6-photo scene with image 1 and every 7th point held, a focal prior and `options` (priors),
    at a state 1e-3 off the start, with robust row weights: (x, r, sw, jacobian, n_point_cols)."""
    C, R, X, oi, op, oxy = scene(rows=2, cols=3, n_points=120)
    C0, R0, X0 = perturbed(C, R, X)
    fixed = np.zeros(len(C), bool)
    fixed[1] = True
    fixed_points = np.zeros(len(X), bool)
    fixed_points[::7] = True
    x0, residuals, jacobian, _, n_obs_res, n_point_cols = build_problem(
        R0, C0, [F * 1.02], [0.01], [-0.002], PP, np.zeros(len(C), int), X0, oi, op, oxy,
        fixed_images=fixed, fixed_points=fixed_points, focal_prior=[F], **options)
    x = x0 + np.random.default_rng(4).normal(0, 1e-3, x0.shape)
    r = residuals(x)
    sw = np.ones(len(r))
    sw[:n_obs_res] = np.repeat(np.random.default_rng(5).uniform(0.2, 1.0, n_obs_res // 2), 2)  # robust weights
    return x, r, sw, jacobian, n_point_cols


@pytest.mark.parametrize("dense", [True, False])
def test_normal_equations_equal_the_weighted_sparse_jacobians(dense):
    """The LM solver's per-observation assembly of J^T J and J^T r is the sparse product it replaces,
    with held images, held points, priors, an estimated antenna offset and robust row weights."""
    C = scene(rows=2, cols=3, n_points=120)[0]
    gps = C + 0.3
    gps[2] = np.nan
    x, r, sw, jacobian, n_point_cols = _held_problem_off_its_solution(
        gps_enu=gps, gps_sigma_h=0.7, gps_sigma_v=2.0, gps_offset=[0.3, -0.5, 0.2], estimate_gps_offset=True,
        gps_offset_frames=flight_frames([[1, 0], [0.6, 0.8], [-1, 0.1], [1, 0], [0.6, 0.8], [-1, 0.1]]))
    J = (jacobian(x).toarray() * sw[:, None])
    A, g = J.T @ J, J.T @ (sw * r)
    nc = len(x) - n_point_cols
    U, Wt, V, g_fast = jacobian.normal_equations(x, r, sw, dense)
    Wt = Wt if dense else Wt.toarray()
    scale = np.abs(A).max()
    assert np.abs(U - A[:nc, :nc]).max() < 1e-10 * scale
    assert np.abs(Wt - A[nc:, :nc]).max() < 1e-10 * scale
    blocks = np.array([A[nc + 3 * p: nc + 3 * p + 3, nc + 3 * p: nc + 3 * p + 3] for p in range(n_point_cols // 3)])
    assert np.abs(V - blocks).max() < 1e-10 * scale
    assert np.abs(g_fast - g).max() < 1e-10 * np.abs(g).max()


@pytest.mark.parametrize("dense", [True, False])
def test_normal_equations_in_small_chunks_equal_one_chunk(monkeypatch, dense):
    """The normal equations are summed chunk by chunk of observations in image order; chunks of 7 split
    every image and spread each point over several chunks, and must add up to one chunk's sums."""
    from alignkit.core import bundle_reprojection

    C, _, _, oi, _, _ = scene(rows=2, cols=3, n_points=120)
    assert len(oi) > 7 * len(C) and len(oi) < bundle_reprojection.CHUNK_OBSERVATIONS
    results = {}
    for chunk in (7, bundle_reprojection.CHUNK_OBSERVATIONS):
        monkeypatch.setattr(bundle_reprojection, "CHUNK_OBSERVATIONS", chunk)
        x, r, sw, jacobian, _ = _held_problem_off_its_solution(gps_enu=C + 0.3)
        U, Wt, V, g = jacobian.normal_equations(x, r, sw, dense, sparse_u=not dense)
        results[chunk] = [a if isinstance(a, np.ndarray) else a.toarray() for a in (U, Wt, V, g)]
    for small, one in zip(results[7], results[bundle_reprojection.CHUNK_OBSERVATIONS]):
        assert np.abs(small - one).max() <= 1e-10 * np.abs(one).max()


def _arrays(obj):
    """Every ndarray an object holds (attributes, lists, tuples), recursively."""
    if isinstance(obj, np.ndarray):
        return [obj]
    items = obj if isinstance(obj, (list, tuple)) else vars(obj).values() if hasattr(obj, "__dict__") else ()
    return [a for o in items for a in _arrays(o)]


@pytest.mark.parametrize("dense", [True, False])
def test_normal_equations_hold_little_per_observation_and_stay_exact(monkeypatch, dense):
    """The reprojection block's caches (chunk plans, W^T's pattern) hold int32 indices, ~70 bytes per
    observation besides the caller's arrays; with two lenses, a point observed twice in one image, held
    images and points, and chunks that split images, the assembly is still the sparse J^T J."""
    from alignkit.core import bundle_reprojection

    monkeypatch.setattr(bundle_reprojection, "CHUNK_OBSERVATIONS", 50)
    C, R, X, oi, op, oxy = scene(rows=2, cols=3, n_points=120)
    C0, R0, X0 = perturbed(C, R, X)
    oi, op, oxy = np.r_[oi, oi[:5]], np.r_[op, op[:5]], np.r_[oxy, oxy[:5] + 0.2]
    fixed, fixed_points = np.arange(len(C)) == 1, np.arange(len(X)) % 7 == 0
    x0, residuals, jacobian, _, n_obs_res, n_point_cols = build_problem(
        R0, C0, [F * 1.02, F], [0.01, 0.0], [-0.002, 0.0], PP * 2, np.arange(len(C)) % 2, X0, oi, op, oxy,
        fixed_images=fixed, fixed_points=fixed_points, gps_enu=C + 0.3)
    x = x0 + np.random.default_rng(4).normal(0, 1e-3, x0.shape)
    r = residuals(x)
    sw = np.ones(len(r))
    sw[:n_obs_res] = np.repeat(np.random.default_rng(5).uniform(0.2, 1.0, n_obs_res // 2), 2)  # robust weights
    U, Wt, V, g = jacobian.normal_equations(x, r, sw, dense)
    J = jacobian(x).toarray() * sw[:, None]
    A, nc = J.T @ J, len(x) - n_point_cols
    scale = np.abs(A).max()
    assert np.abs(U - A[:nc, :nc]).max() < 1e-10 * scale
    assert np.abs((Wt if dense else Wt.toarray()) - A[nc:, :nc]).max() < 1e-10 * scale
    blocks = [A[nc + k: nc + k + 3, nc + k: nc + k + 3] for k in range(0, n_point_cols, 3)]
    assert np.abs(V - blocks).max() < 1e-10 * scale
    assert np.abs(g - J.T @ (sw * r)).max() < 1e-10 * np.abs(g).max()
    rep = jacobian.problem.reprojection
    held = [a for a in _arrays(rep) if not any(a is b for b in (oi, op, oxy, *_arrays(rep.lay)))]
    assert sum(a.size for a in held if a.dtype == np.int64) <= 10 * (len(C) + 1)  # per-image tables only
    if not dense:  # dense, W^T's entries are (point, column) for all of them
        assert sum(a.nbytes for a in held) < 120 * len(oi)  # 90 here (chunks of 50); int64 caches held 600
        assert Wt.indices.dtype == np.int32


@pytest.mark.parametrize("solver", ["lm", "scipy"])
def test_recovers_poses_focal_and_distortion(solver):
    C, R, X, oi, op, oxy = scene()
    C0, R0, X0 = perturbed(C, R, X)
    t0 = time.perf_counter()
    res = bundle_adjust(
        R0, C0, [F * 0.97], [0.0], [0.0], PP, np.zeros(len(C), int), X0, oi, op, oxy,
        gps_enu=C, gps_sigma_h=0.02, gps_sigma_v=0.02, focal_prior=[F * 0.97], focal_prior_sigma=0.1,
        loss="huber", solver=solver, max_nfev=100,
    )
    print(f"{solver}: {time.perf_counter() - t0:.2f} s, {res.nfev} evaluations, {res.status}")
    assert abs(res.focal[0] / F - 1) < 0.002
    assert abs(res.k1[0] - K1) < 0.005 and abs(res.k2[0] - K2) < 0.005
    assert np.linalg.norm(res.C - C, axis=1).max() < 0.05
    assert rotation_error_deg(res.R, R).max() < 0.1  # GPS at 2 cm over a 45 m block leaves ~0.03 deg
    assert np.median(np.linalg.norm(res.points - X, axis=1)) < 0.2  # 0.25% of the flying height
    assert res.final_rms_px < 0.35 < res.initial_rms_px  # 0.3 px noise per axis


def distortion_evidence(lens, seed):
    """Self-calibration with the GPS gauge: the adjusted (k1, k2), their covariance, the Wald statistic."""
    C, R, X, oi, op, oxy = scene(rows=3, cols=4, seed=seed, k1=lens[0], k2=lens[1])
    C0, R0, X0 = perturbed(C, R, X, seed=seed + 1, pos_m=0.1, rot_deg=0.1, point_m=0.1)
    res = bundle_adjust(R0, C0, [F], [0.0], [0.0], PP, np.zeros(len(C), int), X0, oi, op, oxy,
                        gps_enu=C, gps_sigma_h=0.02, gps_sigma_v=0.02, focal_prior=[F], obs_sigma_px=0.3,
                        max_nfev=50, ftol=1e-10, distortion_covariance=True)
    k = np.array([res.k1[0], res.k2[0]])
    cov = res.distortion_covariance[0]
    return k, cov, float(k @ np.linalg.solve(cov, k)), 2 * np.log(2 * len(oi))


def test_distortion_covariance_is_calibrated_and_tells_a_lens_from_none():
    # No distortion: the estimates scatter as their covariance says, and the evidence stays below the
    # BIC penalty the distortion gate uses; a real lens's distortion is evident by far.
    runs = [distortion_evidence((0.0, 0.0), seed) for seed in range(8)]
    k = np.array([r[0] for r in runs])
    predicted = np.sqrt(np.mean([np.diag(r[1]) for r in runs], axis=0))
    assert 0.5 < k[:, 0].std() / predicted[0] < 2.0 and 0.5 < k[:, 1].std() / predicted[1] < 2.0
    assert all(wald < threshold for _, _, wald, threshold in runs)
    _, _, wald, threshold = distortion_evidence((K1, K2), 0)
    assert wald > 10 * threshold  # measured: 896 against 16.8


def test_held_distortion_stays_where_it_started():
    C, R, X, oi, op, oxy = scene()
    res = bundle_adjust(R, C, [F * 1.01], [0.0], [0.0], PP, np.zeros(len(C), int), X, oi, op, oxy,
                        gps_enu=C, gps_sigma_h=0.02, gps_sigma_v=0.02, focal_prior=[F], distortion_held=[True])
    assert abs(res.k1[0]) < 1e-5 and abs(res.k2[0]) < 1e-5  # the lens has k1 -0.04: held all the same
    assert res.focal[0] != F * 1.01  # the focal still refines


def test_fixed_images_and_points_stay_put():
    C, R, X, oi, op, oxy = scene()
    C0, R0, X0 = perturbed(C, R, X, pos_m=0.0, rot_deg=0.0, point_m=0.0)
    C0[5] += [0.4, -0.3, 0.2]  # one camera off: only it (and free points) may move
    fixed_images = np.ones(len(C), bool)
    fixed_images[5] = False
    fixed_points = np.zeros(len(X), bool)
    fixed_points[::2] = True
    res = bundle_adjust(R0, C0, [F], [K1], [K2], PP, np.zeros(len(C), int), X0, oi, op, oxy,
                        fixed_images=fixed_images, fixed_points=fixed_points, refine_focal=False,
                        refine_distortion=False)
    others = np.arange(len(C)) != 5
    assert np.array_equal(res.C[others], C0[others]) and np.array_equal(res.R[others], R0[others])
    assert np.array_equal(res.points[fixed_points], X0[fixed_points])
    assert np.linalg.norm(res.C[5] - C[5]) < 0.05  # pulled back by the fixed points
    assert res.focal[0] == F and res.k1[0] == K1


def test_gauge_without_gps_keeps_first_camera_and_baseline():
    C, R, X, oi, op, oxy = scene()
    C0, R0, X0 = perturbed(C, R, X, pos_m=0.2, rot_deg=0.1, point_m=0.2)
    fixed = np.zeros(len(C), bool)
    fixed[0] = True
    baseline = float(np.linalg.norm(C[0] - C[3]))
    res = bundle_adjust(R0, C0, [F], [0.0], [0.0], PP, np.zeros(len(C), int), X0, oi, op, oxy,
                        fixed_images=fixed, scale_anchor=(0, 3, baseline), focal_prior=[F])
    assert np.array_equal(res.C[0], C0[0]) and np.array_equal(res.R[0], R0[0])
    assert abs(np.linalg.norm(res.C[0] - res.C[3]) - baseline) < 1e-3
    assert res.final_rms_px < 0.4


def test_gps_sigmas_are_estimated_robustly():
    rng = np.random.default_rng(4)
    residual = rng.normal(0, 1, (400, 3)) * [2.0, 2.0, 6.0] + [0.5, -0.5, 30.0]  # a vertical datum offset
    residual[:20, 2] += 200.0  # a few wild altitudes
    residual[20:30] = np.nan  # images without GPS
    sigma_h, sigma_v = robust_gps_sigmas(residual)
    assert abs(sigma_h - 2.0) < 0.3 and abs(sigma_v - 6.0) < 1.0
    assert robust_gps_sigmas(np.zeros((10, 3)), floor_h=0.05, floor_v=0.1) == (0.05, 0.1)
    assert robust_gps_sigmas(residual[:2]) is None


def test_unknown_loss_is_a_clear_error():
    C, R, X, oi, op, oxy = scene(rows=1, cols=2, n_points=50)
    with pytest.raises(ValueError, match="unknown robust loss"):
        bundle_adjust(R, C, [F], [0.0], [0.0], PP, np.zeros(len(C), int), X, oi, op, oxy, loss="tukey")



def flight_frames(directions):
    """Per image: columns along track, across track (left), up, for horizontal flight directions (n,2)."""
    d = np.asarray(directions, float)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    zeros = np.zeros(len(d))
    return np.stack([np.column_stack([d, zeros]), np.column_stack([-d[:, 1], d[:, 0], zeros]),
                     np.tile([0.0, 0.0, 1.0], (len(d), 1))], axis=2)


def test_gps_antenna_offset_in_flight_frames_is_estimated():
    """GPS 0.3 m ahead of and 0.4 m beside the camera: flight lines flown both ways flip it in the
    world, so no shift absorbs it; the adjustment recovers it and the centres stay true."""
    C, R, X, oi, op, oxy = scene(rows=2, cols=4)
    frames = flight_frames([[1.0, 0.0]] * 4 + [[-1.0, 0.0]] * 4)  # the second line flown back
    offset = np.array([0.3, -0.4, 0.0])
    gps = C + frames @ offset + np.random.default_rng(6).normal(0, 0.02, C.shape)
    C0, R0, X0 = perturbed(C, R, X, pos_m=0.2, rot_deg=0.1, point_m=0.2)
    kw = dict(gps_enu=gps, gps_sigma_h=0.02, gps_sigma_v=0.02, focal_prior=[F], refine_focal=False,
              refine_distortion=False, max_nfev=100)
    plain = bundle_adjust(R0, C0, [F], [K1], [K2], PP, np.zeros(len(C), int), X0, oi, op, oxy, **kw)
    # Up is a vertical shift of the whole block, which the GPS cannot tell apart: held at 0.
    res = bundle_adjust(R0, C0, [F], [K1], [K2], PP, np.zeros(len(C), int), X0, oi, op, oxy, gps_offset_frames=frames,
                        estimate_gps_offset=True, gps_offset_sigma_m=[1.0, 1.0, 0.001], **kw)
    assert np.abs(res.gps_offset - offset).max() < 0.03
    assert np.linalg.norm(res.C - C, axis=1).max() < 0.08  # 0.1% of the flying height
    assert np.linalg.norm(plain.C - C, axis=1).max() > 0.2  # without it the centres are bent to the antenna
    assert np.array_equal(plain.gps_offset, np.zeros(3))


def test_sparse_reduced_camera_system_agrees_with_the_dense_one(monkeypatch):
    """Above SPARSE_SCHUR_MIN_COLS the reduced camera system is kept sparse and solved by a sparse
    factorisation; on the same problem both paths take the same steps to rounding."""
    from alignkit.core import bundle_solver

    C, R, X, oi, op, oxy = scene(rows=3, cols=4)
    C0, R0, X0 = perturbed(C, R, X)
    sparse_calls = []
    solve = bundle_solver.solve_sparse_spd
    monkeypatch.setattr(bundle_solver, "solve_sparse_spd", lambda S, rhs: sparse_calls.append(S.shape) or solve(S, rhs))
    results = {}
    for path, limit in (("dense", 10**9), ("sparse", 0)):
        monkeypatch.setattr(bundle_solver, "SPARSE_SCHUR_MIN_COLS", limit)
        results[path] = bundle_adjust(
            R0, C0, [F * 0.97], [0.0], [0.0], PP, np.zeros(len(C), int), X0, oi, op, oxy,
            gps_enu=C, gps_sigma_h=0.02, gps_sigma_v=0.02, focal_prior=[F * 0.97], focal_prior_sigma=0.1,
            loss="huber", max_nfev=3)
        assert bool(sparse_calls) == (path == "sparse")  # the sparse path is taken above the limit only
    dense, sparse = results["dense"], results["sparse"]
    assert sparse_calls[0] == (6 * len(C) + 3,) * 2  # 6 per camera + focal, k1, k2
    assert dense.nfev == sparse.nfev
    assert np.abs(dense.C - sparse.C).max() < 1e-9
    assert rotation_error_deg(dense.R, sparse.R).max() < 1e-9
    assert np.abs(dense.points - sparse.points).max() < 1e-9
    assert abs(dense.focal[0] - sparse.focal[0]) < 1e-9 * F
    assert np.linalg.norm(sparse.C - C, axis=1).max() < 0.1  # and it is an adjustment: near the truth


def test_sparse_solver_refuses_a_singular_system():
    from scipy.linalg import LinAlgError
    from scipy.sparse import csr_matrix

    from alignkit.core.bundle_solver import solve_sparse_spd

    S = csr_matrix(np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(LinAlgError):
        solve_sparse_spd(S, np.ones(3))
    assert np.allclose(solve_sparse_spd(csr_matrix(np.diag([2.0, 4.0])), np.array([2.0, 2.0])), [1.0, 0.5])
