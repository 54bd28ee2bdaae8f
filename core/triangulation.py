"""Triangulation for the incremental reconstruction (core/reconstruction.py): two-view and
multi-view DLT with hypotheses scored over each track, and the checks (reprojection, cheirality,
triangulation angle). A mixin of the mapper: it reads the mapper's observations and poses.
"""
import time

import numpy as np

# Tracks triangulated in one pass: hypotheses and DLT arrays are padded to the longest track of the
# pass, so a whole 1,000-photo block at once (merged submodels) took 12 GB; per pass they stay small.
TRIANGULATE_BATCH_TRACKS = 20_000


def _dlt(P, xn, weight):
    """Batched multi-view DLT. P (n,m,3,4) projection [R | -RC], xn (n,m,2) normalised, weight (n,m) 0/1."""
    rows = np.concatenate(
        [xn[..., 0:1] * P[..., 2, :] - P[..., 0, :], xn[..., 1:2] * P[..., 2, :] - P[..., 1, :]], axis=1
    ) * np.concatenate([weight, weight], axis=1)[..., None]
    rows /= np.maximum(np.linalg.norm(rows, axis=2, keepdims=True), 1e-300)
    _, _, vt = np.linalg.svd(rows)
    h = vt[:, -1]
    return h[:, :3] / h[:, 3:4]


class Triangulation:
    """Triangulation methods of the mapper (needs obs_*, xn, R, C, points, has_point, cfg, timings)."""

    def triangulate_two(self, oi, oj):
        """Two-view DLT for matching observation pairs; returns X, passes-checks mask, angle (deg)."""
        P = np.stack([self.projection(self.obs_image[oi]), self.projection(self.obs_image[oj])], axis=1)
        xn = np.stack([self.xn[oi], self.xn[oj]], axis=1)
        X = _dlt(P, xn, np.ones((len(oi), 2)))
        ei, zi = self.reproj_error(oi, X)
        ej, zj = self.reproj_error(oj, X)
        angle = self.ray_angle(X, self.C[self.obs_image[oi]], self.C[self.obs_image[oj]])
        good = (zi > 0) & (zj > 0) & (ei < self.cfg.max_reproj_error_px) & (ej < self.cfg.max_reproj_error_px)
        good &= angle >= self.cfg.min_triangulation_angle_deg
        return X, good, angle

    def projection(self, images):
        R = self.R[images]
        return np.concatenate([R, -np.einsum("nij,nj->ni", R, self.C[images])[..., None]], axis=2)

    @staticmethod
    def ray_angle(X, Ca, Cb):
        a, b = X - Ca, X - Cb
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    # ---------------------------------------------------------------- triangulation
    def triangulate_tracks(self, track_ids, comp):
        """Triangulate tracks (without a point) from their observations in registered images of `comp`.

        Per track, two-view hypotheses anchored on its first three observations are scored by how many
        observations they explain; the best one's inliers go into a multi-view DLT and the checks
        (reprojection, cheirality, triangulation angle, >= 2 views)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        track_ids = np.unique(np.asarray(track_ids, np.int64))
        track_ids = track_ids[~self.has_point[track_ids]]
        if not len(track_ids):
            return 0
        if len(track_ids) > TRIANGULATE_BATCH_TRACKS:
            return sum(self.triangulate_tracks(track_ids[k:k + TRIANGULATE_BATCH_TRACKS], comp)
                       for k in range(0, len(track_ids), TRIANGULATE_BATCH_TRACKS))
        lo = np.searchsorted(self.obs_track, track_ids)
        hi = np.searchsorted(self.obs_track, track_ids, side="right")
        obs = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(lo) else np.zeros(0, np.int64)
        img = self.obs_image[obs]
        obs = obs[self.obs_valid[obs] & self.registered[img] & (self.component[img] == comp)]
        trk = self.obs_track[obs]
        utr, start, count = np.unique(trk, return_index=True, return_counts=True)
        keep = count >= 2
        if not keep.any():
            self.timings["triangulate_s"] += time.perf_counter() - t0
            return 0
        sel = np.repeat(keep, count)
        obs, trk = obs[sel], trk[sel]
        utr, start, count = np.unique(trk, return_index=True, return_counts=True)
        pos = np.arange(len(obs)) - np.repeat(start, count)  # position of each observation in its track
        tix = np.repeat(np.arange(len(utr)), count)
        # Hypotheses: (anchor k, other) for anchors k = 0..2.
        ha, hb = [], []
        for k in range(3):
            m = pos > k
            ha.append(start[tix[m]] + k)
            hb.append(np.flatnonzero(m))
        ha, hb = np.concatenate(ha), np.concatenate(hb)
        X, good, _ = self.triangulate_two(obs[ha], obs[hb])
        # Score each hypothesis over all observations of its track.
        htr = tix[ha]
        n_h = count[htr]
        rep_h = np.repeat(np.arange(len(ha)), n_h)
        rep_o = np.repeat(start[htr], n_h) + (np.arange(n_h.sum()) - np.repeat(np.cumsum(n_h) - n_h, n_h))
        err, z = self.reproj_error(obs[rep_o], X[rep_h])
        inl = (err < cfg.max_reproj_error_px) & (z > 0)
        score = np.bincount(rep_h, weights=inl, minlength=len(ha)) * good - ~good
        order = np.lexsort((-score, htr))
        first = np.ones(len(order), bool)
        first[1:] = htr[order][1:] != htr[order][:-1]
        best = order[first]  # best hypothesis per track (index into ha), tracks in order
        ok_track = score[best] >= 2
        # Multi-view DLT on the best hypothesis' inliers.
        inl_best = np.zeros(len(obs), bool)
        hsel = np.zeros(len(ha), bool)
        hsel[best[ok_track]] = True
        m = hsel[rep_h] & inl
        inl_best[rep_o[m]] = True
        mv = int(count.max())
        grid_obs = np.zeros((len(utr), mv), np.int64)
        grid_w = np.zeros((len(utr), mv))
        grid_obs[tix, pos] = np.arange(len(obs))
        grid_w[tix, pos] = inl_best
        P = self.projection(self.obs_image[obs[grid_obs]].ravel()).reshape(len(utr), mv, 3, 4)
        Xm = _dlt(P, self.xn[obs[grid_obs]], grid_w)
        err, z = self.reproj_error(obs, Xm[tix])
        inl = inl_best & (err < cfg.max_reproj_error_px) & (z > 0)
        n_inl = np.bincount(tix, weights=inl, minlength=len(utr))
        angle = self.max_angle(Xm[tix], self.C[self.obs_image[obs]], tix, inl, len(utr))
        accept = ok_track & (n_inl >= 2) & (angle >= cfg.min_triangulation_angle_deg) & np.isfinite(Xm).all(1)
        t_acc = utr[accept]
        self.points[t_acc] = Xm[accept]
        self.has_point[t_acc] = True
        self.point_comp[t_acc] = comp
        acc_obs = accept[tix]
        self.obs_ok[obs[acc_obs]] = inl[acc_obs]
        self.timings["triangulate_s"] += time.perf_counter() - t0
        return int(accept.sum())

    @staticmethod
    def max_angle(X, C, group, use, n_groups):
        """Approximate widest ray angle (deg) per group: farthest ray from the mean, then from that ray."""
        ray = X - C
        ray /= np.maximum(np.linalg.norm(ray, axis=1, keepdims=True), 1e-300)
        ray = ray * use[:, None]
        mean = np.column_stack([np.bincount(group, weights=ray[:, a], minlength=n_groups) for a in range(3)])
        mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-300)
        cos_m = np.where(use, (ray * mean[group]).sum(1), 2.0)
        far = np.full(n_groups, -1, np.int64)
        order = np.lexsort((cos_m, group))  # per group, smallest cosine first
        first = np.ones(len(order), bool)
        first[1:] = group[order][1:] != group[order][:-1]
        far[group[order[first]]] = order[first]
        ref = ray[far[group]]
        cos_f = np.where(use, (ray * ref).sum(1), 2.0)
        order = np.lexsort((cos_f, group))
        first = np.ones(len(order), bool)
        first[1:] = group[order][1:] != group[order][:-1]
        mn = np.full(n_groups, 2.0)
        mn[group[order[first]]] = cos_f[order[first]]
        return np.degrees(np.arccos(np.clip(mn, -1, 1)))
