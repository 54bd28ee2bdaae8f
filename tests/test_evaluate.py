"""tools/evaluate.py's track-length figures (issue 16: AlignKit's mean track length against COLMAP's)."""
import math

import numpy as np

from alignkit.tools.bench_accuracy import table
from alignkit.tools.evaluate import track_length_stats


def test_track_length_stats_counts_two_photo_points_apart():
    # A block's interior point seen in 8 photos, two in 4, and three edge points seen by two photos:
    # over all points the mean is 3.43; over the 3+ photo points (COLMAP's default set) 5.33.
    stats = track_length_stats([8, 4, 4, 2, 2, 2, 2])
    assert math.isclose(stats["mean_track_length"], 24 / 7)
    assert math.isclose(stats["mean_track_length_3plus"], 16 / 3)
    assert math.isclose(stats["two_view_share"], 4 / 7)


def test_track_length_stats_without_points_or_without_long_tracks():
    assert math.isnan(track_length_stats(np.zeros(0, np.int64))["mean_track_length"])
    stats = track_length_stats([2, 2])
    assert stats["mean_track_length"] == 2.0 and math.isnan(stats["mean_track_length_3plus"])
    assert stats["two_view_share"] == 1.0


def test_bench_table_shows_both_means_and_their_ratio():
    alignkit = {"shape_rms_mm": 1.1, "mean_track_length": 4.59, "mean_track_length_3plus": 5.29, "points": 26120}
    colmap = {"shape_rms_mm": 2.5, "mean_track_length": 5.08, "mean_track_length_3plus": 5.08, "points": 31861}
    ratios = {"mean_track_length": 4.59 / 5.08, "mean_track_length_3plus": 5.29 / 5.08}
    text = table([{"block": "18", "seed": 2, "alignkit": alignkit, "colmap": colmap, "ratios": ratios}])
    row = text.splitlines()[-1]
    assert "4.59 (5.29)" in row and "5.08 (5.08)" in row and "0.90 (1.04)" in row
    # a COLMAP result reused from before the 3+ figure existed still prints
    old = table([{"block": "18", "seed": 2, "alignkit": alignkit, "colmap": {"mean_track_length": 5.08}}])
    assert "5.08 (-)" in old.splitlines()[-1]
