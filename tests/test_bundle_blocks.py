"""Each residual block of the bundle adjustment against finite differences, and the solver's normal
equations with every kind of block (points touched by a prior included) against the sparse product."""
import numpy as np
import pytest

from alignkit.core.bundle import build_problem, bundle_adjust
from alignkit.core.bundle_blocks import GroupPrior, PointPrior
from alignkit.tests.test_bundle import K1, K2, PP, F, flight_frames, perturbed, scene


def small_problem(kind, **extra):
    C, R, X, oi, op, oxy = scene(rows=1, cols=3, n_points=60)
    C0, R0, X0 = perturbed(C, R, X)
    fixed = np.zeros(len(C), bool)
    fixed[1] = True
    gps = C + 0.3
    gps[2] = np.nan
    t = np.array([0.0, 0.5, 1.0])
    opts = {
        "gps": dict(gps_enu=gps, gps_sigma_h=0.7, gps_sigma_v=2.0),
        "focal": dict(focal_prior=[F], focal_prior_sigma=0.03),
        "anchor": dict(scale_anchor=(0, 2, 30.0)),
        "offset": dict(gps_enu=gps, gps_offset=[0.3, -0.5, 0.2], estimate_gps_offset=True,
                       gps_offset_frames=flight_frames([[1, 0], [0.6, 0.8], [-1, 0.1]]), gps_offset_sigma_m=[0.8, 0.8, 0.1]),
        "drift": dict(gps_enu=gps, gps_drift_basis=np.stack([np.zeros((3, 2)), np.zeros((3, 2)),
                                                              np.column_stack([t, t**2])], axis=1),
                      gps_drift=[5.0, -1.0], estimate_gps_drift=True, gps_drift_sigma_m=[50.0, 20.0]),
        "gravity": dict(gravity_up=R[:, :, 2] + np.random.default_rng(2).normal(0, 0.02, (3, 3)),
                        gravity_sigma_rad=[0.05, 0.03, 0.04]),
        "mean_axis": dict(mean_axis=[0.1, 0.0, -1.0], mean_axis_sigma_rad=0.03),
        "point": dict(blocks=[PointPrior([0, 5, 7], X[[0, 5, 7]] + 0.1, [[0.02, 0.02, 0.05]] * 3)]),
        "group": dict(blocks=[GroupPrior("tilt", 2, [0.1, 0.2], mean=[0.05, 0.0])], groups={"tilt": [0.01, 0.02]}),
    }[kind]
    opts.update(extra)
    return build_problem(R0, C0, [F * 1.02], [0.01], [-0.002], PP, np.zeros(len(C), int), X0, oi, op, oxy,
                         fixed_images=fixed, **opts)


KINDS = ["gps", "focal", "anchor", "offset", "drift", "gravity", "mean_axis", "point", "group"]


@pytest.mark.parametrize("kind", KINDS)
def test_block_jacobian_matches_finite_differences(kind):
    x0, residuals, jacobian, _, n_obs_res, _ = small_problem(kind)
    x = x0 + np.random.default_rng(3).normal(0, 1e-3, x0.shape)
    J = jacobian(x).toarray()[n_obs_res:]  # the block's rows (the reprojection block: test_bundle)
    assert J.shape[0] > 0
    numeric = np.empty_like(J)
    for k in range(len(x)):
        step = np.zeros_like(x)
        step[k] = 1e-6
        numeric[:, k] = (residuals(x + step)[n_obs_res:] - residuals(x - step)[n_obs_res:]) / 2e-6
    assert np.abs(J - numeric).max() < 1e-6 * max(np.abs(numeric).max(), 1.0)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("kind", ["point", "gravity", "mean_axis", "drift"])
def test_normal_equations_with_blocks_equal_the_sparse_product(kind, dense):
    x0, residuals, jacobian, _, n_obs_res, n_point_cols = small_problem(kind)
    x = x0 + np.random.default_rng(4).normal(0, 1e-3, x0.shape)
    r = residuals(x)
    sw = np.ones(len(r))
    sw[:n_obs_res] = np.repeat(np.random.default_rng(5).uniform(0.2, 1.0, n_obs_res // 2), 2)
    J = jacobian(x).toarray() * sw[:, None]
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


def test_point_prior_holds_a_point_where_it_was_surveyed():
    """Without GPS, four points held at their true coordinates (5 mm) fix datum and scale: with the
    calibration known, the cameras come out where they truly are, up to the noise."""
    C, R, X, oi, op, oxy = scene(rows=2, cols=4)
    C0, R0, X0 = perturbed(C, R, X, pos_m=0.3, rot_deg=0.2, point_m=0.3)
    seen = np.unique(op)
    corners = [[0, 0], [45, 0], [0, 20], [45, 20]]
    control = np.array([seen[np.argmin(np.linalg.norm(X[seen, :2] - c, axis=1))] for c in corners])
    res = bundle_adjust(R0, C0, [F], [K1], [K2], PP, np.zeros(len(C), int), X0, oi, op, oxy, refine_focal=False,
                        refine_distortion=False, blocks=[PointPrior(control, X[control], 0.005)], max_nfev=100)
    assert np.linalg.norm(res.C - C, axis=1).max() < 0.25  # 0.3 % of the flying height, 4 points in a corner each
    assert np.linalg.norm(res.points[control] - X[control], axis=1).max() < 0.02


def test_gravity_prior_levels_a_block_whose_gps_heights_drift():
    """GPS heights drift linearly in capture time; with the drift estimated, the cameras' recorded
    up directions (1 deg noise) keep the block level and the drift comes out."""
    C, R, X, oi, op, oxy = scene(rows=2, cols=4)
    rng = np.random.default_rng(8)
    t = np.linspace(0.0, 1.0, len(C))
    gps = C + np.column_stack([rng.normal(0, 0.5, (len(C), 2)), 20.0 * t + rng.normal(0, 0.1, len(C))])
    basis = np.zeros((len(C), 3, 1))
    basis[:, 2, 0] = t
    up = np.array([Ri[:, 2] for Ri in R]) + rng.normal(0, np.radians(1.0), (len(C), 3))
    C0, R0, X0 = perturbed(C, R, X, pos_m=0.2, rot_deg=0.1, point_m=0.2)
    res = bundle_adjust(R0, C0, [F], [0.0], [0.0], PP, np.zeros(len(C), int), X0, oi, op, oxy,
                        gps_enu=gps, gps_sigma_h=0.5, gps_sigma_v=0.1, gps_drift_basis=basis, estimate_gps_drift=True,
                        gravity_up=up, gravity_sigma_rad=np.radians(2.0), focal_prior=[F], refine_distortion=False,
                        max_nfev=100)
    assert abs(res.groups["gps_drift"][0] - 20.0) < 1.0
    assert np.abs(res.C[:, 2] - C[:, 2]).max() < 0.5
