"""The georeferencing sanity checks speak up with numbers: a nadir block tilted by 40 degrees (what a
drifting GPS altitude did to a real 75-photo block, issue 11) is named as such; a level one is not."""
from types import SimpleNamespace

import numpy as np
from scipy.spatial.transform import Rotation

from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.sanity import robust_plane, sanity_checks


def block(tilt_deg, n=20, seed=0):
    """A nadir block (cameras 1 deg jitter) over flat ground, then the whole block tilted about north."""
    rng = np.random.default_rng(seed)
    C = np.column_stack([rng.uniform(0, 100, n), rng.uniform(0, 60, n), np.full(n, 60.0)])
    R = np.array([rotation_from_gimbal(rng.uniform(0, 360), -90 + rng.normal(0, 1), rng.normal(0, 1)) for _ in C])
    X = np.column_stack([rng.uniform(-20, 120, (500, 2)), rng.normal(0, 0.3, 500)])
    tilt = Rotation.from_euler("y", tilt_deg, degrees=True).as_matrix()
    t = np.arange(n, dtype=float) * 2.0
    recon = SimpleNamespace(
        registered=np.ones(n, bool), component=np.zeros(n, int), R=R @ tilt.T, C=C @ tilt.T, points=X @ tilt.T,
        point_component=np.zeros(500, int), georeferenced=True, vertical_source="", gps_drift_flights=[],
        gps_residual=np.column_stack([rng.normal(0, 1, (n, 2)), 0.05 * (t - t.mean()) + rng.normal(0, 0.2, n)]),
        gps_drift=np.zeros((n, 3)), gps_sigma_h_m=1.0, gps_sigma_v_m=0.2)
    usable = [SimpleNamespace(rel_alt=60.0) for _ in range(n)]
    return recon, usable, t


def test_a_tilted_nadir_block_is_named_with_its_numbers():
    recon, usable, t = block(40.0)
    figures, warnings = sanity_checks(recon, usable, t)
    assert 38.0 < figures["off_nadir_median_deg"] < 42.0
    assert abs(figures["ground_slope_deg"] - 40.0) < 0.5
    assert any("point 40 deg off nadir" in w for w in warnings)
    assert any("slopes 40." in w for w in warnings)
    # the vertical GPS residuals trend by 0.05 m/s x 38 s = 1.9 m, within max(3 sigma, 2 m): not flagged
    assert abs(figures["gps_residual_trend_m"][0]["up_m"] - 1.9) < 0.3
    assert not any("trend" in w for w in warnings)


def test_a_level_block_passes_and_an_untold_drift_is_flagged():
    recon, usable, t = block(0.0)
    recon.gps_residual[:, 2] += 0.3 * t  # 11.4 m over the flight (13.3 m with the 1.9 m already there)
    figures, warnings = sanity_checks(recon, usable, t)
    assert figures["off_nadir_median_deg"] < 3.0 and figures["ground_slope_deg"] < 0.5
    assert figures["relative_altitude_median_m"] == 60.0
    [w] = warnings
    assert "trend by +13." in w and "(up)" in w


def test_robust_plane_ignores_outliers():
    xy = np.random.default_rng(2).uniform(0, 50, (300, 2))
    z = np.tan(np.radians(5.0)) * xy[:, 1]
    z[:20] += 30.0  # trees
    slope, spread = robust_plane(np.column_stack([xy, z]))
    assert abs(slope - 5.0) < 0.01 and spread < 1e-6
