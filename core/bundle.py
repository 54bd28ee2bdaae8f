"""Sparse bundle adjustment: scipy.optimize.least_squares with an analytic sparse Jacobian.

Model (see interfaces.md): x_cam = R (X - C); u = f * xn * (1 + k1 r2 + k2 r2^2) + cx.
Parameters per image: a rotation increment w (R = exp([w]x) R0, so w starts at 0 and stays small)
and the centre C; per camera model: focal, k1, k2 (principal point held at its prior); per point: X.
Priors enter as extra residuals: GPS centres in ENU (separate horizontal / vertical sigma), the EXIF
focal (relative sigma), and, without GPS, one baseline length that fixes the scale.
The GPS prior may compare an offset antenna position with the GPS fix: antenna_i = C_i + F_i L, with
F_i a per-image frame given by the caller (e.g. along / across the flight direction: a GPS antenna
lever arm on the aircraft, or GPS latency) and L a 3-vector, optionally estimated with a zero-mean
prior that keeps the directions the block cannot see at 0.
The robust loss applies to reprojection residuals only: priors stay quadratic so a few pixel
outliers cannot switch off the georeferencing.
"""
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.spatial.transform import Rotation

from .cancel import check

ROBUST_LOSSES = ("linear", "huber", "soft_l1", "cauchy")
DENSE_SCHUR_LIMIT = 40_000_000  # camera x point columns below which the Schur complement is formed densely


@dataclass
class BundleResult:
    R: np.ndarray  # (N, 3, 3) world->camera rotations (all images; untouched ones copied)
    C: np.ndarray  # (N, 3) centres
    focal: np.ndarray  # (M,) per camera model
    k1: np.ndarray
    k2: np.ndarray
    points: np.ndarray  # (P, 3)
    gps_offset: np.ndarray  # (3,) GPS antenna offset L used (estimated when asked), in the caller's frames
    residual_px: np.ndarray  # (K, 2) final reprojection residuals (predicted - observed)
    initial_rms_px: float
    final_rms_px: float
    nfev: int
    seconds: float
    n_variables: int
    n_residuals: int
    status: str
    timings: dict = field(default_factory=dict)


def rotations_from_vectors(w):
    return Rotation.from_rotvec(np.asarray(w, dtype=np.float64).reshape(-1, 3)).as_matrix()


def _skew(v):
    """(n,3) -> (n,3,3) cross-product matrices."""
    s = np.zeros(v.shape[:-1] + (3, 3))
    s[..., 0, 1], s[..., 0, 2] = -v[..., 2], v[..., 1]
    s[..., 1, 0], s[..., 1, 2] = v[..., 2], -v[..., 0]
    s[..., 2, 0], s[..., 2, 1] = -v[..., 1], v[..., 0]
    return s


def _left_jacobian(w):
    """SO(3) left Jacobian J_l(w): d(exp([w]x) y)/dw = -[exp([w]x) y]x J_l(w)."""
    theta = np.linalg.norm(w, axis=1)
    small = theta < 1e-8
    t = np.where(small, 1.0, theta)
    a = np.where(small, 0.5, (1.0 - np.cos(t)) / t**2)
    b = np.where(small, 1.0 / 6.0, (t - np.sin(t)) / t**3)
    k = _skew(w)
    return np.eye(3)[None] + a[:, None, None] * k + b[:, None, None] * (k @ k)


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


def _robust_loss(kind, scale, n_robust):
    """A scipy loss callable applying `kind` with `scale` (px) to the first n_robust residuals only.

    rho'' is reported as 0 (iteratively reweighted least squares): scipy's second-order correction
    scales a residual's Jacobian row by sqrt(rho' + 2 z rho''), which is 0 for Huber / Cauchy beyond
    the scale, so a start with every residual beyond 1 px would not move at all.
    """
    s2 = float(scale) ** 2

    def loss(z):
        rho = np.empty((3, z.size))
        rho[0], rho[1], rho[2] = z, 1.0, 0.0
        zr = z[:n_robust]
        if kind == "huber":
            big = zr > s2
            sq = np.sqrt(zr[big])
            rho[0, :n_robust][big] = 2.0 * np.sqrt(s2) * sq - s2
            rho[1, :n_robust][big] = np.sqrt(s2) / sq
        elif kind == "soft_l1":
            t = 1.0 + zr / s2
            rho[0, :n_robust] = 2.0 * s2 * (np.sqrt(t) - 1.0)
            rho[1, :n_robust] = t**-0.5
        elif kind == "cauchy":
            t = 1.0 + zr / s2
            rho[0, :n_robust] = s2 * np.log(t)
            rho[1, :n_robust] = 1.0 / t
        return rho

    return loss


def build_problem(
    R,
    C,
    focal,
    k1,
    k2,
    pp,
    image_camera,
    points,
    obs_image,
    obs_point,
    obs_xy,
    *,
    fixed_images=None,
    fixed_points=None,
    refine_focal=True,
    refine_distortion=True,
    gps_enu=None,
    gps_sigma_h=1.0,
    gps_sigma_v=1.0,
    gps_offset=None,
    gps_offset_frames=None,
    estimate_gps_offset=False,
    gps_offset_sigma_m=1.0,
    focal_prior=None,
    focal_prior_sigma=0.05,
    scale_anchor=None,
    loss="huber",
    loss_scale_px=1.0,
    obs_sigma_px=1.0,
):
    """The least-squares problem: (x0, residuals(x), jacobian(x) -> csr, unpack(x), n_obs_residuals,
    n_point_columns); point parameters are the last columns.

    R (N,3,3), C (N,3): all images; only images that appear in obs_image and are not fixed vary.
    focal, k1, k2 (M,), pp (M,2): per camera model; image_camera (N,) model index of each image.
    points (P,3); obs_image, obs_point (K,) int; obs_xy (K,2) observed pixels.
    fixed_images / fixed_points: bool masks held constant (local BA). Intrinsics vary only when
    refine_focal / refine_distortion. gps_enu (N,3) with NaN rows for images without GPS; it also
    fixes the gauge. gps_offset_frames (N,3,3): per image, the ENU directions (columns) of the offset's
    axes; the GPS prior then compares C + frames @ gps_offset (None: 0) with the fix. estimate_gps_offset
    makes the offset a variable with a zero-mean prior of gps_offset_sigma_m (scalar or per axis).
    focal_prior (M,) EXIF focals (relative sigma focal_prior_sigma, scalar or (M,)).
    scale_anchor (i, j, length): keep |C_i - C_j| = length (gauge without GPS; fix image i too).
    """
    if loss not in ROBUST_LOSSES:
        raise ValueError(f"unknown robust loss {loss!r}; expected one of {', '.join(ROBUST_LOSSES)}")
    R = np.ascontiguousarray(R, dtype=np.float64)
    C = np.ascontiguousarray(C, dtype=np.float64)
    points = np.ascontiguousarray(points, dtype=np.float64)
    focal = np.array(focal, dtype=np.float64)
    k1 = np.array(k1, dtype=np.float64)
    k2 = np.array(k2, dtype=np.float64)
    pp = np.asarray(pp, dtype=np.float64).reshape(-1, 2)
    image_camera = np.asarray(image_camera, dtype=np.int64)
    obs_image = np.asarray(obs_image, dtype=np.int64)
    obs_point = np.asarray(obs_point, dtype=np.int64)
    obs_xy = np.asarray(obs_xy, dtype=np.float64)
    n_images, n_points, n_models, n_obs = len(R), len(points), len(focal), len(obs_image)
    fixed_images = np.zeros(n_images, bool) if fixed_images is None else np.asarray(fixed_images, bool).copy()
    fixed_points = np.zeros(n_points, bool) if fixed_points is None else np.asarray(fixed_points, bool)

    # Variable blocks and their column offsets.
    used_images = np.zeros(n_images, bool)
    used_images[obs_image] = True
    var_image = used_images & ~fixed_images
    used_points = np.zeros(n_points, bool)
    used_points[obs_point] = True
    var_point = used_points & ~fixed_points
    intr_cols = [refine_focal, refine_distortion, refine_distortion]  # focal, k1, k2
    n_intr = int(sum(intr_cols))
    used_models = np.zeros(n_models, bool)
    used_models[image_camera[obs_image[var_image[obs_image]]]] = True
    var_model = used_models if n_intr else np.zeros(n_models, bool)

    image_col = np.full(n_images, -1, np.int64)
    image_col[var_image] = 6 * np.arange(var_image.sum())
    model_col = np.full(n_models, -1, np.int64)
    base = 6 * int(var_image.sum())
    model_col[var_model] = base + n_intr * np.arange(var_model.sum())
    base += n_intr * int(var_model.sum())
    offset0 = np.zeros(3) if gps_offset is None else np.array(gps_offset, dtype=np.float64).reshape(3)
    frames = None if gps_offset_frames is None else np.asarray(gps_offset_frames, dtype=np.float64).reshape(-1, 3, 3)
    offset_col = -1
    if estimate_gps_offset and gps_enu is not None and frames is not None:
        offset_col = base  # among the camera columns so the Schur complement keeps it
        base += 3
    point_col = np.full(n_points, -1, np.int64)
    point_col[var_point] = base + 3 * np.arange(var_point.sum())
    n_var = base + 3 * int(var_point.sum())

    vi = np.flatnonzero(var_image)
    vm = np.flatnonzero(var_model)
    vp = np.flatnonzero(var_point)
    R0 = R.copy()

    has_gps = np.zeros(n_images, bool)
    if gps_enu is not None:
        gps_enu = np.asarray(gps_enu, dtype=np.float64)
        has_gps = np.isfinite(gps_enu).all(axis=1)
    gps_rows = np.flatnonzero(var_image & has_gps)
    gps_weight = np.array([1.0 / gps_sigma_h, 1.0 / gps_sigma_h, 1.0 / gps_sigma_v])
    focal_rows = vm if (refine_focal and focal_prior is not None) else np.zeros(0, np.int64)
    if focal_prior is not None:
        focal_prior = np.asarray(focal_prior, dtype=np.float64)
    focal_sigma = np.broadcast_to(np.asarray(focal_prior_sigma, dtype=np.float64), (n_models,))  # per model
    anchor = None
    if scale_anchor is not None:
        ai, aj, length = scale_anchor
        if var_image[ai] or var_image[aj]:
            anchor = (int(ai), int(aj), float(length), 1e3 / max(float(length), 1e-9))
    if offset_col >= 0 and not len(gps_rows):
        offset_col = -1  # nothing observes it (fixed images only): keep the columns out
        n_var -= 3
        point_col[var_point] -= 3
    n_offset_res = 3 if offset_col >= 0 else 0
    offset_sigma = np.broadcast_to(np.asarray(gps_offset_sigma_m, dtype=np.float64), (3,))  # per axis
    n_res = 2 * n_obs + 3 * len(gps_rows) + len(focal_rows) + (1 if anchor else 0) + n_offset_res

    def unpack_offset(x):
        return x[offset_col : offset_col + 3] if offset_col >= 0 else offset0

    def unpack(x):
        Rc, Cc, fc, k1c, k2c, Pc = R0.copy(), C.copy(), focal.copy(), k1.copy(), k2.copy(), points.copy()
        w = np.zeros((n_images, 3))
        if len(vi):
            blk = x[: 6 * len(vi)].reshape(-1, 6)
            w[vi] = blk[:, :3]
            Rc[vi] = rotations_from_vectors(blk[:, :3]) @ R0[vi]
            Cc[vi] = blk[:, 3:]
        if len(vm):
            blk = x[model_col[vm[0]] : model_col[vm[0]] + n_intr * len(vm)].reshape(-1, n_intr)
            c = 0
            for arr, on in zip((fc, k1c, k2c), intr_cols):
                if on:
                    arr[vm] = blk[:, c]
                    c += 1
        if len(vp):
            Pc[vp] = x[point_col[vp[0]] :].reshape(-1, 3)
        return Rc, Cc, w, fc, k1c, k2c, Pc

    def pack():
        x = np.zeros(n_var)
        if len(vi):
            x[: 6 * len(vi)] = np.column_stack([np.zeros((len(vi), 3)), C[vi]]).ravel()
        if len(vm):
            cols = [a[vm] for a, on in zip((focal, k1, k2), intr_cols) if on]
            x[model_col[vm[0]] : model_col[vm[0]] + n_intr * len(vm)] = np.column_stack(cols).ravel()
        if offset_col >= 0:
            x[offset_col : offset_col + 3] = offset0
        if len(vp):
            x[point_col[vp[0]] :] = points[vp].ravel()
        return x

    cam_of_obs = image_camera[obs_image]
    obs_weight = 1.0 / float(obs_sigma_px)  # pixel residuals in units of their std, comparable to the priors

    def residuals(x):
        Rc, Cc, _, fc, k1c, k2c, Pc = unpack(x)
        uv, _ = project(
            Rc[obs_image], Cc[obs_image], fc[cam_of_obs], k1c[cam_of_obs], k2c[cam_of_obs], pp[cam_of_obs],
            Pc[obs_point],
        )
        parts = [((uv - obs_xy) * obs_weight).ravel()]
        if len(gps_rows):
            antenna = Cc[gps_rows]
            if frames is not None:
                antenna = antenna + frames[gps_rows] @ unpack_offset(x)
            parts.append(((antenna - gps_enu[gps_rows]) * gps_weight).ravel())
        if len(focal_rows):
            parts.append((fc[focal_rows] - focal_prior[focal_rows]) / (focal_sigma[focal_rows] * focal_prior[focal_rows]))
        if anchor:
            ai, aj, length, wgt = anchor
            parts.append([(np.linalg.norm(Cc[ai] - Cc[aj]) - length) * wgt])
        if n_offset_res:
            parts.append(unpack_offset(x) / offset_sigma)
        return np.concatenate(parts)

    n_cam_block = 6 + n_intr  # camera-side columns an observation touches: its image's 6, its model's
    cam_of_obs_col = np.concatenate([  # (K, 6 + n_intr) those column indices (-1: held constant)
        np.where(var_image[obs_image], image_col[obs_image], -1)[:, None] + np.arange(6) * var_image[obs_image][:, None],
        np.where(var_model[cam_of_obs], model_col[cam_of_obs], -1)[:, None]
        + np.arange(n_intr) * var_model[cam_of_obs][:, None],
    ], axis=1)
    cam_col_ok = cam_of_obs_col >= 0
    cam_col_or_0 = np.where(cam_col_ok, cam_of_obs_col, 0)  # scatter index; held columns carry zeros
    obs_point_var = var_point[obs_point]
    by_image = np.argsort(obs_image, kind="stable")  # observations grouped by image, for U's blocks
    image_start = np.searchsorted(obs_image[by_image], np.arange(n_images + 1))
    point_base = n_var - 3 * len(vp)  # first point column (= the camera-side column count)
    obs_point_index = np.where(obs_point_var, (point_col[obs_point] - point_base) // 3, 0)  # index among variable points

    def obs_blocks(x):
        """Per observation (weighted by obs_weight): d(u,v)/d(camera-side columns) (K,2,6+n_intr), zero
        where held, and d(u,v)/d(point) (K,2,3), zero where the point is held."""
        Rc, Cc, w, fc, k1c, k2c, Pc = unpack(x)
        Ro, Co, Po = Rc[obs_image], Cc[obs_image], Pc[obs_point]
        f, a1, a2 = fc[cam_of_obs], k1c[cam_of_obs], k2c[cam_of_obs]
        xc = np.matmul(Ro, (Po - Co)[:, :, None])[:, :, 0]
        z = xc[:, 2]
        xn, yn = xc[:, 0] / z, xc[:, 1] / z
        r2 = xn * xn + yn * yn
        d = 1.0 + a1 * r2 + a2 * r2 * r2
        dd = 2.0 * (a1 + 2.0 * a2 * r2)  # d(d)/d(r2) * 2
        # d(u,v)/d(xn,yn)
        j_n = np.empty((n_obs, 2, 2))
        j_n[:, 0, 0] = f * (d + xn * dd * xn)
        j_n[:, 0, 1] = f * xn * dd * yn
        j_n[:, 1, 0] = f * yn * dd * xn
        j_n[:, 1, 1] = f * (d + yn * dd * yn)
        # d(xn,yn)/d(xc)
        j_p = np.zeros((n_obs, 2, 3))
        j_p[:, 0, 0] = 1.0 / z
        j_p[:, 0, 2] = -xn / z
        j_p[:, 1, 1] = 1.0 / z
        j_p[:, 1, 2] = -yn / z
        j_x = j_n @ j_p  # (K,2,3) d(u,v)/d(xc)
        cam = np.zeros((n_obs, 2, n_cam_block))
        m = var_image[obs_image]
        if m.any():
            jl = _left_jacobian(w[obs_image[m]])
            cam[m, :, :3] = -(j_x[m] @ _skew(xc[m])) @ jl
            cam[m, :, 3:6] = -(j_x[m] @ Ro[m])
        m = var_model[cam_of_obs]
        if m.any():
            c = 6
            if refine_focal:
                cam[m, :, c] = np.column_stack([d * xn, d * yn])[m]
                c += 1
            if refine_distortion:
                cam[m, :, c] = np.column_stack([f * xn * r2, f * yn * r2])[m]
                cam[m, :, c + 1] = np.column_stack([f * xn * r2 * r2, f * yn * r2 * r2])[m]
        pt = np.where(obs_point_var[:, None, None], j_x @ Ro, 0.0)
        return cam * obs_weight, pt * obs_weight

    def prior_jacobian(x):
        """The prior rows (GPS, focal, scale anchor, antenna offset) as (rows, cols, vals), rows from 2K."""
        _, Cc, _, _, _, _, _ = unpack(x)
        rows, cols, vals = [], [], []
        row = 2 * n_obs
        if len(gps_rows):
            r = row + np.arange(3 * len(gps_rows))
            c = (image_col[gps_rows][:, None] + 3 + np.arange(3)[None]).ravel()
            rows.append(r)
            cols.append(c)
            vals.append(np.tile(gps_weight, len(gps_rows)))
            if offset_col >= 0:  # fixed frames: the offset enters linearly, d/dL = frame
                rr = (r.reshape(-1, 3)[:, :, None]).repeat(3, axis=2)
                rows.append(rr.ravel())
                cols.append(np.broadcast_to(offset_col + np.arange(3), rr.shape).ravel())
                vals.append((frames[gps_rows] * gps_weight[None, :, None]).ravel())
            row += 3 * len(gps_rows)
        if len(focal_rows):
            rows.append(row + np.arange(len(focal_rows)))
            cols.append(model_col[focal_rows])
            vals.append(1.0 / (focal_sigma[focal_rows] * focal_prior[focal_rows]))
            row += len(focal_rows)
        if anchor:
            ai, aj, length, wgt = anchor
            diff = Cc[ai] - Cc[aj]
            g = diff / max(np.linalg.norm(diff), 1e-12) * wgt
            for idx, sign in ((ai, 1.0), (aj, -1.0)):
                if var_image[idx]:
                    rows.append(np.full(3, row))
                    cols.append(image_col[idx] + 3 + np.arange(3))
                    vals.append(sign * g)
            row += 1
        if n_offset_res:
            rows.append(row + np.arange(3))
            cols.append(offset_col + np.arange(3))
            vals.append(1.0 / offset_sigma)
        return rows, cols, vals

    def jacobian(x):
        cam, pt = obs_blocks(x)
        obs_rows = (2 * np.arange(n_obs)[:, None, None] + np.arange(2)[None, :, None])
        rows, cols, vals = prior_jacobian(x)
        ok = np.broadcast_to(cam_col_ok[:, None, :], cam.shape)
        rows.append(np.broadcast_to(obs_rows, cam.shape)[ok])
        cols.append(np.broadcast_to(cam_of_obs_col[:, None, :], cam.shape)[ok])
        vals.append(cam[ok])
        okp = np.broadcast_to(obs_point_var[:, None, None], pt.shape)
        rows.append(np.broadcast_to(obs_rows, pt.shape)[okp])
        cols.append(np.broadcast_to(point_base + 3 * obs_point_index[:, None, None] + np.arange(3), pt.shape)[okp])
        vals.append(pt[okp])
        return coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_res, n_var)
        ).tocsr()

    def normal_equations(x, r, sw, dense_wt):
        """J^T J and J^T r of the robustly weighted problem (row weights sw), assembled per observation
        rather than through a sparse J (several times faster): U (nc, nc) for the camera-side columns,
        Wt (3P, nc) (dense when dense_wt, else CSR) the point-camera coupling, V (P, 3, 3) the point
        blocks, g (n_var,)."""
        nc = point_base
        cam, pt = obs_blocks(x)
        s_obs = sw[0:2 * n_obs:2]
        cam *= s_obs[:, None, None]
        pt *= s_obs[:, None, None]
        r_obs = (r[:2 * n_obs] * sw[:2 * n_obs]).reshape(-1, 2)
        pt_t = pt.transpose(0, 2, 1)  # batched products by matmul (einsum is several times slower here)
        # U and its gradient per image: an image's observations share their columns (its own 6 and its
        # model's), so one (2K_i x m)^T (2K_i x m) product each, with no K x m x m temporaries
        U = np.zeros((nc, nc))
        g = np.zeros(n_var)
        cam_sorted, r_sorted = cam[by_image], r_obs[by_image]
        for i in np.flatnonzero(np.diff(image_start)):
            lo, hi = image_start[i], image_start[i + 1]
            ok = cam_col_ok[by_image[lo]]
            if not ok.any():
                continue
            block = cam_sorted[lo:hi][:, :, ok].reshape(-1, int(ok.sum()))
            cols_i = cam_of_obs_col[by_image[lo]][ok]
            U[np.ix_(cols_i, cols_i)] += block.T @ block
            g[cols_i] += block.T @ r_sorted[lo:hi].ravel()
        n_pts = len(vp)
        V = np.bincount((obs_point_index[:, None] * 9 + np.arange(9)).ravel(),
                        (pt_t @ pt).ravel(), minlength=9 * n_pts).reshape(n_pts, 3, 3)
        g[nc:] = np.bincount((3 * obs_point_index[:, None] + np.arange(3)).ravel(),
                             (pt_t @ r_obs[:, :, None]).ravel(), minlength=3 * n_pts)
        wt_rows = (3 * obs_point_index[:, None, None] + np.arange(3)[None, :, None])
        wt_vals = pt_t @ cam
        wt_rows, wt_cols = np.broadcast_arrays(wt_rows, cam_col_or_0[:, None, :])
        if dense_wt:
            Wt = np.bincount((wt_rows * nc + wt_cols).ravel(), wt_vals.ravel(),
                             minlength=3 * n_pts * nc).reshape(3 * n_pts, nc)
        else:
            Wt = coo_matrix((wt_vals.ravel(), (wt_rows.ravel(), wt_cols.ravel())), shape=(3 * n_pts, nc)).tocsr()
        rows, cols, vals = prior_jacobian(x)
        if rows:
            rows = np.concatenate(rows)
            prior = coo_matrix((np.concatenate(vals) * sw[rows], (rows - 2 * n_obs, np.concatenate(cols))),
                               shape=(n_res - 2 * n_obs, nc)).tocsr()
            U += (prior.T @ prior).toarray()
            g[:nc] += prior.T @ (r[2 * n_obs:] * sw[2 * n_obs:])
        return U, Wt, V, g

    jacobian.normal_equations = normal_equations  # the LM solver's fast path (scipy's uses jacobian)
    unpack.gps_offset = unpack_offset  # not in unpack's tuple: callers unpack 7 values
    return pack(), residuals, jacobian, unpack, 2 * n_obs, 3 * len(vp)


def bundle_adjust(R, C, focal, k1, k2, pp, image_camera, points, obs_image, obs_point, obs_xy, *,
                  loss="huber", loss_scale_px=1.0, max_nfev=50, ftol=1e-6, verbose=0, tr_options=None, solver="lm",
                  is_canceled=None, **options):
    """Refine poses, intrinsics and points; return a BundleResult.

    R (N,3,3), C (N,3): all images; only images that appear in obs_image and are not fixed vary.
    focal, k1, k2 (M,), pp (M,2): per camera model; image_camera (N,) model index of each image.
    points (P,3); obs_image, obs_point (K,) int; obs_xy (K,2) observed pixels.
    options (see build_problem): fixed_images / fixed_points bool masks held constant (local BA);
    refine_focal / refine_distortion; gps_enu (N,3) NaN rows = no GPS, with gps_sigma_h / gps_sigma_v
    (it also fixes the gauge); gps_offset / gps_offset_frames / estimate_gps_offset / gps_offset_sigma_m
    a GPS antenna offset in per-image frames; focal_prior (M,) EXIF focals with relative focal_prior_sigma;
    scale_anchor (i, j, length) keeps |C_i - C_j| = length (gauge without GPS; hold image i fixed too);
    obs_sigma_px: std of the pixel observations, weighting them against the priors.
    solver: "lm" (Levenberg-Marquardt on the normal equations, points eliminated by the Schur
    complement; the default, several times faster) or "scipy" (least_squares "trf" + lsmr with the same
    analytic sparse Jacobian and x_scale="jac"). is_canceled is polled between iterations.
    """
    t0 = time.perf_counter()
    x0, residuals, jacobian, unpack, n_obs_res, n_point_cols = build_problem(
        R, C, focal, k1, k2, pp, image_camera, points, obs_image, obs_point, obs_xy, loss=loss,
        loss_scale_px=loss_scale_px, **options)
    sigma_px = float(options.get("obs_sigma_px", 1.0))
    loss_scale = loss_scale_px / sigma_px  # the robust scale in the units of the weighted residuals
    obs_xy = np.asarray(obs_xy, dtype=np.float64)
    n_obs = len(obs_xy)
    r_all = residuals(x0)
    n_res = len(r_all)
    r0 = r_all[:n_obs_res]
    initial_rms = float(np.sqrt(np.mean(r0**2))) * sigma_px if n_obs else 0.0
    t_setup = time.perf_counter() - t0
    if len(x0) == 0 or n_obs == 0:
        res_x, nfev, status = x0, 0, "nothing to adjust"
    elif solver == "lm":
        res_x, nfev, status = _levenberg_marquardt(
            x0, residuals, jacobian, n_obs_res, n_point_cols, loss, loss_scale, max_nfev, ftol, is_canceled)
    else:
        sol = least_squares(
            residuals,
            x0,
            jac=jacobian,
            method="trf",
            x_scale="jac",
            loss=_robust_loss(loss, loss_scale, n_obs_res),
            tr_solver="lsmr",
            tr_options=tr_options or {},
            max_nfev=max_nfev,
            ftol=ftol,
            xtol=1e-10,
            gtol=1e-10,
            verbose=verbose,
        )
        res_x, nfev, status = sol.x, int(sol.nfev), str(sol.message)
    Rc, Cc, _, fc, k1c, k2c, Pc = unpack(res_x)
    res = residuals(res_x)[:n_obs_res].reshape(-1, 2) * sigma_px
    seconds = time.perf_counter() - t0
    return BundleResult(
        R=Rc, C=Cc, focal=fc, k1=k1c, k2=k2c, points=Pc, gps_offset=np.array(unpack.gps_offset(res_x)), residual_px=res,
        initial_rms_px=initial_rms, final_rms_px=float(np.sqrt(np.mean(res**2))) if n_obs else 0.0,
        nfev=nfev, seconds=seconds, n_variables=len(x0), n_residuals=n_res,
        status=status, timings={"setup_s": t_setup, "solve_s": seconds - t_setup},
    )


def _inverse3(m):
    """Batched inverse of (n,3,3) matrices by the adjugate (much faster than np.linalg.inv for 3x3)."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    g, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    adj = np.empty_like(m)
    adj[:, 0, 0], adj[:, 0, 1], adj[:, 0, 2] = e * i - f * h, c * h - b * i, b * f - c * e
    adj[:, 1, 0], adj[:, 1, 1], adj[:, 1, 2] = f * g - d * i, a * i - c * g, c * d - a * f
    adj[:, 2, 0], adj[:, 2, 1], adj[:, 2, 2] = d * h - e * g, b * g - a * h, a * e - b * d
    det = a * adj[:, 0, 0] + b * adj[:, 1, 0] + c * adj[:, 2, 0]
    return adj / det[:, None, None]


def _loss_weights(kind, scale, z):
    """rho(z) and rho'(z) of a robust loss at squared residual norms z (scale in px)."""
    s2 = float(scale) ** 2
    if kind == "huber":
        big = z > s2
        sq = np.sqrt(np.where(big, z, 1.0))
        return np.where(big, 2.0 * np.sqrt(s2) * sq - s2, z), np.where(big, np.sqrt(s2) / sq, 1.0)
    if kind == "soft_l1":
        t = 1.0 + z / s2
        return 2.0 * s2 * (np.sqrt(t) - 1.0), t**-0.5
    if kind == "cauchy":
        t = 1.0 + z / s2
        return s2 * np.log(t), 1.0 / t
    return z, np.ones_like(z)


def _levenberg_marquardt(x0, residuals, jacobian, n_robust, n_point_cols, loss, scale, max_iter, ftol,
                         is_canceled=None):
    """Levenberg-Marquardt on the normal equations, points eliminated by a Schur complement.

    The robust loss is applied per observation (2-vector norm) by iteratively reweighting. The point
    block of J^T J is block-diagonal (3x3 per point), so the reduced camera system has the size of the
    camera and intrinsic parameters only and is solved densely by Cholesky.
    """
    from scipy.linalg import LinAlgError, cho_factor, cho_solve
    from scipy.sparse import bsr_matrix

    n_var = len(x0)
    nc = n_var - n_point_cols
    n_pts = n_point_cols // 3

    def cost_and_weights(r):
        z = r[0:n_robust:2] ** 2 + r[1:n_robust:2] ** 2
        rho, drho = _loss_weights(loss, scale, z)
        sw = np.ones(len(r))
        sw[:n_robust] = np.repeat(np.sqrt(drho), 2)
        return 0.5 * (rho.sum() + np.sum(r[n_robust:] ** 2)), sw

    x = x0.copy()
    r = residuals(x)
    cost, sw = cost_and_weights(r)
    lam = 1e-4
    nfev, status = 1, "maximum number of iterations reached"
    for _ in range(max_iter):
        check(is_canceled)  # between iterations: a large adjustment still stops within about a second
        # Small enough: the camera-point block dense, so the Schur products are BLAS calls.
        dense = nc * n_point_cols <= DENSE_SCHUR_LIMIT
        U, Wt, Vb, g = jacobian.normal_equations(x, r, sw, dense)  # Wt (3P, nc): W transposed, point-major
        diag_a = np.clip(np.concatenate([np.diagonal(U), np.diagonal(Vb, axis1=1, axis2=2).ravel()]), 1e-12, 1e32)
        Wt_dense = Wt.reshape(n_pts, 3, nc) if dense else None
        W = None if dense else Wt.T.tocsr()
        step_taken = False
        while lam < 1e12:
            dd = lam * diag_a
            if n_pts:
                Vd = Vb + dd[nc:].reshape(-1, 3)[:, :, None] * np.eye(3)[None]
                Vinv = _inverse3(Vd)
                if Wt_dense is not None:
                    VWt = np.matmul(Vinv, Wt_dense).reshape(n_point_cols, nc)  # V^-1 W^T
                    S = U + np.diag(dd[:nc]) - Wt.T @ VWt
                    rhs = -g[:nc] + VWt.T @ g[nc:]
                else:
                    Vinv_s = bsr_matrix((Vinv, np.arange(n_pts), np.arange(n_pts + 1)), shape=(n_point_cols,) * 2)
                    WV = (W @ Vinv_s).tocsr()
                    S = U + np.diag(dd[:nc]) - (WV @ W.T).toarray()
                    rhs = -g[:nc] + WV @ g[nc:]
            else:
                S, rhs = U + np.diag(dd[:nc]), -g[:nc]
            try:
                dc = cho_solve(cho_factor(S), rhs) if nc else np.zeros(0)
            except LinAlgError:
                lam *= 10.0
                continue
            dp = -np.matmul(Vinv, (g[nc:] + Wt @ dc).reshape(-1, 3, 1)).ravel() if n_pts else np.zeros(0)
            dx = np.concatenate([dc, dp])
            x_new = x + dx
            r_new = residuals(x_new)
            nfev += 1
            cost_new, sw_new = cost_and_weights(r_new)
            if np.isfinite(cost_new) and cost_new < cost:
                reduction = (cost - cost_new) / max(cost, 1e-300)
                x, r, cost, sw = x_new, r_new, cost_new, sw_new
                lam = max(lam / 3.0, 1e-10)
                step_taken = True
                break
            lam *= 10.0
        if not step_taken:
            status = "no further decrease"
            break
        if reduction < ftol:
            status = "relative cost decrease below ftol"
            break
    return x, nfev, status


def refine_points(R, C, focal, k1, k2, pp, image_camera, points, obs_image, obs_point, obs_xy, *,
                  loss="huber", loss_scale_px=1.0, iterations=5):
    """Refine 3D points with every camera held fixed: independent 3x3 Gauss-Newton steps, vectorised.

    Used for the points left out of a subsampled bundle adjustment (their cameras moved a little).
    Returns the refined (P,3) array; points without observations are returned unchanged.
    """
    points = np.array(points, dtype=np.float64)
    obs_image = np.asarray(obs_image, np.int64)
    obs_point = np.asarray(obs_point, np.int64)
    cam = np.asarray(image_camera, np.int64)[obs_image]
    f, a1, a2, c = np.asarray(focal)[cam], np.asarray(k1)[cam], np.asarray(k2)[cam], np.asarray(pp)[cam]
    Ro, Co = R[obs_image], C[obs_image]
    n_pts = len(points)
    for _ in range(iterations):
        xc = np.matmul(Ro, (points[obs_point] - Co)[:, :, None])[:, :, 0]
        z = xc[:, 2]
        xn, yn = xc[:, 0] / z, xc[:, 1] / z
        r2 = xn * xn + yn * yn
        d = 1.0 + a1 * r2 + a2 * r2 * r2
        dd = 2.0 * (a1 + 2.0 * a2 * r2)
        res = np.column_stack([f * d * xn + c[:, 0], f * d * yn + c[:, 1]]) - obs_xy
        j_n = np.empty((len(z), 2, 2))
        j_n[:, 0, 0] = f * (d + xn * dd * xn)
        j_n[:, 0, 1] = f * xn * dd * yn
        j_n[:, 1, 0] = j_n[:, 0, 1]
        j_n[:, 1, 1] = f * (d + yn * dd * yn)
        j_p = np.zeros((len(z), 2, 3))
        j_p[:, 0, 0] = j_p[:, 1, 1] = 1.0 / z
        j_p[:, 0, 2] = -xn / z
        j_p[:, 1, 2] = -yn / z
        J = j_n @ j_p @ Ro  # d(u,v)/dX
        _, w = _loss_weights(loss, loss_scale_px, (res**2).sum(1))
        ju, jv = J[:, 0, :], J[:, 1, :]
        A = np.empty((n_pts, 3, 3))
        g = np.empty((n_pts, 3))
        for a in range(3):
            g[:, a] = np.bincount(obs_point, weights=w * (ju[:, a] * res[:, 0] + jv[:, a] * res[:, 1]), minlength=n_pts)
            for b in range(a, 3):
                A[:, a, b] = A[:, b, a] = np.bincount(
                    obs_point, weights=w * (ju[:, a] * ju[:, b] + jv[:, a] * jv[:, b]), minlength=n_pts)
        A += 1e-9 * np.eye(3)
        seen = np.bincount(obs_point, minlength=n_pts) > 0
        step = np.zeros_like(points)
        step[seen] = -np.matmul(_inverse3(A[seen]), g[seen][:, :, None])[:, :, 0]
        points += np.where(np.isfinite(step), step, 0.0)
    return points


def robust_gps_sigmas(residual, floor_h=0.05, floor_v=0.1):
    """Horizontal / vertical GPS std from adjusted-minus-GPS residuals (N,3) by MAD (NaN rows ignored)."""
    r = residual[np.isfinite(residual).all(axis=1)]
    if len(r) < 3:
        return None
    h = r[:, :2] - np.median(r[:, :2], axis=0)
    v = r[:, 2] - np.median(r[:, 2])
    sigma_h = 1.4826 * np.median(np.abs(h))
    sigma_v = 1.4826 * np.median(np.abs(v))
    return max(float(sigma_h), floor_h), max(float(sigma_v), floor_v)
