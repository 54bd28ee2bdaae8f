"""Ground footprints against hand-computed geometry and against OpenCV's own projection."""
import math

import cv2
import numpy as np
import pytest

from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.footprints import ground_footprint, image_border, polygon_area

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
