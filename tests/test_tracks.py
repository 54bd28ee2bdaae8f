"""Tracks: union of verified matches, splitting of inconsistent tracks, save/load, and geometry."""

import numpy as np
import pytest

from alignkit.core.config import AlignConfig
from alignkit.core.executor import SerialExecutor
from alignkit.core.features import extract_features
from alignkit.core.matching import PairMatches, match_pairs
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth
from alignkit.core.tracks import Tracks, build_tracks


class FakeStore:
    """Three images with 4 features each at known positions and colours."""

    def __len__(self):
        return 3

    def count(self, i):
        return 4

    def keypoints(self, i):
        return np.array([[10.0 * i + f, 100.0 + f] for f in range(4)])

    def keypoint_table(self, i):  # x, y, size, angle: keypoints too small to reach the border
        return np.column_stack([self.keypoints(i), np.full(4, 0.2), np.zeros(4)])

    def image_size(self, i):
        return 1000, 1000

    def colors(self, i):
        return np.array([[10 * i, f, 200] for f in range(4)], np.uint8)


def _pm(i, j, pairs, n_inliers=None):
    m = np.array(pairs, np.int32).reshape(-1, 2)
    return PairMatches(i, j, m, "essential", n_inliers or len(m), None, None)


def _tracks_as_sets(t):
    return sorted(
        tuple(sorted(zip(t.obs_image[t.obs_track == k].tolist(), t.obs_feature[t.obs_track == k].tolist())))
        for k in range(t.n_tracks)
    )


def test_chained_matches_form_one_track_with_positions_and_colour():
    t = build_tracks([_pm(0, 1, [(0, 1), (2, 3)]), _pm(1, 2, [(1, 2)])], FakeStore())
    assert _tracks_as_sets(t) == [((0, 0), (1, 1), (2, 2)), ((0, 2), (1, 3))]
    assert np.all(np.diff(t.obs_track) >= 0)  # sorted by track
    k = t.obs_track[(t.obs_image == 2) & (t.obs_feature == 2)][0]
    np.testing.assert_array_equal(t.obs_xy[t.obs_track == k], [[0.0, 100.0], [11.0, 101.0], [22.0, 102.0]])
    np.testing.assert_array_equal(t.track_rgb[k], [10, 1, 200])  # mean of (0,0,200), (10,1,200), (20,2,200)
    np.testing.assert_array_equal(t.lengths()[k], 3)


def test_inconsistent_track_is_split_at_the_weakest_pair():
    # 0:0 - 1:0 - 2:0 and a wrong match 2:0 - 0:1 closing the loop onto a second feature of image 0.
    pairs = [
        _pm(0, 1, [(0, 0)], n_inliers=500),
        _pm(1, 2, [(0, 0)], n_inliers=400),
        _pm(0, 2, [(1, 0), (3, 3)], n_inliers=40),
    ]
    t = build_tracks(pairs, FakeStore())
    for k in range(t.n_tracks):  # no track sees one image twice
        images = t.obs_image[t.obs_track == k]
        assert len(np.unique(images)) == len(images)
    tracks = _tracks_as_sets(t)
    assert ((0, 0), (1, 0), (2, 0)) in tracks  # the strong chain survives whole
    assert ((0, 3), (2, 3)) in tracks  # consistent tracks of the weak pair are untouched
    assert not any((0, 1) in tr for tr in tracks)  # the wrong match's feature is left alone, a singleton


class TwinStore(FakeStore):
    """As FakeStore, but features 1 and 3 of every image sit where feature 0 / 2 sit (SIFT's second
    orientation of one keypoint: same position and colour, another descriptor)."""

    def keypoints(self, i):
        xy = super().keypoints(i)
        xy[1], xy[3] = xy[0], xy[2]
        return xy

    def colors(self, i):
        rgb = super().colors(i)
        rgb[1], rgb[3] = rgb[0], rgb[2]
        return rgb


def test_features_at_one_position_are_one_point():
    # The twins (0, 1) of each image match pairwise: one ground point, not two tracks with the same
    # observations; and twins that matched different photos join into one longer track.
    t = build_tracks([_pm(0, 1, [(0, 0), (1, 1)]), _pm(1, 2, [(1, 1)]), _pm(0, 2, [(2, 2)]), _pm(1, 2, [(3, 3)])],
                     TwinStore())
    assert _tracks_as_sets(t) == [((0, 0), (1, 0), (2, 0)), ((0, 2), (1, 2), (2, 2))]
    positions = {tuple(map(tuple, t.obs_xy[t.obs_track == k])) for k in range(t.n_tracks)}
    assert len(positions) == t.n_tracks


def test_save_and_load_round_trip(tmp_path):
    t = build_tracks([_pm(0, 1, [(0, 1), (2, 3)]), _pm(1, 2, [(1, 2)])], FakeStore())
    t.save(tmp_path / "tracks.npz")
    u = Tracks.load(tmp_path / "tracks.npz")
    for name in ("obs_track", "obs_image", "obs_feature", "obs_xy", "track_rgb"):
        np.testing.assert_array_equal(getattr(t, name), getattr(u, name))
        assert getattr(t, name).dtype == getattr(u, name).dtype


def test_keypoints_reaching_the_border_leave_their_tracks():
    """An observation within BORDER_SIZES keypoint sizes of the border leaves its track (its position is
    biased inward); the track keeps its other photos, or goes when fewer than two remain."""

    class BorderStore(FakeStore):
        def keypoint_table(self, i):
            table = super().keypoint_table(i)
            if i == 1:
                table[:2, 2] = 150.0  # features 0 and 1 of image 1 (x 10-11): their size reaches the border
            return table

    t = build_tracks([_pm(0, 1, [(0, 0), (1, 1), (2, 2)]), _pm(1, 2, [(0, 0)])], BorderStore())
    assert _tracks_as_sets(t) == [((0, 0), (2, 0)), ((0, 2), (1, 2))]
    np.testing.assert_array_equal(t.lengths(), [2, 2])
    every = build_tracks([_pm(0, 1, [(0, 0), (1, 1), (2, 2)]), _pm(1, 2, [(0, 0)])], BorderStore(), border_sizes=0)
    assert _tracks_as_sets(every) == [((0, 0), (1, 0), (2, 0)), ((0, 1), (1, 1)), ((0, 2), (1, 2))]


def test_no_matches_give_no_tracks():
    t = build_tracks([], FakeStore())
    assert t.n_tracks == 0 and t.obs_xy.shape == (0, 2)


@pytest.mark.slow
def test_tracks_of_a_synthetic_survey_triangulate_consistently(tmp_path):
    """Every long track is one ground point: triangulated with the TRUE cameras it reprojects within a pixel."""
    spec = SurveySpec(rows=2, cols=3, width=640, height=480, overlap=0.75, sidelap=0.6, seed=9)
    out = generate_survey(tmp_path / "survey", spec)
    gt = load_ground_truth(out)
    paths = sorted((out / "images").glob("*.jpg"))
    cfg = AlignConfig(max_image_size=640, max_features=2000, workers=1, min_inliers=20)
    store = extract_features(paths, tmp_path / "ws", cfg, SerialExecutor())
    n = len(paths)
    matches = match_pairs(
        store, [(i, j) for i in range(n) for j in range(i + 1, n)], gt["K"], cfg, SerialExecutor()
    )
    t = build_tracks(matches, store)
    lengths = t.lengths()
    assert t.n_tracks > 500 and (lengths >= 3).sum() > 200
    P = [gt["K"][i] @ np.column_stack([gt["R"][i], -gt["R"][i] @ gt["C"][i]]) for i in range(n)]
    errors = []
    for k in np.flatnonzero(lengths >= 3)[:300]:
        sel = t.obs_track == k
        rows = []
        for i, (x, y) in zip(t.obs_image[sel], t.obs_xy[sel]):
            rows += [x * P[i][2] - P[i][0], y * P[i][2] - P[i][1]]
        X = np.linalg.svd(np.array(rows))[2][-1]
        for i, xy in zip(t.obs_image[sel], t.obs_xy[sel]):
            p = P[i] @ X
            errors.append(np.linalg.norm(p[:2] / p[2] - xy))
    errors = np.array(errors)
    # One image point is one node: no track shares an observation's (image, position) with another.
    keys = np.column_stack([t.obs_image, t.obs_xy])
    assert len(np.unique(keys, axis=0)) == len(keys)
    assert np.median(errors) < 0.5 and np.mean(errors < 2.0) > 0.97
