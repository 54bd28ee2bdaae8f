"""Candidate pairs: GPS neighbours and footprint overlap on synthetic layouts; no-GPS strategies."""

import numpy as np
import pytest

from alignkit.core.config import AlignConfig
from alignkit.core.pairs import candidate_pairs, gps_pairs, sequential_pairs, similar_pairs


def _grid(rows, cols, spacing_x, spacing_y, rng=None, jitter=0.0):
    e, n = np.meshgrid(np.arange(cols) * spacing_x, np.arange(rows) * spacing_y)
    pos = np.column_stack([e.ravel(), n.ravel(), np.full(e.size, 50.0)])
    if rng is not None:
        pos[:, :2] += rng.normal(0, jitter, (len(pos), 2))
    return pos


def test_grid_pairs_hold_true_neighbours_and_no_far_images():
    rng = np.random.default_rng(0)
    pos = _grid(6, 10, 20.0, 30.0, rng, jitter=1.0)
    # Footprint radius 30 m, margin 1.5: images closer than 45 m overlap enough to be paired.
    cfg = AlignConfig(pair_neighbors=4, pair_overlap_margin=1.5)
    pairs = set(candidate_pairs(pos, np.full(len(pos), 30.0), None, cfg))
    dist = np.linalg.norm(pos[:, None, :2] - pos[None, :, :2], axis=2)
    n = len(pos)
    truly_overlapping = {(i, j) for i in range(n) for j in range(i + 1, n) if dist[i, j] < 44.0}
    assert truly_overlapping <= pairs
    # Nothing far apart: at most the 4th-nearest neighbour or the overlap radius.
    kth = np.sort(dist, axis=1)[:, 4]
    for i, j in pairs:
        assert i < j
        assert dist[i, j] <= max(45.0, kth[i], kth[j]) + 1e-9
    # O(N*k) for a bounded density: far fewer than all N(N-1)/2 pairs.
    assert len(pairs) < 6 * n


def test_vertical_gps_drift_does_not_change_pairs():
    pos = _grid(3, 8, 20.0, 30.0)
    drifted = pos.copy()
    drifted[:, 2] += np.linspace(0, 300, len(pos))  # consumer GPS height drifting by 300 m
    cfg = AlignConfig(pair_neighbors=3)
    assert candidate_pairs(pos, None, None, cfg) == candidate_pairs(drifted, None, None, cfg)


def test_knn_without_footprints_gives_k_neighbours_each():
    pos = _grid(1, 10, 10.0, 10.0)  # one line, 10 m apart
    pairs = gps_pairs(pos[:, :2], neighbors=2)
    # Interior images' two nearest are both sides; the ends reach two along the line.
    assert pairs == sorted({(i, i + 1) for i in range(9)} | {(0, 2), (7, 9)})


def test_images_without_gps_pair_with_everything_in_small_sets():
    pos = _grid(2, 5, 20.0, 30.0)
    pos[3] = np.nan
    cfg = AlignConfig(pair_neighbors=2, exhaustive_below=30)
    pairs = candidate_pairs(pos, None, None, cfg)
    assert all((min(3, j), max(3, j)) in pairs for j in range(10) if j != 3)
    assert all(np.isfinite(pos[i, 0]) and np.isfinite(pos[j, 0]) for i, j in pairs if 3 not in (i, j))


def test_large_set_without_gps_uses_capture_time_order():
    n = 40
    pos = np.full((n, 3), np.nan)
    rng = np.random.default_rng(1)
    order = rng.permutation(n)
    times = [None] * n
    for rank, i in enumerate(order):
        times[i] = f"2024-06-15T10:{rank // 60:02d}:{rank % 60:02d}"
    cfg = AlignConfig(exhaustive_below=30, pair_sequential_window=2)
    pairs = set(candidate_pairs(pos, None, times, cfg))
    expected = set(sequential_pairs(list(order), 2))
    assert pairs == expected
    assert len(pairs) == 2 * n - 3


def test_similar_pairs_picks_most_similar():
    g = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.95, 0.05], [0, 0, 1]], np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    assert similar_pairs(g, 1) == [(0, 1), (2, 3), (3, 4)]


@pytest.mark.slow
def test_content_preselection_finds_overlapping_images_across_flight_lines(tmp_path):
    """Without GPS, VLAD similarity pairs images of neighbouring flight lines that capture time misses."""
    from alignkit.core.executor import SerialExecutor
    from alignkit.core.features import extract_features
    from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth

    spec = SurveySpec(rows=3, cols=6, width=480, height=360, overlap=0.7, sidelap=0.5, seed=11)
    out = generate_survey(tmp_path / "survey", spec)
    gt = load_ground_truth(out)
    paths = sorted((out / "images").glob("*.jpg"))
    cfg = AlignConfig(
        max_image_size=480,
        max_features=1500,
        workers=1,
        exhaustive_below=5,
        pair_sequential_window=1,
        pair_neighbors=4,
    )
    store = extract_features(paths, tmp_path / "ws", cfg, SerialExecutor())
    n = len(paths)
    pairs = set(candidate_pairs(np.full((n, 3), np.nan), None, None, cfg, store=store))
    centres = gt["C"]
    dist = np.linalg.norm(centres[:, None, :2] - centres[None, :, :2], axis=2)
    sequential = set(sequential_pairs(range(n), 1))
    content = pairs - sequential
    # Ground footprint of a 480 x 360 image at 60 m with f = 319 px: about 90 x 68 m.
    footprint_short = spec.altitude_m * spec.height / (spec.focal_px * spec.width / spec.width)
    overlapping = {(i, j) for i, j in content if dist[i, j] < 0.8 * footprint_short}
    assert len(content) >= n  # content adds pairs beyond the time sequence
    assert len(overlapping) / len(content) > 0.8  # and they are mostly truly overlapping images
    # Every image gets at least one overlapping partner on another flight line (not its time neighbour).
    cross = {(i, j) for i, j in overlapping if abs(i - j) > 1}
    assert len({i for p in cross for i in p}) >= 0.8 * n
