"""Residual grid on the sensor and the distortion curve, against a camera with a known injected distortion."""
import numpy as np
import pytest

from alignkit.core.bundle import project
from alignkit.core.residual_grid import distortion_curve, residual_grid

W, H, F = 1200, 900, 1000.0
K1_TRUE = -0.05


def _nadir_block(k1_true, n_images=3, n_points=40000, noise_px=0.0, seed=3):
    """Observations of random ground points made by nadir cameras with radial distortion k1_true."""
    rng = np.random.default_rng(seed)
    R = np.tile(np.diag([1.0, -1.0, -1.0]), (n_images, 1, 1))  # looking straight down
    C = np.column_stack([np.arange(n_images) * 5.0, np.zeros(n_images), np.full(n_images, 100.0)])
    pp = np.tile([(W - 1) / 2.0, (H - 1) / 2.0], (n_images, 1))
    focal = np.full(n_images, F)
    # Ground points over more than the field of view (the camera sees 120 x 90 m from 100 m).
    pts = np.column_stack([rng.uniform(-80, 90, n_points), rng.uniform(-60, 60, n_points), np.zeros(n_points)])
    obs_image = np.repeat(np.arange(n_images), n_points)
    obs_point = np.tile(np.arange(n_points), n_images)
    uv, _ = project(R[obs_image], C[obs_image], focal[obs_image], np.full(len(obs_image), k1_true),
                    np.zeros(len(obs_image)), pp[obs_image], pts[obs_point])
    uv += rng.normal(0.0, noise_px, uv.shape) if noise_px else 0.0
    on = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    return R, C, focal, pp, pts, obs_image[on], obs_point[on], uv[on]


def _undistorted_radius(r_d, k1):
    r = r_d
    for _ in range(50):  # fixed point of r (1 + k1 (r / F)^2) = r_d
        r = r_d / (1.0 + k1 * (r / F) ** 2)
    return r


def test_unmodelled_barrel_distortion_points_inward_with_its_size_at_the_corners():
    R, C, focal, pp, pts, oi, op, xy = _nadir_block(K1_TRUE)
    zeros = np.zeros(len(focal))
    grid = residual_grid(R, C, focal, zeros, zeros, pp, pts, oi, op, xy, W, H)  # evaluated with k1 = 0
    assert grid["cells"] == [8, 6] and len(grid["dx"]) == 48
    x, y = np.array(grid["x"]), np.array(grid["y"])
    d = np.column_stack([grid["dx"], grid["dy"]]).astype(float)
    centre = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    radial = np.column_stack([x, y]) - centre
    r_d = np.linalg.norm(radial, axis=1)
    corners = [0, 7, 40, 47]  # row-major 8 x 6: the four corner cells
    for c in corners:
        assert grid["count"][c] > 50
        # observed minus projected: a barrel distortion pulls the observations towards the centre
        expected = r_d[c] - _undistorted_radius(r_d[c], K1_TRUE)  # negative, about -17 px
        along = d[c] @ radial[c] / r_d[c]
        across = abs(d[c, 0] * radial[c, 1] - d[c, 1] * radial[c, 0]) / r_d[c]
        assert expected < -10
        assert along == pytest.approx(expected, rel=0.10)
        assert across < 0.1 * abs(expected)
    # Everywhere the mean vector points inward and follows the distortion's growth with the radius.
    along_all = np.einsum("ij,ij->i", d, radial) / r_d
    assert (along_all < 0).all()
    expected_all = r_d - _undistorted_radius(r_d, K1_TRUE)
    assert np.corrcoef(expected_all, along_all)[0, 1] > 0.99


def test_modelled_distortion_leaves_only_noise_and_empty_cells_are_none():
    R, C, focal, pp, pts, oi, op, xy = _nadir_block(K1_TRUE, n_points=20000, noise_px=0.5)
    k1 = np.full(len(focal), K1_TRUE)
    grid = residual_grid(R, C, focal, k1, np.zeros(len(focal)), pp, pts, oi, op, xy, W, H)
    d = np.column_stack([grid["dx"], grid["dy"]]).astype(float)
    assert np.abs(d).max() < 0.2  # 0.5 px noise averaged over hundreds of observations per cell
    assert sum(grid["count"]) == len(oi)
    keep = xy[:, 0] < W / 2  # only the left half of the sensor observed
    half = residual_grid(R, C, focal, k1, np.zeros(len(focal)), pp, pts, oi[keep], op[keep], xy[keep], W, H)
    assert all(v is None for k, v in enumerate(half["dx"]) if k % 8 >= 4)
    assert all(n == 0 for k, n in enumerate(half["count"]) if k % 8 >= 4)


def test_distortion_curve_at_a_known_radius():
    r, disp = distortion_curve(2000.0, -0.1, 0.02, 4000, 3000, samples=251)
    assert r[0] == 0.0 and disp[0] == 0.0
    assert r[-1] == pytest.approx(2500.0)  # the image corner
    # at r = f: r_n = 1, displacement = f (k1 + k2) = -160 px
    assert np.interp(2000.0, r, disp) == pytest.approx(2000.0 * (-0.1 + 0.02), rel=1e-3)
    # at the corner: r_n = 1.25
    assert disp[-1] == pytest.approx(2500.0 * (-0.1 * 1.25**2 + 0.02 * 1.25**4))


class _Photo:
    def __init__(self, key, width, height):
        self.camera_key, self.width, self.height = key, width, height

    def K(self):  # noqa: N802
        return np.array([[F, 0, (self.width - 1) / 2.0], [0, F, (self.height - 1) / 2.0], [0, 0, 1.0]])


def test_one_grid_per_camera_model_of_the_registered_photos():
    from types import SimpleNamespace

    from alignkit.core.residual_grid import residual_grids

    R, C, focal, pp, pts, oi, op, xy = _nadir_block(K1_TRUE, n_images=3, n_points=5000)
    usable = [_Photo("cam A", W, H), _Photo("cam B", W, H), _Photo("cam C", W, H)]
    # image 1 (cam B) holds k1 = K1_TRUE, image 0 (cam A) lacks it; cam C is not registered
    recon = SimpleNamespace(R=R, C=C, focal=focal, k1=np.array([0.0, K1_TRUE, 0.0]), k2=np.zeros(3),
                            points=pts, obs_image=oi, obs_point=op, obs_xy=xy,
                            registered=np.array([True, True, False]))
    grids = residual_grids(usable, recon)
    assert [g["camera"] for g in grids] == ["cam A", "cam B"]
    a, b = (np.hypot(np.array(g["dx"], float), np.array(g["dy"], float)) for g in grids)
    assert sum(grids[0]["count"]) == (oi == 0).sum() and sum(grids[1]["count"]) == (oi == 1).sum()
    assert a.max() > 10 and b.max() < 1e-6  # the model without the distortion shows it, the other does not
