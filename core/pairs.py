"""Stage 2: candidate image pairs, so matching grows as O(N*k) rather than O(N^2).

With GPS: the k nearest neighbours of every image plus every pair whose predicted footprints
overlap, found with a k-d tree on the horizontal ENU position (consumer GPS height drifts by tens
of metres; horizontal position does not). Without GPS: every pair for a small set, else neighbours
in capture time plus the most similar images by a compact global descriptor (VLAD on a small
visual vocabulary), so revisits from another flight line are found too.
"""

import numpy as np
from scipy.spatial import cKDTree

VLAD_WORDS = 32  # visual words of the global descriptor: enough to tell overlapping views apart
VLAD_FEATURES_PER_IMAGE = 500  # strongest features per image that describe it
VOCABULARY_SAMPLE = 20000  # descriptors the vocabulary is clustered from


def _ordered(pairs):
    return sorted({(min(i, j), max(i, j)) for i, j in pairs if i != j})


def gps_pairs(xy, neighbors, radius=None, margin=1.5):
    """Pairs of k nearest neighbours, plus pairs closer than margin * mean footprint radius.

    xy: (M, 2) horizontal positions; radius: (M,) footprint radii (NaN = unknown) or None.
    Returns pairs of row indices into xy.
    """
    xy = np.asarray(xy, dtype=np.float64)
    m = len(xy)
    if m < 2:
        return []
    tree = cKDTree(xy)
    k = min(int(neighbors), m - 1)
    pairs = set()
    if k > 0:
        _, idx = tree.query(xy, k=k + 1)
        for i, row in enumerate(np.atleast_2d(idx)):
            pairs.update((i, int(j)) for j in row if j != i and j < m)
    if radius is not None:
        radius = np.asarray(radius, dtype=np.float64)
        known = np.isfinite(radius)
        if known.any():
            reach = margin * np.nanmax(radius)
            for i, j in tree.query_pairs(reach, output_type="ndarray"):
                ri = radius[i] if known[i] else radius[j]
                rj = radius[j] if known[j] else radius[i]
                if np.isfinite(ri) and np.hypot(*(xy[i] - xy[j])) < margin * 0.5 * (ri + rj):
                    pairs.add((int(i), int(j)))
    return _ordered(pairs)


def sequential_pairs(order, window):
    """Each image with the next `window` images in capture order (order: image indices, sorted by time)."""
    order = list(order)
    return _ordered(
        (order[a], order[b]) for a in range(len(order)) for b in range(a + 1, min(len(order), a + 1 + window))
    )


def vlad_descriptors(store, indices, seed=42):
    """(len(indices), VLAD_WORDS*128) float32 unit vectors: a global descriptor per image.

    VLAD (Jegou et al. 2010) with signed square root and intra-normalisation, on the strongest
    features of each image, over a vocabulary clustered from a sample of those features.
    """
    import cv2

    per_image = [
        np.asarray(store.descriptors(i)[:VLAD_FEATURES_PER_IMAGE], dtype=np.float32) for i in indices
    ]
    rng = np.random.default_rng(seed)
    pool = np.concatenate([d for d in per_image if len(d)] or [np.zeros((0, 128), np.float32)])
    if len(pool) < VLAD_WORDS:
        return np.zeros((len(indices), VLAD_WORDS * 128), np.float32)
    sample = pool[rng.choice(len(pool), size=min(VOCABULARY_SAMPLE, len(pool)), replace=False)]
    cv2.setRNGSeed(int(seed))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    _, _, centres = cv2.kmeans(
        np.ascontiguousarray(sample), VLAD_WORDS, None, criteria, 1, cv2.KMEANS_PP_CENTERS
    )
    tree = cKDTree(centres)
    out = np.zeros((len(indices), VLAD_WORDS, 128), np.float32)
    for row, d in enumerate(per_image):
        if not len(d):
            continue
        _, word = tree.query(d)
        np.add.at(out[row], word, d - centres[word])
    out = np.sign(out) * np.sqrt(np.abs(out))
    out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
    out = out.reshape(len(indices), -1)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def similar_pairs(global_descriptors, neighbors):
    """Each image with its `neighbors` most similar images by global descriptor (cosine similarity)."""
    g = np.asarray(global_descriptors, dtype=np.float32)
    m = len(g)
    k = min(int(neighbors), m - 1)
    if k <= 0:
        return []
    similarity = g @ g.T
    np.fill_diagonal(similarity, -np.inf)
    best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    return _ordered((i, int(j)) for i in range(m) for j in best[i])


def candidate_pairs(positions_enu, footprint_radius_m=None, capture_times=None, config=None, store=None):
    """Candidate pairs (i, j), i < j, sorted.

    positions_enu: (N, 3) ENU metres, NaN rows = no GPS. footprint_radius_m: (N,) ground footprint radius
    (NaN = unknown) or None; footprints overlap enough when centres are closer than
    config.pair_overlap_margin times the pair's mean radius.
    capture_times: N sortable values (ISO 8601 strings) or None; None entries sort by index.
    store: a FeatureStore, needed only for the content-based preselection of large sets without GPS.
    Images with GPS are paired by position; images without GPS are paired with all images when
    there are fewer than config.exhaustive_below, else by capture time and by content.
    """
    positions = np.asarray(positions_enu, dtype=np.float64).reshape(-1, 3)
    n = len(positions)
    if n < 2:
        return []
    neighbors = config.pair_neighbors
    has_gps = np.all(np.isfinite(positions[:, :2]), axis=1)
    pairs = set()
    gps_idx = np.flatnonzero(has_gps)
    if len(gps_idx) >= 2:
        radius = None if footprint_radius_m is None else np.asarray(footprint_radius_m, np.float64)[gps_idx]
        for a, b in gps_pairs(positions[gps_idx, :2], neighbors, radius, config.pair_overlap_margin):
            pairs.add((int(gps_idx[a]), int(gps_idx[b])))
    without = np.flatnonzero(~has_gps)
    if len(without):
        if n < config.exhaustive_below:
            pairs.update((int(i), j) for i in without for j in range(n))
        else:
            times = capture_times if capture_times is not None else [None] * n
            order = sorted(range(n), key=lambda i: (times[i] is None, times[i] or "", i))
            candidate = set(sequential_pairs(order, config.pair_sequential_window))
            if store is not None:
                vlad = vlad_descriptors(store, range(n), config.seed)
                candidate.update(similar_pairs(vlad, neighbors))
            lacking = set(int(i) for i in without)
            pairs.update(p for p in candidate if p[0] in lacking or p[1] in lacking)
    return _ordered(pairs)
