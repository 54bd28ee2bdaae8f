"""The bundle adjustment's reprojection block (core/bundle.py builds and solves the problem).

Its normal equations take the observations in image order, CHUNK_OBSERVATIONS at a time: the
per-observation Jacobian blocks and their products hold about 1 KB per observation, which at 1,000
photos (1.35 M observations) would be 1.3 GB at once.
"""
import numpy as np
from scipy.sparse import coo_matrix, csr_matrix

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
        self.cam_of_obs = image_camera[obs_image]
        self.weight = 1.0 / float(obs_sigma_px)  # pixel residuals in units of their std, comparable to the priors
        n_obs = len(obs_image)
        self.n_res = 2 * n_obs
        self.n_intr = int(sum(lay.intr))
        var_img_obs = lay.image_col[obs_image] >= 0
        var_mdl_obs = lay.model_col[self.cam_of_obs] >= 0
        self.var_img_obs, self.var_mdl_obs = var_img_obs, var_mdl_obs
        self.cam_col = np.concatenate([  # (K, 6 + n_intr) camera-side columns of each observation (-1: held)
            np.where(var_img_obs, lay.image_col[obs_image], -1)[:, None] + np.arange(6) * var_img_obs[:, None],
            np.where(var_mdl_obs, lay.model_col[self.cam_of_obs], -1)[:, None]
            + np.arange(self.n_intr) * var_mdl_obs[:, None],
        ], axis=1)
        self.cam_col_ok = self.cam_col >= 0
        self.cam_col_or_0 = np.where(self.cam_col_ok, self.cam_col, 0)  # scatter index; held columns carry zeros
        self.point_var = lay.point_col[obs_point] >= 0
        self.point_index = np.where(self.point_var, (lay.point_col[obs_point] - lay.point_base) // 3, 0)
        self.by_image = np.argsort(obs_image, kind="stable")  # observations grouped by image, for U's blocks
        self.image_start = np.searchsorted(obs_image[self.by_image], np.arange(len(lay.image_col) + 1))
        self._plan = None

    def residuals(self, s):
        c = self.cam_of_obs
        uv, _ = project(s.R[self.obs_image], s.C[self.obs_image], s.focal[c], s.k1[c], s.k2[c], self.pp[c],
                        s.points[self.obs_point])
        return ((uv - self.obs_xy) * self.weight).ravel()

    def blocks(self, s, obs=None):
        """Per observation (weighted): d(u,v)/d(camera-side columns) (K,2,6+n_intr), zero where held,
        and d(u,v)/d(point) (K,2,3), zero where the point is held. obs: only these observations
        (an index array, in its order); all when None."""
        sel = slice(None) if obs is None else obs
        oi, c = self.obs_image[sel], self.cam_of_obs[sel]
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
        m = self.var_img_obs[sel]
        if m.any():
            # d(xc)/d(w) = -[xc]x Jl(w): row-wise, a^T [x]x = a x x; Jl per image, gathered
            jl = left_jacobian(s.w)[oi[m]]
            cam[m, :, :3] = -(np.cross(j_x[m], xc[m][:, None, :]) @ jl)
            cam[m, :, 3:6] = -j_world[m]
        m = self.var_mdl_obs[sel]
        if m.any():
            k = 6
            if self.lay.intr[0]:
                cam[m, :, k] = np.column_stack([d * xn, d * yn])[m]
                k += 1
            if self.lay.intr[1]:
                cam[m, :, k] = np.column_stack([f * xn * r2, f * yn * r2])[m]
                cam[m, :, k + 1] = np.column_stack([f * xn * r2 * r2, f * yn * r2 * r2])[m]
        pt = np.where(self.point_var[sel][:, None, None], j_world, 0.0)
        return cam * self.weight, pt * self.weight

    def jacobian(self, s, lay):
        cam, pt = self.blocks(s)
        n_obs = len(self.obs_image)
        obs_rows = 2 * np.arange(n_obs)[:, None, None] + np.arange(2)[None, :, None]
        ok = np.broadcast_to(self.cam_col_ok[:, None, :], cam.shape)
        okp = np.broadcast_to(self.point_var[:, None, None], pt.shape)
        pcols = lay.point_base + 3 * self.point_index[:, None, None] + np.arange(3)
        return (np.concatenate([np.broadcast_to(obs_rows, cam.shape)[ok], np.broadcast_to(obs_rows, pt.shape)[okp]]),
                np.concatenate([np.broadcast_to(self.cam_col[:, None, :], cam.shape)[ok],
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
        chunks, csr = self.chunk_plan(nc, n_pts, dense)
        U = _Accumulator(nc, sparse_u)
        g = np.zeros(lay.n_var)
        g_pts = g[nc:].reshape(n_pts, 3)  # a view: g's point part
        V = np.zeros((n_pts, 3, 3))
        wt = np.zeros(3 * n_pts * nc if dense else len(csr[0]))  # W^T's values (dense, or CSR data)
        s_obs = sw[0:2 * n_obs:2]
        r_obs = (r * sw).reshape(-1, 2)
        for lo, hi, pts, pinv, dst, cinv in chunks:
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
                ok = self.cam_col_ok[obs[a]]
                if not ok.any():
                    continue
                block = cam[a:b][:, :, ok].reshape(-1, int(ok.sum()))
                cols_i = self.cam_col[obs[a]][ok]
                U.add(cols_i, block.T @ block)
                g[cols_i] += block.T @ r_c[a:b].ravel()
            pt_t = pt.transpose(0, 2, 1)  # batched products by matmul (einsum is several times slower here)
            n_p = pts.n
            pts.add(V, np.bincount((pinv[:, None] * 9 + np.arange(9)).ravel(), (pt_t @ pt).ravel(),
                                   minlength=9 * n_p).reshape(n_p, 3, 3))
            pts.add(g_pts, np.bincount((pinv[:, None] * 3 + np.arange(3)).ravel(), (pt_t @ r_c[:, :, None]).ravel(),
                                       minlength=3 * n_p).reshape(n_p, 3))
            wt_vals = pt_t @ cam
            for a in range(3):  # row a of every point: the same entries, its own values
                dst[a].add(wt, np.bincount(cinv, wt_vals[:, a, :].ravel(), minlength=dst[a].n))
        if dense:
            return U.matrix(), wt.reshape(3 * n_pts, nc), V, g
        Wt = csr_matrix((wt, *csr), shape=(3 * n_pts, nc))
        Wt.has_canonical_format = True
        return U.matrix(), Wt, V, g

    def chunk_plan(self, nc, n_pts, dense):
        """What normal_equations needs besides the values, the same in every iteration, so built once
        (per chunk size). Per chunk of CHUNK_OBSERVATIONS in image order: (lo, hi) in by_image; the
        points it touches (a _Scatter into V) and each observation's index among them; the W^T entries
        it touches (a _Scatter into W^T's values per row of a point) and each (observation, camera-side
        column)'s index among them: local indices keep every bincount as small as its chunk. And W^T's
        CSR indices and row pointers (None when dense). W^T's rows of a point hold the same columns
        (each observation fills all three), so its entries are per (point, column); in the CSR data a
        point's three rows follow one another."""
        key = (CHUNK_OBSERVATIONS, dense)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        order = self.by_image
        pidx = self.point_index[order]
        entry = (pidx[:, None] * nc + self.cam_col_or_0[order]).ravel()  # (point, column) of each pair
        m = self.cam_col.shape[1]
        if dense:
            n_entries, csr = n_pts * nc, None
        else:
            key_e, entry = np.unique(entry, return_inverse=True)
            entry = entry.ravel()
            point, column = np.divmod(key_e, nc)
            per_point = np.bincount(point, minlength=n_pts)
            first = np.searchsorted(point, np.arange(n_pts))  # each point's first entry
            k = np.arange(len(key_e)) - first[point]
            position = 3 * first[point] + k + per_point[point] * np.arange(3)[:, None]  # (3, entries)
            indices = np.empty(3 * len(key_e), np.int64)
            indices[position.ravel()] = np.tile(column, 3)
            csr = (indices, np.r_[0, np.cumsum(np.repeat(per_point, 3))])
            n_entries = len(key_e)
        chunks = []
        p_local, e_local = _LocalIndex(n_pts), _LocalIndex(n_entries)
        for lo in range(0, len(order), CHUNK_OBSERVATIONS):
            hi = min(lo + CHUNK_OBSERVATIONS, len(order))
            pts, n_new_p, pinv = p_local(pidx[lo:hi])
            used, n_new, cinv = e_local(entry[lo * m:hi * m])
            if dense:
                point, column = np.divmod(used, nc)
                rows = [(3 * point + a) * nc + column for a in range(3)]
            else:
                rows = position[:, used]
            chunks.append((lo, hi, _Scatter(pts, n_new_p), pinv, [_Scatter(d, n_new) for d in rows], cinv))
        self._plan = (key, (chunks, csr))
        return chunks, csr


class _LocalIndex:
    """Chunk by chunk, the distinct values of a chunk's array (in range(n)) and each value's index among
    them, the values no earlier chunk had first; by marking, no sort."""

    def __init__(self, n):
        self.touched = np.zeros(n, bool)
        self.lookup = np.empty(n, np.intp)

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
    """out[index] += values, where out is still zero at the first n_new of index: those are assigned
    (no gather; in a chunk most entries are new)."""

    def __init__(self, index, n_new):
        self.n = len(index)
        self.new, self.old = index[:n_new], index[n_new:]

    def add(self, out, values):
        n_new = len(self.new)
        out[self.new] = values[:n_new]
        if len(self.old):
            out[self.old] += values[n_new:]


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
