"""The bundle adjustment's reprojection block (core/bundle.py builds and solves the problem).

Its normal equations take the observations in image order, CHUNK_OBSERVATIONS at a time: the
per-observation Jacobian blocks and their products hold about 1 KB per observation, which at 1,000
photos (1.35 M observations) would be 1.3 GB at once. Between iterations it holds ~70 bytes per
observation (chunk_plan's int32 indices; an observation's columns are its image's, gathered per chunk),
where int64 caches per observation held ~580.
"""
import numpy as np
from scipy.sparse import bsr_matrix, coo_matrix, csr_matrix

from .bundle_blocks import left_jacobian

# Observations per chunk of the normal equations: their temporaries are ~1 KB each, so ~35 MB. On the
# 185-photo global adjustment (252k observations) 32k-64k were fastest (a chunk's arrays stay in cache),
# 5-10% faster than one chunk; 16k no faster.
CHUNK_OBSERVATIONS = 32_768


def project(R, C, focal, k1, k2, pp, points):
    """Per-observation projection (all arrays already gathered per observation). Returns (K,2), depth (K,)."""
    x = np.matmul(R, (points - C)[:, :, None])[:, :, 0]
    z = x[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):  # points on a camera centre: inf, filtered by callers
        xn, yn = x[:, 0] / z, x[:, 1] / z
    r2 = xn * xn + yn * yn
    d = 1.0 + k1 * r2 + k2 * r2 * r2
    uv = np.column_stack([focal * d * xn + pp[:, 0], focal * d * yn + pp[:, 1]])
    return uv, z


class Reprojection:
    """The reprojection block: (projected - observed) / obs_sigma_px per observation (2 residuals).

    Besides residuals / triplets like the other blocks it gives per-observation Jacobian blocks (its
    image's 6 + its model's intrinsic columns, and its point's 3), which the solver's normal equations
    use directly."""

    def __init__(self, lay, image_camera, pp, obs_image, obs_point, obs_xy, obs_sigma_px):
        self.lay = lay
        self.pp = pp
        self.obs_image, self.obs_point, self.obs_xy = obs_image, obs_point, obs_xy
        self.image_camera = image_camera
        self.weight = 1.0 / float(obs_sigma_px)  # pixel residuals in units of their std, comparable to the priors
        n_obs = len(obs_image)
        self.n_res = 2 * n_obs
        self.n_intr = int(sum(lay.intr))
        self.widths = (6, self.n_intr) if self.n_intr else (6,)  # blocks of camera-side columns: image, model
        # Camera-side columns per image (its own 6, its model's intrinsics; -1: held): an observation's are
        # its image's, gathered per chunk rather than held per observation.
        img, mdl = lay.image_col[:, None], lay.model_col[image_camera][:, None]
        self.image_cols = np.concatenate([np.where(img >= 0, img + np.arange(6), -1),
                                          np.where(mdl >= 0, mdl + np.arange(self.n_intr), -1)], axis=1)
        # observations grouped by image, for U's blocks
        self.by_image = _index(np.argsort(obs_image, kind="stable"), n_obs)
        self.image_start = np.searchsorted(obs_image[self.by_image], np.arange(len(lay.image_col) + 1))
        self._plan = None

    def residuals(self, s):
        out = np.empty((len(self.obs_image), 2))
        for lo in range(0, len(out), CHUNK_OBSERVATIONS):  # the gathered arrays take ~250 bytes per observation
            sel = slice(lo, lo + CHUNK_OBSERVATIONS)
            oi = self.obs_image[sel]
            c = self.image_camera[oi]
            uv, _ = project(s.R[oi], s.C[oi], s.focal[c], s.k1[c], s.k2[c], self.pp[c],
                            s.points[self.obs_point[sel]])
            out[sel] = (uv - self.obs_xy[sel]) * self.weight
        return out.ravel()

    def blocks(self, s, obs=None):
        """Per observation (weighted): d(u,v)/d(camera-side columns) (K,2,6+n_intr), zero where held,
        and d(u,v)/d(point) (K,2,3), zero where the point is held. obs: only these observations
        (an index array, in its order); all when None."""
        sel = slice(None) if obs is None else obs
        oi = self.obs_image[sel]
        c = self.image_camera[oi]
        n_obs = len(oi)
        Ro, Co, Po = s.R[oi], s.C[oi], s.points[self.obs_point[sel]]
        f, a1, a2 = s.focal[c], s.k1[c], s.k2[c]
        xc = np.matmul(Ro, (Po - Co)[:, :, None])[:, :, 0]
        z = xc[:, 2]
        xn, yn = xc[:, 0] / z, xc[:, 1] / z
        r2 = xn * xn + yn * yn
        d = 1.0 + a1 * r2 + a2 * r2 * r2
        dd = 2.0 * (a1 + 2.0 * a2 * r2)  # d(d)/d(r2) * 2
        # d(u,v)/d(xc) = d(u,v)/d(xn,yn) d(xn,yn)/d(xc), written out (batched 2x2 @ 2x3 products are slower)
        n00, n01, n11 = f * (d + xn * dd * xn), f * xn * dd * yn, f * (d + yn * dd * yn)
        iz = 1.0 / z
        j_x = np.empty((n_obs, 2, 3))
        j_x[:, 0, 0], j_x[:, 0, 1], j_x[:, 0, 2] = n00 * iz, n01 * iz, -(n00 * xn + n01 * yn) * iz
        j_x[:, 1, 0], j_x[:, 1, 1], j_x[:, 1, 2] = n01 * iz, n11 * iz, -(n01 * xn + n11 * yn) * iz
        j_world = j_x @ Ro  # d(u,v)/d(point) = -d(u,v)/d(centre)
        cam = np.zeros((n_obs, 2, 6 + self.n_intr))
        m = self.lay.image_col[oi] >= 0
        if m.any():
            # d(xc)/d(w) = -[xc]x Jl(w): row-wise, a^T [x]x = a x x; Jl per image, gathered
            jl = left_jacobian(s.w)[oi[m]]
            cam[m, :, :3] = -(np.cross(j_x[m], xc[m][:, None, :]) @ jl)
            cam[m, :, 3:6] = -j_world[m]
        m = self.lay.model_col[c] >= 0
        if m.any():
            k = 6
            if self.lay.intr[0]:
                cam[m, :, k] = np.column_stack([d * xn, d * yn])[m]
                k += 1
            if self.lay.intr[1]:
                cam[m, :, k] = np.column_stack([f * xn * r2, f * yn * r2])[m]
                cam[m, :, k + 1] = np.column_stack([f * xn * r2 * r2, f * yn * r2 * r2])[m]
        pt = np.where((self.lay.point_col[self.obs_point[sel]] >= 0)[:, None, None], j_world, 0.0)
        return cam * self.weight, pt * self.weight

    def jacobian(self, s, lay):
        cam, pt = self.blocks(s)
        n_obs = len(self.obs_image)
        obs_rows = 2 * np.arange(n_obs)[:, None, None] + np.arange(2)[None, :, None]
        cam_col = self.image_cols[self.obs_image]
        point_col = lay.point_col[self.obs_point]
        ok = np.broadcast_to(cam_col[:, None, :] >= 0, cam.shape)
        okp = np.broadcast_to(point_col[:, None, None] >= 0, pt.shape)
        pcols = point_col[:, None, None] + np.arange(3)
        return (np.concatenate([np.broadcast_to(obs_rows, cam.shape)[ok], np.broadcast_to(obs_rows, pt.shape)[okp]]),
                np.concatenate([np.broadcast_to(cam_col[:, None, :], cam.shape)[ok],
                                np.broadcast_to(pcols, pt.shape)[okp]]),
                np.concatenate([cam[ok], pt[okp]]))

    def normal_equations(self, s, r, sw, dense, sparse_u=False):
        """J^T J and J^T r of this block with robust row weights sw, per observation rather than through
        a sparse J (several times faster): U (nc, nc), Wt (3P, nc) (dense or CSR), V (P,3,3), g (n_var,).
        sparse_u: U as a CSR matrix (its memory grows with the images, not with their square).
        Chunk by chunk (chunk_plan); every piece is a sum over observations, so chunks add up."""
        lay = self.lay
        nc, n_obs = lay.point_base, len(self.obs_image)
        n_pts = (lay.n_var - nc) // 3
        chunks, n_entries, bsr = self.chunk_plan(nc, n_pts, dense)
        U = _Accumulator(nc, sparse_u)
        g = np.zeros(lay.n_var)
        g_pts = g[nc:].reshape(n_pts, 3)  # a view: g's point part
        V = np.zeros((n_pts, 3, 3))
        wt = np.zeros(3 * n_entries)  # W^T's values: dense, or per entry its point's three rows (BSR blocks)
        stride = nc if dense else 1  # in wt, from an entry's row to the next row of its point
        s_obs = sw[0:2 * n_obs:2]
        r_obs = (r * sw).reshape(-1, 2)
        for lo, hi, pts, pinv, dst, first in chunks:
            obs = self.by_image[lo:hi]
            cam, pt = self.blocks(s, obs)
            cam *= s_obs[obs][:, None, None]
            pt *= s_obs[obs][:, None, None]
            r_c = r_obs[obs]
            # U and its gradient per image: an image's observations share their columns (its own 6 and its
            # model's), so one (2K_i x m)^T (2K_i x m) product each, with no K x m x m temporaries; an image
            # split between two chunks adds two products
            bounds = np.clip(self.image_start, lo, hi) - lo
            for i in np.flatnonzero(np.diff(bounds)):
                a, b = bounds[i], bounds[i + 1]
                ok = self.image_cols[i] >= 0
                if not ok.any():
                    continue
                block = cam[a:b][:, :, ok].reshape(-1, int(ok.sum()))
                cols_i = self.image_cols[i][ok]
                U.add(cols_i, block.T @ block)
                g[cols_i] += block.T @ r_c[a:b].ravel()
            pt_t = pt.transpose(0, 2, 1)  # batched products by matmul (einsum is several times slower here)
            n_p = pts.n
            pts.add(V, np.bincount((pinv[:, None] * 9 + np.arange(9)).ravel(), (pt_t @ pt).ravel(),
                                   minlength=9 * n_p).reshape(n_p, 3, 3))
            pts.add(g_pts, np.bincount((pinv[:, None] * 3 + np.arange(3)).ravel(), (pt_t @ r_c[:, :, None]).ravel(),
                                       minlength=3 * n_p).reshape(n_p, 3))
            wt_vals = pt_t @ cam
            entry = _block_columns(first, self.widths).ravel()
            for a in range(3):  # row a of every point: the same entries, its own values
                values = np.bincount(entry, wt_vals[:, a, :].ravel(), minlength=dst.n)[:dst.n]
                dst.add(wt, values, a * stride)
        if dense:
            return U.matrix(), wt.reshape(3 * n_pts, nc), V, g
        Wt = bsr_matrix((wt.reshape(-1, 3, 1), *bsr), shape=(3 * n_pts, nc)).tocsr()
        Wt.has_canonical_format = True  # each point's columns are sorted (_entries)
        return U.matrix(), Wt, V, g

    def chunk_plan(self, nc, n_pts, dense):
        """What normal_equations needs besides the values, the same in every iteration, so built once
        (per chunk size). W^T's entries are per (point, camera-side column): each observation fills all
        three rows of its point. Per chunk of CHUNK_OBSERVATIONS in image order: (lo, hi) in by_image;
        the points it touches (a _Scatter into V) and each observation's index among them; the entries
        it touches (a _Scatter of their first row's position in W^T's values) and, per observation and
        block of columns (its image's, its model's), the index among them of the block's first entry
        (a block's entries are consecutive and touched together, so the rest follow; a held block's
        points past them, to bins that are dropped). Local indices keep every bincount as small as its
        chunk; int32 halves them. Also the number of entries and W^T's BSR (indices, indptr), None when
        dense."""
        key = (CHUNK_OBSERVATIONS, dense)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        order = self.by_image
        point_col = self.lay.point_col[self.obs_point[order]]
        var_point = point_col >= 0
        pidx = np.where(var_point, (point_col - nc) // 3, 0)  # a held point's zeros go to point 0
        first, n_entries, bsr = self._entries(order, var_point, pidx, nc, n_pts, dense)
        starts = np.r_[0, np.cumsum(self.widths)[:-1]]
        chunks = []
        p_local, e_local = _LocalIndex(n_pts), _LocalIndex(n_entries)
        for lo in range(0, len(order), CHUNK_OBSERVATIONS):
            hi = min(lo + CHUNK_OBSERVATIONS, len(order))
            pts, n_new_p, pinv = p_local(pidx[lo:hi])
            ok = np.repeat(first[lo:hi] >= 0, self.widths, axis=1)
            used, n_new, local = e_local(_block_columns(first[lo:hi], self.widths)[ok])
            entry = np.full(ok.shape, len(used), np.int32)  # held blocks: bins past the entries, dropped
            entry[ok] = local
            base = used + 2 * nc * (used // nc) if dense else 3 * used  # the entry's first row in wt
            chunks.append((lo, hi, _Scatter(_index(pts, n_pts), n_new_p), pinv,
                           _Scatter(_index(base, 3 * n_entries), n_new), entry[:, starts]))
        self._plan = (key, (chunks, n_entries, bsr))
        return chunks, n_entries, bsr

    def _entries(self, order, var_point, pidx, nc, n_pts, dense):
        """Per observation (in `order`) and block of columns, W^T's entry of the block's first column (-1:
        held, or the point is), the number of entries, and W^T's BSR (indices, indptr), None when dense
        (an entry is then point * nc + column). Sparse, a point's entries are its images' blocks (by
        image), then its models' (by model): columns in order, no sort of the observations' columns."""
        oi = self.obs_image[order]
        kinds = list(zip((oi, self.image_camera[oi]), (self.lay.image_col, self.lay.model_col), self.widths))
        first = np.full((len(order), len(kinds)), -1, np.int64)
        if dense:
            for k, (owner, col, _) in enumerate(kinds):
                on = var_point & (col[owner] >= 0)
                first[on, k] = pidx[on] * nc + col[owner[on]]
            return first, n_pts * nc, None
        pairs, size = [], np.zeros(n_pts, np.int64)
        for owner, col, width in kinds:
            on = var_point & (col[owner] >= 0)
            pair, inv = np.unique(pidx[on] * len(col) + owner[on], return_inverse=True)  # (point, image/model)
            point, which = np.divmod(pair, len(col))
            count = np.bincount(point, minlength=n_pts)
            rank = np.arange(len(pair)) - (np.cumsum(count) - count)[point]  # among its point's pairs
            pairs.append((on, inv, point, rank, col[which], count))
            size += width * count
        indptr = np.r_[0, np.cumsum(size)]
        indices = np.empty(indptr[-1], np.int64)
        within = np.zeros(n_pts, np.int64)  # where a point's blocks of this kind start among its entries
        for k, ((on, inv, point, rank, col, count), width) in enumerate(zip(pairs, self.widths)):
            start = indptr[point] + within[point] + width * rank
            indices[start[:, None] + np.arange(width)] = col[:, None] + np.arange(width)
            first[on, k] = start[inv]
            within += width * count
        return first, int(indptr[-1]), (_index(indices, nc), _index(indptr, indptr[-1] + 1))


def _index(a, bound):
    """Indices below bound as int32 where they fit: half the bytes of int64, and NumPy and SciPy take both."""
    return a.astype(np.int32 if bound <= np.iinfo(np.int32).max else np.int64)


def _block_columns(first, widths):
    """(n, blocks) index of each block's first column -> (n, sum(widths)) index of each column: a block's
    columns are consecutive."""
    return first[:, np.repeat(np.arange(len(widths)), widths)] + np.concatenate([np.arange(w) for w in widths])


class _LocalIndex:
    """Chunk by chunk, the distinct values of a chunk's array (in range(n)) and each value's index among
    them, the values no earlier chunk had first; by marking, no sort."""

    def __init__(self, n):
        self.touched = np.zeros(n, bool)
        self.lookup = np.empty(n, np.int32)  # an index within one chunk

    def __call__(self, values):
        seen = np.zeros(len(self.touched), bool)
        seen[values] = True
        distinct = np.flatnonzero(seen)
        earlier = self.touched[distinct]
        distinct = np.concatenate([distinct[~earlier], distinct[earlier]])
        self.touched[distinct] = True
        self.lookup[distinct] = np.arange(len(distinct))
        return distinct, len(distinct) - int(earlier.sum()), self.lookup[values]


class _Scatter:
    """out[index + offset] += values, where out is still zero at the first n_new of index: those are
    assigned (no gather; in a chunk most entries are new)."""

    def __init__(self, index, n_new):
        self.n = len(index)
        self.new, self.old = index[:n_new], index[n_new:]

    def add(self, out, values, offset=0):
        n_new = len(self.new)
        new, old = (self.new + offset, self.old + offset) if offset else (self.new, self.old)
        out[new] = values[:n_new]
        if len(old):
            out[old] += values[n_new:]


class _Accumulator:
    """A symmetric (n, n) matrix summed from dense sub-blocks: a dense array, or CSR when sparse."""

    def __init__(self, n, sparse):
        self.n, self.sparse = n, sparse
        self.dense = None if sparse else np.zeros((n, n))
        self.rows, self.cols, self.vals = [], [], []

    def add(self, cols, block):
        if self.dense is not None:
            self.dense[np.ix_(cols, cols)] += block
            return
        rr, cc = np.meshgrid(cols, cols, indexing="ij")
        self.rows.append(rr.ravel())
        self.cols.append(cc.ravel())
        self.vals.append(block.ravel())

    def matrix(self):
        if self.dense is not None:
            return self.dense
        if not self.vals:
            return csr_matrix((self.n, self.n))
        return coo_matrix((np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
                          shape=(self.n, self.n)).tocsr()
