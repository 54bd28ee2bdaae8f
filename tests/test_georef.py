"""Georeferencing that a drifting GPS cannot tilt (issue 11): attitude priors, GPS drift in capture
time, checked against synthetic ground truth (tracks projected from known cameras, no images)."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.config import AlignConfig
from alignkit.core.georef import (
    capture_seconds,
    drift_basis,
    flights_from_times,
    levelled_fit,
    off_nadir_deg,
    plane_fit,
    recorded_up,
    rotation_onto_up,
)
from alignkit.core.reconstruction import reconstruct, umeyama
from alignkit.tests.test_reconstruction import cameras_for, survey


def tilt_deg(rot):
    """How far a rotation tips the vertical (deg)."""
    return float(np.degrees(np.arccos(np.clip(rot[2, 2], -1.0, 1.0))))


def drifting_survey(drift_m, records, seed=3, rows=4, cols=6, noise_h=3.0, east_drift_m=0.0):
    """A lawnmower block, horizontal GPS noise 3 m, vertical 1 m plus drift_m (and east_drift_m east)
    linear in capture time (photos 2 s apart); recorded attitude (gravity direction, 1 deg noise) when
    `records`."""
    truth = survey(rows=rows, cols=cols, gps_noise_h=noise_h, gps_noise_v=1.0, seed=seed)
    n = len(truth.C)
    t = 2.0 * np.arange(n)
    gps = truth.gps.copy()
    gps[:, 2] += drift_m * t / t[-1]
    gps[:, 0] += east_drift_m * t / t[-1]
    cams = cameras_for(n)
    rng = np.random.default_rng(seed + 10)
    for i, c in enumerate(cams):
        c["capture_s"] = t[i]
        if records:
            c["up_cam"] = Rotation.from_rotvec(rng.normal(0, np.radians(1.0), 3)).as_matrix() @ truth.R[i][:, 2]
    rec = reconstruct(truth.tracks, cams, gps, None, AlignConfig(seed=1))
    return truth, rec


def ground_tilt_deg(rec, truth):
    """Tilt of the similarity taking the sparse points onto their true positions."""
    return tilt_deg(umeyama(rec.points, truth.X[rec.point_track])[1])


@pytest.mark.parametrize("records", [True, False], ids=["attitude records", "nadir geometry"])
def test_drifting_gps_altitude_does_not_tilt_the_block(records):
    truth, rec = drifting_survey(100.0, records)
    assert rec.registered.all()
    reg = rec.registered
    attitude_err = np.degrees(Rotation.from_matrix(rec.R[reg] @ np.transpose(truth.R[reg], (0, 2, 1))).magnitude())
    tilt = ground_tilt_deg(rec, truth)
    drift = rec.gps_drift_flights[0]
    print(f"attitude error max {attitude_err.max():.2f} deg, ground tilt {tilt:.2f} deg, "
          f"drift {drift['vertical_drift_m']:.1f} m of 100, vertical from {rec.vertical_source}")
    assert rec.vertical_source == ("attitude records" if records else "nadir geometry")
    assert attitude_err.max() < 3.0
    assert tilt < (0.5 if records else 2.0)
    assert drift["modelled"] and abs(drift["vertical_drift_m"] - 100.0) < 10.0
    assert any("drift with capture time" in line for line in rec.log)
    # heights tied to the first fix: the cameras' heights are true to the GPS noise, not 50 m off
    assert abs(np.median(rec.C[reg, 2] - truth.C[reg, 2])) < 2.0


def test_a_horizontal_drift_is_estimated_too():
    """With the altitude drifting, an east drift of 5 m over the flight (GPS noise 0.5 m) comes out
    beside it, in part: held by a 2 m prior (weaker than the vertical's), and with lines flown one
    after another northwards, an east drift in time is much like a turn of the block (measured 3.7 m)."""
    truth, rec = drifting_survey(50.0, True, noise_h=0.5, east_drift_m=5.0)
    drift = rec.gps_drift_flights[0]
    assert drift["modelled"] and abs(drift["vertical_drift_m"] - 50.0) < 5.0
    assert 2.5 < drift["east_drift_m"] < 6.0 and abs(drift["north_drift_m"]) < 1.0
    assert ground_tilt_deg(rec, truth) < 0.5


def test_without_drift_none_is_modelled():
    """Consistent GPS: the plain GPS fit stands (the GPS-limited tilt, 0.66 deg here before and after),
    no drift is invented."""
    truth, rec = drifting_survey(0.0, True)
    assert rec.registered.all()
    assert not rec.gps_drift_flights[0]["modelled"]
    assert np.all(rec.gps_drift[rec.registered] == 0.0)
    assert not any("levelled" in line or "drift with capture time" in line for line in rec.log)
    assert ground_tilt_deg(rec, truth) < 1.0


def test_levelled_fit_recovers_similarity_and_drift():
    rng = np.random.default_rng(0)
    src = np.column_stack([rng.uniform(-50, 50, (30, 2)), rng.normal(0, 1, 30)])
    rot = Rotation.from_euler("zyx", [30.0, 4.0, -3.0], degrees=True).as_matrix()  # tilted block frame
    truth_rot = Rotation.from_euler("z", 75.0, degrees=True).as_matrix()
    world = 1.7 * src @ truth_rot.T + [10.0, -5.0, 80.0]
    block = (world - [10.0, -5.0, 80.0]) @ rot.T / 1.7  # the block in an arbitrary tilted frame
    up_block = rot @ [0.0, 0.0, 1.0]
    tau = np.linspace(0, 1, 30)
    gps = world + np.column_stack([np.zeros((30, 2)), 60.0 * tau])
    (s, R, t), res, keep, drift = levelled_fit(block, up_block, gps, tau[:, None])
    assert abs(s - 1.7) < 1e-9 and abs(drift[0] - 60.0) < 1e-6
    assert np.abs(s * block @ R.T + t - world).max() < 1e-6 and np.abs(res).max() < 1e-6


def test_flights_drift_basis_and_helpers():
    t = np.array([0.0, 2.0, 4.0, np.nan, 600.0, 602.0, 606.0])
    flight = flights_from_times(t)
    assert flight.tolist() == [0, 0, 0, -1, 1, 1, 1]
    basis, labels = drift_basis(t, flight, degree=2, horizontal=False)
    assert labels == [(0, "up", 1), (0, "up", 2), (1, "up", 0), (1, "up", 1), (1, "up", 2)]  # no constant: datum
    assert np.allclose(basis[:, 2, 0], [0, 0.5, 1, 0, 0, 0, 0]) and np.allclose(basis[4:, 2, 3], [0, 1 / 3, 1])
    assert np.all(basis[:, :2] == 0)
    basis, labels = drift_basis(t, flight, degree=1)
    assert labels == [(0, "up", 1), (0, "east", 1), (0, "north", 1), (1, "up", 0), (1, "up", 1), (1, "east", 1),
                      (1, "north", 1)]
    assert np.allclose(basis[:, 0, 1], [0, 0.5, 1, 0, 0, 0, 0]) and np.all(basis[:, 1:, 1] == 0)
    v = np.array([0.3, -0.2, 0.9])
    assert np.allclose(rotation_onto_up(v) @ (v / np.linalg.norm(v)), [0, 0, 1])
    assert np.allclose(rotation_onto_up([0, 0, -1.0]) @ [0, 0, -1.0], [0, 0, 1])
    nadir = type("P", (), {"gimbal_pitch": -90.0, "gimbal_roll": 0.0, "capture_time": "2024-06-15T10:00:05"})()
    assert np.allclose(recorded_up(nadir), [0, 0, -1])  # up is behind a camera looking down
    tilted = type("P", (), {"gimbal_pitch": -80.0, "gimbal_roll": 0.0})()
    assert np.isclose(np.degrees(np.arccos(-recorded_up(tilted)[2])), 10.0)
    assert capture_seconds(nadir) - capture_seconds(type("P", (), {"capture_time": "2024-06-15T10:00:00"})()) == 5.0
    assert recorded_up(type("P", (), {"gimbal_pitch": None})()) is None
    R = np.array([rotation_from_gimbal(yaw, -90.0 + tilt, 0.0) for yaw, tilt in ((0, 0), (90, 5), (200, 12))])
    assert np.allclose(off_nadir_deg(R), [0, 5, 12])
    xy = np.random.default_rng(1).uniform(-20, 20, (200, 2))
    slope, normal, spread = plane_fit(np.column_stack([xy, np.tan(np.radians(7.0)) * xy[:, 0] + 3.0]))
    assert abs(slope - 7.0) < 1e-9 and spread < 1e-9


def test_attitude_records_that_contradict_a_consistent_gps_are_dropped():
    """Records biased by 8 deg (a camera mount offset) on a block whose GPS is consistent (no drift): the
    GPS vertical stands, the log says why, and no drift is invented."""
    truth = survey(rows=4, cols=6, gps_noise_h=1.0, gps_noise_v=0.3, seed=3)
    cams = cameras_for(len(truth.C))
    bias = Rotation.from_euler("x", 8.0, degrees=True).as_matrix()
    for i, c in enumerate(cams):
        c["capture_s"] = 2.0 * i
        c["up_cam"] = truth.R[i] @ bias @ [0.0, 0.0, 1.0]  # the world's up, seen through a tilted mount
    rec = reconstruct(truth.tracks, cams, truth.gps, None, AlignConfig(seed=1))
    assert rec.registered.all()
    assert any("disagree with the GPS by" in line for line in rec.log)
    assert not rec.gps_drift_flights[0]["modelled"]
    assert ground_tilt_deg(rec, truth) < 0.5
