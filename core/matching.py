"""Stage 3: descriptor matching and geometric verification of the candidate pairs.

Per pair (in a worker): first the strongest features of each image (3,000, at most 3/8 of them) are
matched (exact distances, Lowe's ratio test) to fit a coarse homography; every feature is then compared only with the
features near where that homography puts it (exact distances, ratio test and mutual check among
local candidates: far more matches on foliage and lawn, at a fraction of a global search). Pairs
whose strongest features agree on nothing are taken as not overlapping; if the guided search
verifies too little, a global FLANN search (both ways, ratio test, mutual check) is the fallback.
Then RANSAC: the essential matrix with the prior intrinsics (relative pose by cv2.recoverPose), the
fundamental matrix when that fails or the intrinsics are unknown, and a homography test on the
inliers (a homography explaining nearly all of them means a planar scene, or a pure rotation:
a weak baseline for initialising a reconstruction). Each pair's result is written to
`<workspace>/matches/<i>_<j>.npz` atomically; a rerun skips pairs already verified with the same
features and parameters.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass

import cv2
import numpy as np

from . import workspace
from .cancel import check
from .executor import SerialExecutor

MATCHES_DIR = "matches"
FORMAT_VERSION = 1  # bump when the stored meaning changes
RANSAC_CONFIDENCE = 0.9999  # RANSAC stops once a better model is this unlikely
RANSAC_MAX_ITERS = 10000  # upper bound on RANSAC iterations for low inlier ratios
COARSE_MIN_INLIERS = 12  # a coarse homography needs this many inliers to guide the full search
# Below this many coarse inliers a pair is taken as not overlapping and not searched globally:
# measured on brighton_beach (3000 coarse features), non-overlapping pairs give 4-6 and every pair
# that verified globally with more than 45 inliers gave 6 or more.
COARSE_GIVE_UP = 6
# The guide takes the strongest features up to config.guided_match_features, and at most this share of
# an image's features: with a fixed count a small image's guide was its whole set, as slow as a global
# search (1200x900 survey photos, 2,800 features: 3/8 gives the same inliers at 0.45x the time), while
# brighton's 8,000 keep their 3,000 (fewer lose pairs there: 71 verified pairs with 3,000, 54 with 1,000).
COARSE_SHARE = 0.375
CHEIRALITY_VOTERS = 256  # inliers that choose among an essential matrix's four poses
COARSE_THRESHOLD = 0.015  # its inlier threshold, as a fraction of the long side: parallax is allowed
# The guided search compares the queries of tile x tile cells with one distance block, the candidates
# outside each query's own 3 x 3 cells masked: one block per cell was bound by Python's loop. The tile
# grows until it holds about TILE_QUERIES queries (at most 3 x 3 cells): larger blocks waste products on
# masked candidates. One thread, ms a pair for tiles of 1 / 2 / 3 cells: 1200x900 survey photos (2,800
# features, ~14 a cell) 24 / 11-14 / 10; brighton (8,000 features, ~50 a cell) 36 / 30-36 / 41-44.
TILE_QUERIES = 120

METHODS = {"magsac": cv2.USAC_MAGSAC, "accurate": cv2.USAC_ACCURATE, "ransac": cv2.RANSAC}


@dataclass
class PairMatches:
    i: int
    j: int
    matches: np.ndarray  # (M, 2) int32 feature indices in images i and j: the verified inliers
    model: str  # "essential", "homography" (planar scene or pure rotation), "fundamental" or "none"
    n_inliers: int
    R_rel: np.ndarray | None  # (3, 3) rotation camera i -> camera j: x_j = R_rel @ x_i + t_rel
    t_rel: np.ndarray | None  # (3,) unit translation, or None without a calibrated model
    n_putative: int = 0  # matches passing the ratio and mutual tests
    n_homography_inliers: int = 0  # of the verified inliers, how many a homography explains
    search: str = ""  # "guided" (around a coarse homography), "global", or "none" (no overlap found)

    @property
    def homography_ratio(self):
        return self.n_homography_inliers / self.n_inliers if self.n_inliers else 0.0


def match_params(config):
    """The config values that change matching results (a dict, so it travels to workers)."""
    matcher, verification = (
        str(getattr(config, "matcher", "flann")),
        str(getattr(config, "verification", "magsac")),
    )
    if matcher not in ("flann", "bf"):
        raise ValueError(f"matcher must be 'flann' or 'bf', not {matcher!r}")
    if verification not in METHODS:
        raise ValueError(f"verification must be one of {', '.join(METHODS)}, not {verification!r}")
    return {
        "lowe_ratio": float(config.lowe_ratio),
        "ransac_threshold_px": float(config.ransac_threshold_px),
        "min_inliers": int(config.min_inliers),
        "seed": int(config.seed),
        "matcher": matcher,
        "verification": verification,
        "homography_ratio": float(getattr(config, "homography_ratio", 0.8)),
        "guided_radius": float(getattr(config, "guided_match_radius", 0.06)),
        "coarse_features": int(getattr(config, "guided_match_features", 3000)),
        "coarse_share": COARSE_SHARE,
        "version": FORMAT_VERSION,
    }


def pair_path(matches_dir, i, j):
    return os.path.join(os.fspath(matches_dir), f"{i:05d}_{j:05d}.npz")


def _to_float(descriptors):
    return np.ascontiguousarray(descriptors, dtype=np.float32)


def _knn(matcher_name, query, train, k):
    """(len(query), k) indices and distances of the nearest train descriptors (-1 / inf where missing)."""
    if matcher_name == "bf":
        matcher = cv2.BFMatcher(cv2.NORM_L2)
    else:
        # 4 randomised k-d trees, 64 checks: 98% of brute force's verified matches, 5x faster (brighton).
        matcher = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    found = matcher.knnMatch(query, train, k=k)
    idx = np.full((len(query), k), -1, np.int64)
    dist = np.full((len(query), k), np.inf, np.float64)
    for row, ms in enumerate(found):
        for col, m in enumerate(ms[:k]):
            idx[row, col] = m.trainIdx
            dist[row, col] = m.distance
    return idx, dist


def putative_matches(desc1, desc2, ratio, matcher_name="flann"):
    """(M, 2) int32 matches passing Lowe's ratio test (1 -> 2) whose best match 2 -> 1 agrees (mutual)."""
    if len(desc1) < 2 or len(desc2) < 2:
        return np.zeros((0, 2), np.int32)
    d1, d2 = _to_float(desc1), _to_float(desc2)
    idx12, dist12 = _knn(matcher_name, d1, d2, 2)
    idx21, _ = _knn(matcher_name, d2, d1, 1)
    query = np.arange(len(d1))
    ok = (idx12[:, 0] >= 0) & (dist12[:, 0] < ratio * dist12[:, 1])
    best = idx12[:, 0]
    ok &= idx21[np.clip(best, 0, None), 0] == query
    return np.column_stack([query[ok], best[ok]]).astype(np.int32)


def _squared_distances(d1, d2, rows=slice(None), cols=slice(None), d1_sq=None, d2_sq=None):
    """(len(rows), len(cols)) float32 squared L2 distances between descriptors d1[rows] and d2[cols]."""
    d1_sq = np.einsum("ij,ij->i", d1, d1) if d1_sq is None else d1_sq
    d2_sq = np.einsum("ij,ij->i", d2, d2) if d2_sq is None else d2_sq
    dist = d1[rows] @ d2[cols].T
    dist *= -2.0
    dist += d1_sq[rows, None]
    dist += d2_sq[None, cols]
    return dist


def _best_two(dist):
    """Per row of a distance matrix: the column of the smallest, the smallest and the second smallest."""
    rows = np.arange(len(dist))
    best = dist.argmin(axis=1)
    first = dist[rows, best].copy()
    dist[rows, best] = np.inf
    second = dist.min(axis=1)
    dist[rows, best] = first
    return best, first, second


def coarse_homography(desc1, desc2, xy1, xy2, n_features, ratio, threshold_px):
    """(H or None, inliers): a homography from the strongest `n_features` (at most COARSE_SHARE) of each image.

    Cheap (a fraction of a full search: ratio test only, the RANSAC rejects the rest), it
    predicts where each feature of image 1 should be found in image 2. Only a guide: parallax off
    the dominant plane is absorbed by the search radius.
    """
    n1, n2 = (min(n_features, int(np.ceil(COARSE_SHARE * len(d)))) for d in (desc1, desc2))
    if n1 < 2 or n2 < 2:
        return None, 0
    # Exact distances: at these sizes one matrix product beats FLANN's approximate search (1,000 x 1,000
    # features 4.3 against 13.9 ms; 2,200: 23 against 39 ms; 3,000: even) and misses nothing.
    d1, d2 = _to_float(desc1[:n1]), _to_float(desc2[:n2])
    best, first, second = _best_two(_squared_distances(d1, d2))
    ok = first < ratio * ratio * second
    if ok.sum() < 4:
        return None, 0
    H, mask = cv2.findHomography(
        xy1[:n1][ok], xy2[best[ok]], cv2.USAC_MAGSAC, threshold_px, maxIters=2000, confidence=0.999
    )
    inliers = 0 if mask is None else int(mask.sum())
    return (H if H is not None and inliers >= COARSE_MIN_INLIERS else None), inliers


def guided_matches(desc1, desc2, predicted, xy2, radius, ratio, tile=None):
    """(M, 2) int32 matches searched only near where a guide (coarse homography) predicts each feature.

    predicted: (N1, 2) positions of image 1's features in image 2 (NaN = unknown); xy2: (N2, 2).
    Features are bucketed in cells of `radius` pixels; a feature is compared with image 2's
    features in the 3 x 3 cells around its prediction, by exact L2 distance. Lowe's ratio test
    then compares only local candidates, which tells repetitive texture (foliage, lawn) apart far
    better than a global search, at a fraction of its cost. The mutual check is local too: among
    the features predicted in the same cell. tile: cells a side per distance block (None: by the
    density, see TILE_QUERIES); the matches do not depend on it.
    """
    d1 = _to_float(desc1)
    d2 = _to_float(desc2)
    known = np.isfinite(predicted).all(axis=1)
    if known.sum() < 2 or len(d2) < 2:
        return np.zeros((0, 2), np.int32)
    q_idx = np.flatnonzero(known)
    q_cell = np.floor(predicted[q_idx] / radius).astype(np.int64)
    t_cell = np.floor(xy2 / radius).astype(np.int64)
    lo = t_cell.min(axis=0) - 1
    span = t_cell.max(axis=0) - lo + 2
    # Queries predicted beyond the neighbourhood of image 2 have nothing to match.
    inside = np.all((q_cell >= lo) & (q_cell < lo + span), axis=1)
    q_idx, q_cell, t_cell = q_idx[inside], q_cell[inside] - lo, t_cell - lo
    q_key = q_cell[:, 1] * span[0] + q_cell[:, 0]
    if tile is None:
        per_cell = len(q_key) / max(len(np.unique(q_key)), 1)
        tile = int(np.clip(round(np.sqrt(TILE_QUERIES / per_cell)), 1, 3))
    q_tile = q_cell // tile
    tile_key = q_tile[:, 1] * (span[0] // tile + 1) + q_tile[:, 0]
    order = np.lexsort((q_idx, q_key, tile_key))
    q_idx, q_cell, q_key, q_tile, tile_key = (a[order] for a in (q_idx, q_cell, q_key, q_tile, tile_key))
    t_order = np.lexsort((np.arange(len(t_cell)), t_cell[:, 0], t_cell[:, 1]))  # row by row, as the 3 x 3 cells
    t_cell = t_cell[t_order]
    d1_sq = np.einsum("ij,ij->i", d1, d1)
    d2_sq = np.einsum("ij,ij->i", d2, d2)
    mask = _neighbour_mask(tile)
    starts = np.flatnonzero(np.r_[True, tile_key[1:] != tile_key[:-1]])
    out_q, out_t, out_key = [], [], []
    for s, e in zip(starts, np.r_[starts[1:], len(tile_key)]):
        corner = q_tile[s] * tile - 1  # of the tile's (tile + 2)^2 candidate cells
        local = t_cell - corner
        near = np.all((local >= 0) & (local < tile + 2), axis=1)
        train = t_order[near]
        if len(train) < 2:
            continue
        queries, keys = q_idx[s:e], q_key[s:e]
        q_local, t_local = q_cell[s:e] - corner - 1, local[near]
        dist = _squared_distances(d1, d2, queries, train, d1_sq, d2_sq)
        dist += mask[q_local[:, 1] * tile + q_local[:, 0]][:, t_local[:, 1] * (tile + 2) + t_local[:, 0]]
        best, first, second = _best_two(dist)
        ok = np.isfinite(second) & (first < (ratio * ratio) * second)
        rivals = dist[:, best]  # best is mutual among the queries of the same cell
        rivals[keys[:, None] != keys[None, :]] = np.inf
        ok &= rivals.argmin(axis=0) == np.arange(len(queries))
        out_q.append(queries[ok])
        out_t.append(train[best[ok]])
        out_key.append(keys[ok])
    if not out_q:
        return np.zeros((0, 2), np.int32)
    q, key = np.concatenate(out_q), np.concatenate(out_key)
    by_cell = np.lexsort((q, key))  # cell by cell, queries in order: ties below resolve as they always did
    matches = np.column_stack([q, np.concatenate(out_t)])[by_cell]
    # One-to-one: a feature of image 2 keeps only its closest query.
    dist = (
        d1_sq[matches[:, 0]]
        + d2_sq[matches[:, 1]]
        - 2.0 * np.einsum("ij,ij->i", d1[matches[:, 0]], d2[matches[:, 1]])
    )
    order = np.lexsort((dist, matches[:, 1]))
    keep = np.ones(len(order), bool)
    keep[1:] = matches[order[1:], 1] != matches[order[:-1], 1]
    return np.ascontiguousarray(matches[np.sort(order[keep])], np.int32)


@functools.lru_cache(maxsize=None)
def _neighbour_mask(tile):
    """(tile^2, (tile + 2)^2) float32 to add to a tile's distances: 0 where a candidate's cell is within
    one cell of the query's, inf elsewhere (cells numbered row by row from the tile's corner)."""
    query = np.array([(x, y) for y in range(tile) for x in range(tile)]) + 1
    train = np.array([(x, y) for y in range(tile + 2) for x in range(tile + 2)])
    far = (np.abs(query[:, None, :] - train[None, :, :]) > 1).any(axis=2)
    return np.where(far, np.inf, 0.0).astype(np.float32)


def _normalised(points, K):
    return cv2.undistortPoints(points.reshape(-1, 1, 2), K, None).reshape(-1, 2)


def verify(p1, p2, K1, K2, threshold_px, method, min_inliers, homography_ratio):
    """Geometric verification of putative correspondences (original pixels).

    Returns (inlier mask (M,) bool, model, R_rel, t_rel, homography inliers among the inliers).
    """
    m = len(p1)
    none = (np.zeros(m, bool), "none", None, None, 0)
    if m < max(min_inliers, 8):
        return none
    flag = METHODS[method]
    mask, model, R, t = None, "none", None, None
    if K1 is not None and K2 is not None:
        n1, n2 = _normalised(p1, K1), _normalised(p2, K2)
        focal = 0.25 * (K1[0, 0] + K1[1, 1] + K2[0, 0] + K2[1, 1])
        E, emask = cv2.findEssentialMat(
            n1,
            n2,
            np.eye(3),
            method=flag,
            prob=RANSAC_CONFIDENCE,
            threshold=threshold_px / focal,
            maxIters=RANSAC_MAX_ITERS,
        )
        if E is not None and emask is not None and E.shape == (3, 3):
            emask = emask.ravel().astype(bool)
            if emask.sum() >= min_inliers:
                # Which of E's four poses puts the points in front is a vote: 256 inliers settle it as
                # surely as all of them, at a fifth of the time. The pose only offers an initial pair a
                # start that the bundle adjustment refines, so a least-squares refinement on every inlier
                # no longer follows: 10-18 ms a pair for rotations 0.0092 -> 0.0087 deg (median; 99th
                # percentile 0.35 -> 0.53 deg) on 198 pairs of 1200x900 generated photos.
                voters = np.flatnonzero(emask)[:: max(1, int(emask.sum()) // CHEIRALITY_VOTERS)]
                _, R, t, _ = cv2.recoverPose(E, n1[voters], n2[voters], np.eye(3))
                mask, model = emask, "essential"
    if mask is None:
        F, fmask = cv2.findFundamentalMat(p1, p2, flag, threshold_px, RANSAC_CONFIDENCE, RANSAC_MAX_ITERS)
        if F is None or fmask is None or F.shape != (3, 3) or fmask.sum() < min_inliers:
            return none
        mask, model = fmask.ravel().astype(bool), "fundamental"
    _, hmask = cv2.findHomography(
        p1[mask], p2[mask], cv2.RANSAC, threshold_px, maxIters=2000, confidence=0.999
    )
    h_inliers = int(hmask.sum()) if hmask is not None else 0
    if h_inliers >= homography_ratio * mask.sum():
        model = "homography"
    R = None if R is None else np.ascontiguousarray(R, np.float64)
    t = None if t is None else np.ascontiguousarray(np.ravel(t), np.float64)
    return mask, model, R, t, h_inliers


def _fingerprint(store, i):
    entry = store.images[i]
    return [entry["image"], int(entry["count"]), entry.get("seconds", 0.0)]


def match_pair(item):
    """Worker: match and verify one pair, write its npz unless already done. Returns a small summary."""
    store_dir, matches_dir, i, j, K1, K2, params = item
    from .features import FeatureStore

    path = pair_path(matches_dir, i, j)
    store = FeatureStore.cached(store_dir)
    stamp = {
        "params": params,
        "features": [_fingerprint(store, i), _fingerprint(store, j), store.params],
    }
    stamp_json = _stamp_json(stamp)
    if os.path.exists(path):
        try:
            old = workspace.read_npz(path)
            if _scalar(old["stamp"]) == stamp_json:
                return {"i": i, "j": j, "skipped": True, "n_inliers": int(_scalar(old["n_inliers"]))}
        except (OSError, KeyError, ValueError):
            pass
    cpu_start = time.process_time()
    cv2.setRNGSeed(int(params["seed"]) + 1000003 * i + j)  # per-pair seed: same result in any order or worker
    kp1, kp2 = store.keypoints(i), store.keypoints(j)
    # Thresholds are given in working pixels: they scale with the image, not the detector.
    threshold = params["ransac_threshold_px"] * 0.5 * (store.working_scale(i) + store.working_scale(j))
    K1 = None if K1 is None else np.asarray(K1, np.float64)
    K2 = None if K2 is None else np.asarray(K2, np.float64)

    def verified(putative):
        p1, p2 = kp1[putative[:, 0]], kp2[putative[:, 1]]
        found = verify(
            p1,
            p2,
            K1,
            K2,
            threshold,
            params["verification"],
            params["min_inliers"],
            params["homography_ratio"],
        )
        return (*found, putative)

    search, result = "global", None
    desc1, desc2 = store.descriptors(i), store.descriptors(j)
    long_side = max(store.image_size(j))
    H, coarse_inliers = coarse_homography(
        desc1, desc2, kp1, kp2, params["coarse_features"], params["lowe_ratio"], COARSE_THRESHOLD * long_side
    )
    if H is not None:
        predicted = cv2.perspectiveTransform(kp1.reshape(-1, 1, 2), H).reshape(-1, 2)
        radius = params["guided_radius"] * long_side
        result = verified(guided_matches(desc1, desc2, predicted, kp2, radius, params["lowe_ratio"]))
        search = "guided"
        if result[0].sum() < params["min_inliers"]:
            result = None  # a wrong guide (a repeated structure): search everywhere
    if result is None and coarse_inliers < COARSE_GIVE_UP:
        search = "none"  # the strongest features agree on nothing: the photos do not overlap
        result = verified(np.zeros((0, 2), np.int32))
    if result is None:
        search = "global"
        result = verified(putative_matches(desc1, desc2, params["lowe_ratio"], params["matcher"]))
    mask, model, R, t, h_inliers, putative = result
    inliers = np.ascontiguousarray(putative[mask], np.int32)
    arrays = dict(
        matches=inliers,
        model=np.array(model),
        n_inliers=np.array(len(inliers)),
        n_putative=np.array(len(putative)),
        n_homography_inliers=np.array(h_inliers),
        R_rel=np.full((3, 3), np.nan) if R is None else R,
        t_rel=np.full(3, np.nan) if t is None else t,
        search=np.array(search),
    )
    workspace.write_npz(path, **arrays, stamp=np.array(stamp_json))
    return {
        "i": i,
        "j": j,
        "skipped": False,
        # The result itself (a few kB): reading 7,500 pair files back cost ~20-40 s at 1,000 photos.
        "pair": _pair_from_arrays(i, j, arrays),
        "n_inliers": int(len(inliers)),
        "search": search,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def _scalar(array):
    """The value of a stored scalar (the workspace writer stores scalars as 1-element arrays)."""
    return np.asarray(array).reshape(-1)[0].item()


def _stamp_json(stamp):
    return json.dumps(stamp, sort_keys=True)


def load_pair(matches_dir, i, j):
    """The stored result of pair (i, j) as PairMatches."""
    return _pair_from_arrays(i, j, workspace.read_npz(pair_path(matches_dir, i, j)))


def _pair_from_arrays(i, j, z):
    R, t = z["R_rel"], z["t_rel"]
    return PairMatches(
        i=int(i),
        j=int(j),
        matches=np.ascontiguousarray(z["matches"], np.int32).reshape(-1, 2),
        model=str(_scalar(z["model"])),
        n_inliers=int(_scalar(z["n_inliers"])),
        R_rel=None if np.isnan(R).any() else np.ascontiguousarray(R, np.float64),
        t_rel=None if np.isnan(t).any() else np.ascontiguousarray(t, np.float64),
        n_putative=int(_scalar(z["n_putative"])),
        n_homography_inliers=int(_scalar(z["n_homography_inliers"])),
        search=str(_scalar(z["search"])) if "search" in z else "",
    )


def _valid_K(K):
    if K is None:
        return None
    K = np.asarray(K, dtype=np.float64)
    return K if K.shape == (3, 3) and np.isfinite(K).all() and K[0, 0] > 0 else None


def match_pairs(
    store,
    pairs,
    Ks,
    config,
    executor=None,
    progress=None,
    is_canceled=None,
    workspace_dir=None,
    include_failed=False,
):
    """Match and verify every candidate pair; returns PairMatches sorted by (i, j).

    Ks: (N, 3, 3) prior intrinsics in original pixels (a NaN or None entry: fundamental matrix only).
    Results go to `<workspace_dir>/matches/` (default: the feature store's workspace).
    Only pairs with at least config.min_inliers verified matches are returned unless include_failed.
    """
    store_dir = os.path.dirname(store.features_dir)
    matches_dir = os.path.join(os.fspath(workspace_dir or store_dir), MATCHES_DIR)
    os.makedirs(matches_dir, exist_ok=True)
    params = match_params(config)
    pairs = sorted({(min(int(a), int(b)), max(int(a), int(b))) for a, b in pairs if a != b})
    skip = set(store.errors)
    items = []
    for i, j in pairs:
        if i in skip or j in skip:
            continue
        K1 = _valid_K(None if Ks is None else Ks[i])
        K2 = _valid_K(None if Ks is None else Ks[j])
        items.append(
            (
                store_dir,
                matches_dir,
                i,
                j,
                None if K1 is None else K1.tolist(),
                None if K2 is None else K2.tolist(),
                params,
            )
        )
    executor = executor or SerialExecutor()
    summaries = list(
        executor.map(match_pair, items, progress=progress, is_canceled=is_canceled, message="matching pairs")
    )
    match_pairs.last_cpu_seconds = sum(s.get("cpu_seconds", 0.0) for s in summaries)  # for benchmarks
    check(is_canceled)
    fresh = {(m["i"], m["j"]): m["pair"] for m in summaries if "pair" in m}
    results = [fresh.get((item[2], item[3])) or load_pair(matches_dir, item[2], item[3]) for item in items]
    if not include_failed:
        results = [r for r in results if r.n_inliers >= config.min_inliers and r.model != "none"]
    return results
