"""Ground footprints against hand-computed geometry and against OpenCV's own projection."""
import math

import cv2
import numpy as np
import pytest

from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.footprints import (
    coverage_grid,
    coverage_stats,
    flight_area,
    ground_footprint,
    gsd_cm,
    image_border,
    polygon_area,
)

K = np.array([[1000.0, 0.0, 499.5], [0.0, 1000.0, 374.5], [0.0, 0.0, 1.0]])  # 1000 x 750 px


def test_nadir_footprint_is_the_scaled_image_rectangle():
    # 100 m above the ground, f = 1000 px: 1000 x 750 px cover 100 x 75 m, top edge to the north.
    poly = ground_footprint(K, rotation_from_gimbal(0, -90, 0), [10.0, 20.0, 130.0], 30.0, 1000, 750,
                            samples_per_edge=1)
    assert poly == pytest.approx(np.array([[-40, 57.5, 30], [60, 57.5, 30], [60, -17.5, 30], [-40, -17.5, 30]]),
                                 abs=1e-9)
    assert polygon_area(poly[:, :2]) == pytest.approx(7500.0)


def test_yaw_turns_the_footprint_clockwise():
    # Heading east: the image top (100 m wide edge) lies east of the camera.
    poly = ground_footprint(K, rotation_from_gimbal(90, -90, 0), [0, 0, 100], 0.0, 1000, 750, samples_per_edge=1)
    assert poly[:, :2] == pytest.approx(np.array([[37.5, 50], [37.5, -50], [-37.5, -50], [-37.5, 50]]), abs=1e-9)


def test_oblique_footprint_matches_trigonometry():
    # Pitch -60: the optical axis 30 degrees off nadir toward the north.
    h = 50.0
    poly = ground_footprint(K, rotation_from_gimbal(0, -60, 0), [0, 0, h], 0.0, 1000, 750, samples_per_edge=2)
    half_v = math.atan(375.0 / 1000.0)  # half vertical angle to the pixel edge
    near, far = h * math.tan(math.radians(30) - half_v), h * math.tan(math.radians(30) + half_v)
    # samples_per_edge=2: index 1 is the middle of the top edge, index 5 the middle of the bottom edge.
    assert poly[1, :2] == pytest.approx([0.0, far], abs=1e-9)
    assert poly[5, :2] == pytest.approx([0.0, near], abs=1e-9)
    assert np.all(poly[:, 2] == 0.0)


def test_rays_that_miss_the_ground_give_none():
    assert ground_footprint(K, rotation_from_gimbal(0, 0, 0), [0, 0, 100], 0.0, 1000, 750) is None  # horizon
    assert ground_footprint(K, rotation_from_gimbal(0, -90, 0), [0, 0, 100], 150.0, 1000, 750) is None  # above


def test_distorted_footprint_projects_back_onto_the_image_border():
    R = rotation_from_gimbal(30, -80, 2)
    C = np.array([5.0, -3.0, 80.0])
    dist = (-0.12, 0.05)
    poly = ground_footprint(K, R, C, 0.0, 1000, 750, dist=dist, samples_per_edge=6)
    rvec, _ = cv2.Rodrigues(R)
    pixels, _ = cv2.projectPoints(poly, rvec, -R @ C, K, np.array([dist[0], dist[1], 0.0, 0.0]))
    assert pixels.reshape(-1, 2) == pytest.approx(image_border(1000, 750, 6), abs=1e-3)


def test_image_border_runs_around_the_pixel_edges():
    border = image_border(4, 3, samples_per_edge=2)
    assert border.tolist() == [[-0.5, -0.5], [1.5, -0.5], [3.5, -0.5], [3.5, 1.0], [3.5, 2.5], [1.5, 2.5],
                               [-0.5, 2.5], [-0.5, 1.0]]


def _nadir_strip(n, spacing, height=100.0):
    """n nadir 1000 x 750 px photos, f = 1000 px, `height` m above z = 0, `spacing` m apart eastward."""
    return [ground_footprint(K, rotation_from_gimbal(0, -90, 0), [spacing * k, 0.0, height], 0.0, 1000, 750,
                             samples_per_edge=1) for k in range(n)]


def test_gsd_is_height_times_pixel_pitch_over_focal():
    assert gsd_cm(100.0, 1000.0) == pytest.approx(10.0)
    # a 1-inch 5472 px wide sensor (2.41 um pixels), 8.8 mm lens, 100 m up: 2.74 cm/px
    pitch_mm, focal_mm = 13.2 / 5472, 8.8
    assert gsd_cm(100.0, focal_mm / pitch_mm) == pytest.approx(100.0 * 100.0 * pitch_mm / focal_mm)


def test_coverage_of_a_strip_of_overlapping_footprints():
    # Six 100 x 75 m footprints 10 m apart: the union is 150 x 75 m; along it, 15 slices of 10 m seen by
    # 1,2,3,4,5,6,6,6,6,6,5,4,3,2,1 photos: median 4, 8 of 15 slices below 5 photos.
    rings = [p[:, :2] for p in _nadir_strip(6, 10.0)]
    stats = coverage_stats(rings)
    assert stats["area_covered_m2"] == pytest.approx(150.0 * 75.0, rel=0.01)
    assert stats["overlap_median"] == 4
    assert stats["area_below_5_photos_percent"] == pytest.approx(100.0 * 8 / 15, abs=1.0)
    counts, extent = coverage_grid(rings, cells=150)  # 1 m cells
    assert counts.max() == 6 and (extent[1] - extent[0]) == pytest.approx(150.0)
    assert stats["overlap_median_flight_area"] is None  # no flight area given
    assert set(coverage_stats([]).values()) == {None}
    # A single strip has no area between flight lines.
    assert flight_area([[10.0 * k, 0.0] for k in range(6)]) is None


def test_overlap_under_the_flight_lines_leaves_out_the_rim():
    # Two strips of six 100 x 75 m footprints, cameras 10 m apart along x and the strips 40 m apart in y.
    # Under the flight lines (x 0..50, y 0..40) each of a strip's footprints reaches every x (|x - 10k| <= 50);
    # strip A reaches y <= 37.5 and strip B y >= 2.5: 12 photos over 35/40 of that area, 6 over the rest.
    a = _nadir_strip(6, 10.0)
    b = [p + np.array([0.0, 40.0, 0.0]) for p in a]
    centres = [[10.0 * k, y] for y in (0.0, 40.0) for k in range(6)]
    hull = flight_area(centres)
    assert polygon_area(hull) == pytest.approx(50.0 * 40.0)
    stats = coverage_stats([p[:, :2] for p in a + b], inner=hull)
    assert stats["overlap_median_flight_area"] == 12
    assert stats["overlap_median"] < 12  # the rim pulls the whole area's median down


def test_coverage_counts_an_l_shaped_union_once():
    # Two 20 m squares overlapping on a 10 x 10 m corner: 400 + 400 - 100 m2, each cell counted once.
    a = np.array([[0, 0], [20, 0], [20, 20], [0, 20]], float)
    b = a + 10.0
    stats = coverage_stats([a, b], cells=400)
    assert stats["area_covered_m2"] == pytest.approx(700.0, rel=0.01)
    assert stats["overlap_median"] == 1 and stats["area_below_5_photos_percent"] == 100.0


class _Photo:
    def __init__(self, name):
        self.name, self.width, self.height = name, 1000, 750

    def K(self):
        return K


def test_final_footprints_carry_gsd_and_area_and_the_summary_the_coverage():
    from alignkit.core.export import _coverage_summary, _footprints, _footprints_layer
    from alignkit.core.reconstruction import Reconstruction

    # Six nadir photos 120 m above a ground at z = 20 (100 m below them), f = 1000 px, 10 m apart.
    n = 6
    R = np.repeat(rotation_from_gimbal(0, -90, 0)[None], n, axis=0)
    C = np.array([[10.0 * k, 0.0, 120.0] for k in range(n)])
    pts = np.column_stack([np.linspace(-30, 80, 40), np.zeros(40), np.full(40, 20.0)])
    obs_point = np.repeat(np.arange(40), n)
    obs_image = np.tile(np.arange(n), 40)
    recon = Reconstruction(
        registered=np.ones(n, bool), component=np.zeros(n, int), R=R, C=C, focal=np.full(n, 1000.0),
        k1=np.zeros(n), k2=np.zeros(n), points=pts, point_track=np.arange(40), point_rgb=np.zeros((40, 3), np.uint8),
        point_error_px=np.full(40, 0.3), point_component=np.zeros(40, int), n_obs=np.bincount(obs_image),
        reproj_rmse_px=np.full(n, 0.3), gps_residual=np.zeros((n, 3)), gps_sigma_h_m=1.0, gps_sigma_v_m=1.0,
        mean_reproj_px=0.3, obs_point=obs_point, obs_image=obs_image,
        obs_xy=np.column_stack([obs_point, obs_image]).astype(float), georeferenced=True)
    fps = _footprints([_Photo(f"P{k}") for k in range(n)], recon)
    layer = _footprints_layer(fps, lambda enu: np.atleast_2d(enu).copy())
    attrs = [a for _, a in layer.features]
    assert [a["image"] for a in attrs] == [f"P{k}" for k in range(n)]
    assert all(a["gsd_cm"] == pytest.approx(10.0) and a["area_m2"] == pytest.approx(7500.0) for a in attrs)
    assert all(a["ground_z"] == pytest.approx(20.0) for a in attrs)
    summary = _coverage_summary(fps)
    assert summary["gsd_cm_median"] == pytest.approx(10.0)
    assert summary["area_covered_m2"] == pytest.approx(150.0 * 75.0, rel=0.01)
    assert summary["overlap_median"] == 4
    # Without GPS the frame's scale is arbitrary: no lengths or areas, the overlap still counts.
    local = _coverage_summary(fps, metric=False)
    assert local["gsd_cm_median"] is None and local["area_covered_m2"] is None and local["overlap_median"] == 4
    assert all(a["gsd_cm"] is None and a["area_m2"] is None
               for _, a in _footprints_layer(fps, lambda e: np.atleast_2d(e), metric=False).features)
