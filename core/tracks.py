"""Stage 4: tracks, i.e. features that verified matches link across images.

Connected components of the match graph (nodes: (image, feature)), found with SciPy. A component
holding two different features of one image is inconsistent (a wrong match somewhere links two
distinct points); it is SPLIT, not dropped: its matches are re-joined strongest pair first with a
union-find that refuses any union putting two features of one image into one track. Tracks seen
in fewer than two images are dropped.

One image point is one node. SIFT gives a keypoint one feature per dominant orientation (about
15 % of OpenCV's keypoints share their position with another), and each of them matches on its
own: left as separate nodes, the twins formed twin tracks with the same observations, so 4-7 % of
the sparse points were exact duplicates (same XYZ, colour and error, consecutive ids), and a point
whose twins matched different photos was cut into two shorter tracks. Features at the same
position of one image are therefore merged into the first (strongest) of them before the graph is
built (`_canonical_features`).

A keypoint whose neighbourhood reaches the image border is located with a bias: SIFT's blur sees
the border's mirror there. Against the true cameras of a generated 240-photo block, keypoints
closer to the border than 1.5 sizes (OpenCV's size, the neighbourhood's diameter) sit 0.14 px
inward on average (std 0.45 px, 1 % of the observations), those beyond it within 0.006 px. Always
inward, at the rim of every photo, this is a barrel distortion the held lens cannot take: it bent
the block into a dome (the optimum of the real observations started from the truth: 8.8 mm, of
which an 8.3 mm bowl; unbiased noise of the same size: 1.7-2.3 mm). Such observations leave their
track (`BORDER_SIZES`); the match still joins the track's other photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import workspace

# Keypoints closer to the image border than this many keypoint sizes are left out of the tracks
# (their positions are biased inward; the module's docstring has the figures).
BORDER_SIZES = 1.5


@dataclass
class Tracks:
    obs_track: np.ndarray  # (K,) int64 track id, 0..T-1, observations sorted by track then image
    obs_image: np.ndarray  # (K,) int32 image index
    obs_feature: np.ndarray  # (K,) int32 feature index in that image
    obs_xy: np.ndarray  # (K, 2) float64 original-pixel position (pixel-centre convention)
    track_rgb: np.ndarray  # (T, 3) uint8 mean colour of the track's observations

    @property
    def n_tracks(self):
        return len(self.track_rgb)

    def lengths(self):
        """(T,) number of images observing each track."""
        return np.bincount(self.obs_track, minlength=self.n_tracks)

    def save(self, path):
        workspace.write_npz(
            path,
            obs_track=self.obs_track,
            obs_image=self.obs_image,
            obs_feature=self.obs_feature,
            obs_xy=self.obs_xy,
            track_rgb=self.track_rgb,
        )

    @classmethod
    def load(cls, path):
        z = workspace.read_npz(path)
        return cls(
            obs_track=z["obs_track"].astype(np.int64),
            obs_image=z["obs_image"].astype(np.int32),
            obs_feature=z["obs_feature"].astype(np.int32),
            obs_xy=np.ascontiguousarray(z["obs_xy"], np.float64).reshape(-1, 2),
            track_rgb=z["track_rgb"].astype(np.uint8).reshape(-1, 3),
        )


def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:  # path compression
        parent[a], a = root, parent[a]
    return root


def _split_component(edges, strength, node_image):
    """Consistent sub-tracks of one inconsistent component. edges: (E, 2) node ids; returns {node: label}."""
    parent = {}
    images = {}
    for a, b in edges[np.argsort(-strength, kind="stable")]:
        for n in (a, b):
            if n not in parent:
                parent[n] = n
                images[n] = {node_image[n]}
        ra, rb = _find(parent, a), _find(parent, b)
        if ra == rb or images[ra] & images[rb]:
            continue  # same track already, or the union would give one image two features
        if len(images[ra]) < len(images[rb]):
            ra, rb = rb, ra
        parent[rb] = ra
        images[ra] |= images.pop(rb)
    return {n: _find(parent, n) for n in parent}


def _canonical_features(store, image):
    """(N,) index of the first feature of `image` at each feature's exact position (itself if unique)."""
    xy = np.asarray(store.keypoints(int(image)), np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0, np.int64)
    _, first, inverse = np.unique(xy, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


def _near_border(table, width, height, border_sizes):
    """Which keypoints (rows x, y, size, angle of a keypoint table) lie closer to the border of a
    width x height image than border_sizes x their size."""
    x, y, size = table[:, 0], table[:, 1], table[:, 2]
    # Pixel-centre convention: the image spans [-0.5, width - 0.5].
    gap = np.minimum.reduce([x + 0.5, y + 0.5, width - 0.5 - x, height - 0.5 - y])
    return gap < border_sizes * size


def build_tracks(pair_matches, store, border_sizes=BORDER_SIZES):
    """Tracks from verified pair matches (list of PairMatches) and the feature store; observations
    closer to the border than border_sizes keypoint sizes are left out (0: none)."""
    n_images = len(store)
    counts = np.array([store.count(i) for i in range(n_images)], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(counts)])
    canonical = {}

    def nodes_of(image, feature):
        if image not in canonical:
            canonical[image] = _canonical_features(store, image)
        return offset[image] + canonical[image][feature]

    src, dst, strength = [], [], []
    for pm in pair_matches:
        if len(pm.matches) == 0:
            continue
        m = np.asarray(pm.matches, dtype=np.int64).reshape(-1, 2)
        src.append(nodes_of(pm.i, m[:, 0]))
        dst.append(nodes_of(pm.j, m[:, 1]))
        strength.append(np.full(len(m), pm.n_inliers, np.float64))
    if not src:
        return _empty()
    src, dst, strength = np.concatenate(src), np.concatenate(dst), np.concatenate(strength)
    nodes, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
    e_src, e_dst = inverse[: len(src)], inverse[len(src) :]
    n_nodes = len(nodes)
    graph = coo_matrix((np.ones(len(e_src)), (e_src, e_dst)), shape=(n_nodes, n_nodes))
    _, label = connected_components(graph, directed=False)
    node_image = (np.searchsorted(offset, nodes, side="right") - 1).astype(np.int64)

    # A component is inconsistent when it has more nodes than distinct images.
    order = np.lexsort((node_image, label))
    same = (label[order][1:] == label[order][:-1]) & (node_image[order][1:] == node_image[order][:-1])
    bad_labels = np.unique(label[order][1:][same])
    if len(bad_labels):
        next_label = label.max() + 1
        bad_edge = np.isin(label[e_src], bad_labels)
        edge_label = label[e_src[bad_edge]]
        by_label = np.argsort(edge_label, kind="stable")  # each component's edges as one slice
        bad_edges = np.column_stack([e_src[bad_edge], e_dst[bad_edge]])[by_label]
        bad_strength = strength[bad_edge][by_label]
        bounds = np.searchsorted(edge_label[by_label], np.r_[bad_labels, bad_labels[-1] + 1])
        for a, b in zip(bounds[:-1], bounds[1:]):
            mapping = _split_component(bad_edges[a:b], bad_strength[a:b], node_image)
            roots = {}
            for node, root in mapping.items():
                if root not in roots:
                    roots[root] = next_label
                    next_label += 1
                label[node] = roots[root]

    # Keep tracks seen in at least two images; renumber 0..T-1 in order of first node.
    _, first, relabel = np.unique(label, return_index=True, return_inverse=True)
    length = np.bincount(relabel)
    keep = length[relabel] >= 2
    rank = np.argsort(np.argsort(first))  # track ids follow the first observation's (image, feature)
    track = rank[relabel][keep]
    kept_nodes = nodes[keep]
    images = node_image[keep]
    order = np.lexsort((images, track))
    track = track[order]
    _, track = np.unique(track, return_inverse=True)
    images = images[order].astype(np.int32)
    features = (kept_nodes[order] - offset[images]).astype(np.int32)
    xy = np.zeros((len(order), 2), np.float64)
    rgb = np.zeros((len(order), 3), np.float64)
    biased = np.zeros(len(order), bool)
    by_image = np.argsort(images, kind="stable")
    bounds = np.searchsorted(images[by_image], np.arange(n_images + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        sel = by_image[bounds[i]:bounds[i + 1]]
        table = np.asarray(store.keypoint_table(int(i)))[features[sel]]
        xy[sel] = table[:, :2]
        rgb[sel] = store.colors(int(i))[features[sel]]
        if border_sizes > 0:
            biased[sel] = _near_border(table, *store.image_size(int(i)), border_sizes)
    if biased.any():  # then a track needs two observations still
        usable = ~biased & (np.bincount(track[~biased], minlength=len(track))[track] >= 2)
        _, track = np.unique(track[usable], return_inverse=True)
        images, features, xy, rgb = images[usable], features[usable], xy[usable], rgb[usable]
    n_tracks = int(track.max()) + 1 if len(track) else 0
    track_rgb = np.column_stack([np.bincount(track, rgb[:, c], minlength=n_tracks) for c in range(3)])
    track_rgb /= np.maximum(np.bincount(track, minlength=n_tracks), 1)[:, None]
    return Tracks(
        obs_track=track.astype(np.int64),
        obs_image=images,
        obs_feature=features,
        obs_xy=np.ascontiguousarray(xy),
        track_rgb=np.clip(np.rint(track_rgb), 0, 255).astype(np.uint8),
    )


def _empty():
    return Tracks(
        obs_track=np.zeros(0, np.int64),
        obs_image=np.zeros(0, np.int32),
        obs_feature=np.zeros(0, np.int32),
        obs_xy=np.zeros((0, 2), np.float64),
        track_rgb=np.zeros((0, 3), np.uint8),
    )


def save_tracks(tracks, path):
    tracks.save(path)


def load_tracks(path):
    return Tracks.load(path)
