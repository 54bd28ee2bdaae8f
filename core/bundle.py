"""Sparse bundle adjustment: a problem assembled from residual blocks, solved by Levenberg-Marquardt.

Model (see interfaces.md): x_cam = R (X - C); u = f * xn * (1 + k1 r2 + k2 r2^2) + cx.
Parameters per image: a rotation increment w (R = exp([w]x) R0, so w starts at 0 and stays small)
and the centre C; per camera model: focal, k1, k2 (principal point held at its prior); named
parameter groups (a GPS antenna offset, a GPS drift, ...); per point: X.

The problem is the reprojection block (core/bundle_reprojection.py: most of the work; the LM solver
assembles its normal equations per observation for the Schur complement) plus any list of prior blocks
(core/bundle_blocks.py: GPS prior, focal prior, scale anchor, group prior, gravity prior, point
prior), each with its own analytic Jacobian. `build_problem` turns the keyword options into blocks;
callers with evidence of their own (control points) pass more blocks in `blocks=`.
The robust loss applies to reprojection residuals only: priors stay quadratic so a few pixel
outliers cannot switch off the georeferencing.
"""
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix

from .bundle_blocks import (
    DistortionPrior,
    FocalPrior,
    GpsPrior,
    GravityPrior,
    GroupPrior,
    Layout,
    MeanAxisPrior,
    ScaleAnchor,
    State,
    rotations_from_vectors,
)
from .bundle_reprojection import Reprojection, project
from .bundle_solver import camera_covariance, inverse3, levenberg_marquardt, loss_weights, robust_loss

ROBUST_LOSSES = ("linear", "huber", "soft_l1", "cauchy")
HELD_DISTORTION_SIGMA = 1e-7  # k1, k2 of a held lens move by less than this (normalised coordinates)
__all__ = ["BundleResult", "build_problem", "bundle_adjust", "project", "refine_points", "robust_gps_sigmas",
           "rotations_from_vectors", "ROBUST_LOSSES"]


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
    groups: dict = field(default_factory=dict)  # final value of every parameter group (e.g. "gps_drift")
    # with distortion_covariance: model -> (2, 2) covariance of its (k1, k2) at the solution
    distortion_covariance: dict = field(default_factory=dict)


def _add_prior_normal_equations(U, Wt, V, g, J, r_w, nc):
    """Add a sparse prior Jacobian J (rows already robust-weighted) to the Schur pieces: camera-side
    products to U, point-camera to Wt, point-point (within one point only) to V."""
    g += J.T @ r_w
    P = (J.T @ J).tocoo()
    a, b, v = P.row, P.col, P.data
    cam = (a < nc) & (b < nc)
    if isinstance(U, np.ndarray):
        np.add.at(U, (a[cam], b[cam]), v[cam])
    else:
        U = (U + coo_matrix((v[cam], (a[cam], b[cam])), shape=U.shape)).tocsr()
    pc = (a >= nc) & (b < nc)
    if pc.any():
        if isinstance(Wt, np.ndarray):
            np.add.at(Wt, (a[pc] - nc, b[pc]), v[pc])
        else:
            Wt = Wt + coo_matrix((v[pc], (a[pc] - nc, b[pc])), shape=Wt.shape).tocsr()
    pp = (a >= nc) & (b >= nc)
    if pp.any():
        pa, pb = (a[pp] - nc) // 3, (b[pp] - nc) // 3
        if (pa != pb).any():
            raise ValueError("a prior block couples two points: the Schur complement cannot take it")
        np.add.at(V, (pa, (a[pp] - nc) % 3, (b[pp] - nc) % 3), v[pp])
    return U, Wt, V, g


class Problem:
    """Variables laid out once; residuals = [reprojection, *blocks]; a solver needs nothing else."""

    def __init__(self, lay, R0, C, focal, k1, k2, points, groups, reprojection, blocks):
        self.lay, self.R0, self.C, self.points = lay, R0, C, points
        self.focal, self.k1, self.k2 = focal, k1, k2
        self.groups = groups  # name -> start values
        self.reprojection = reprojection
        self.blocks = [b for b in blocks if b.n_res]
        self.vi = np.flatnonzero(lay.image_col >= 0)
        self.vm = np.flatnonzero(lay.model_col >= 0)
        self.vp = np.flatnonzero(lay.point_col >= 0)
        self.n_res = reprojection.n_res + sum(b.n_res for b in self.blocks)

    def pack(self):
        lay, x = self.lay, np.zeros(self.lay.n_var)
        if len(self.vi):
            x[: 6 * len(self.vi)] = np.column_stack([np.zeros((len(self.vi), 3)), self.C[self.vi]]).ravel()
        if len(self.vm):
            cols = [a[self.vm] for a, on in zip((self.focal, self.k1, self.k2), lay.intr) if on]
            x[lay.model_col[self.vm[0]]: lay.model_col[self.vm[0]] + len(cols) * len(self.vm)] = \
                np.column_stack(cols).ravel()
        for name, col in lay.group_col.items():
            x[col: col + len(self.groups[name])] = self.groups[name]
        if len(self.vp):
            x[lay.point_base:] = self.points[self.vp].ravel()
        return x

    def state(self, x):
        lay = self.lay
        Rc, Cc, Pc = self.R0.copy(), self.C.copy(), self.points.copy()
        fc, k1c, k2c = self.focal.copy(), self.k1.copy(), self.k2.copy()
        w = np.zeros((len(Rc), 3))
        vi, vm, vp = self.vi, self.vm, self.vp
        if len(vi):
            blk = x[: 6 * len(vi)].reshape(-1, 6)
            w[vi] = blk[:, :3]
            Rc[vi] = rotations_from_vectors(blk[:, :3]) @ self.R0[vi]
            Cc[vi] = blk[:, 3:]
        if len(vm):
            n_intr = int(sum(lay.intr))
            blk = x[lay.model_col[vm[0]]: lay.model_col[vm[0]] + n_intr * len(vm)].reshape(-1, n_intr)
            k = 0
            for arr, on in zip((fc, k1c, k2c), lay.intr):
                if on:
                    arr[vm] = blk[:, k]
                    k += 1
        if len(vp):
            Pc[vp] = x[lay.point_base:].reshape(-1, 3)
        groups = {name: (x[lay.group_col[name]: lay.group_col[name] + len(v)].copy() if name in lay.group_col
                         else np.asarray(v, np.float64).copy()) for name, v in self.groups.items()}
        return State(Rc, Cc, w, fc, k1c, k2c, Pc, groups)

    def residuals(self, x):
        s = self.state(x)
        return np.concatenate([self.reprojection.residuals(s)] + [b.residuals(s) for b in self.blocks])

    def prior_triplets(self, s):
        rows, cols, vals, row = [], [], [], self.reprojection.n_res
        for b in self.blocks:
            r, c, v = b.jacobian(s, self.lay)
            rows.append(np.asarray(r, np.int64) + row)
            cols.append(np.asarray(c, np.int64))
            vals.append(np.asarray(v, np.float64))
            row += b.n_res
        return rows, cols, vals

    def jacobian(self, x):
        s = self.state(x)
        rows, cols, vals = self.prior_triplets(s)
        r, c, v = self.reprojection.jacobian(s, self.lay)
        return coo_matrix((np.concatenate(vals + [v]), (np.concatenate(rows + [r]), np.concatenate(cols + [c]))),
                          shape=(self.n_res, self.lay.n_var)).tocsr()

    def normal_equations(self, x, r, sw, dense_wt, sparse_u=False):
        s = self.state(x)
        n = self.reprojection.n_res
        U, Wt, V, g = self.reprojection.normal_equations(s, r[:n], sw[:n], dense_wt, sparse_u)
        rows, cols, vals = self.prior_triplets(s)
        if rows:
            rows = np.concatenate(rows)
            J = coo_matrix((np.concatenate(vals) * sw[rows], (rows - n, np.concatenate(cols))),
                           shape=(self.n_res - n, self.lay.n_var)).tocsr()
            U, Wt, V, g = _add_prior_normal_equations(U, Wt, V, g, J, r[n:] * sw[n:], self.lay.point_base)
        return U, Wt, V, g


def build_problem(
    R, C, focal, k1, k2, pp, image_camera, points, obs_image, obs_point, obs_xy, *,
    fixed_images=None, fixed_points=None, refine_focal=True, refine_distortion=True,
    gps_enu=None, gps_sigma_h=1.0, gps_sigma_v=1.0,
    gps_offset=None, gps_offset_frames=None, estimate_gps_offset=False, gps_offset_sigma_m=1.0,
    gps_drift_basis=None, gps_drift=None, estimate_gps_drift=False, gps_drift_sigma_m=1e3,
    gravity_up=None, gravity_sigma_rad=None, mean_axis=None, mean_axis_sigma_rad=None, mean_axis_exclude=None,
    focal_prior=None, focal_prior_sigma=0.05, distortion_held=None, scale_anchor=None,
    blocks=(), groups=None,
    loss="huber", loss_scale_px=1.0, obs_sigma_px=1.0,
):
    """The least-squares problem: (x0, residuals(x), jacobian(x) -> csr, unpack(x), n_obs_residuals,
    n_point_columns); point parameters are the last columns. jacobian.normal_equations is the LM
    solver's fast path, jacobian.problem the Problem; unpack(x) gives (R, C, w, focal, k1, k2, points),
    unpack.gps_offset(x) the offset and unpack.groups(x) every parameter group.

    R (N,3,3), C (N,3): all images; only images that appear in obs_image and are not fixed vary.
    focal, k1, k2 (M,), pp (M,2): per camera model; image_camera (N,) model index of each image.
    points (P,3); obs_image, obs_point (K,) int; obs_xy (K,2) observed pixels.
    fixed_images / fixed_points: bool masks held constant (local BA). Intrinsics vary only when
    refine_focal / refine_distortion. gps_enu (N,3) with NaN rows for images without GPS; it also
    fixes the gauge. gps_offset_frames (N,3,3): per image, the ENU directions (columns) of the offset's
    axes; the GPS prior then compares C + frames @ gps_offset (None: 0) with the fix. estimate_gps_offset
    makes the offset a variable with a zero-mean prior of gps_offset_sigma_m (scalar or per axis).
    gps_drift_basis (N,3,k): per image, the ENU offset of the GPS fix per drift coefficient (e.g. the
    vertical bias's polynomial in capture time per flight); the fix is compared with the antenna plus
    basis @ gps_drift (start values, None: 0), estimated when estimate_gps_drift with a zero-mean prior
    of gps_drift_sigma_m (scalar or (k,)).
    gravity_up (N,3) with NaN rows: the world's up direction in each camera (recorded attitude), held
    with gravity_sigma_rad (scalar or (N,)). mean_axis (3,): the direction the variable cameras' optical
    axes point on average (a nadir block: (0, 0, -1)), held with mean_axis_sigma_rad; mean_axis_exclude
    (N,) bool: cameras left out of that mean.
    focal_prior (M,) EXIF focals (relative sigma focal_prior_sigma, scalar or (M,)).
    distortion_held (M,) bool: models whose k1, k2 stay at their start values (a tight prior) while
    refine_distortion frees the others.
    scale_anchor (i, j, length): keep |C_i - C_j| = length (gauge without GPS; fix image i too).
    blocks: more residual blocks (core/bundle_blocks.py, e.g. PointPrior for control points); groups
    {name: start values} the variable parameter groups they use.
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
    n_images, n_points, n_models = len(R), len(points), len(focal)
    fixed_images = np.zeros(n_images, bool) if fixed_images is None else np.asarray(fixed_images, bool).copy()
    fixed_points = np.zeros(n_points, bool) if fixed_points is None else np.asarray(fixed_points, bool)

    used_images = np.zeros(n_images, bool)
    used_images[obs_image] = True
    var_image = used_images & ~fixed_images
    used_points = np.zeros(n_points, bool)
    used_points[obs_point] = True
    var_point = used_points & ~fixed_points
    intr = (bool(refine_focal), bool(refine_distortion), bool(refine_distortion))
    n_intr = int(sum(intr))
    used_models = np.zeros(n_models, bool)
    used_models[image_camera[obs_image[var_image[obs_image]]]] = True
    var_model = used_models if n_intr else np.zeros(n_models, bool)

    has_gps = np.zeros(n_images, bool)
    if gps_enu is not None:
        gps_enu = np.asarray(gps_enu, dtype=np.float64)
        has_gps = np.isfinite(gps_enu).all(axis=1)
    gps_rows = np.flatnonzero(var_image & has_gps)

    # Parameter groups: start values, and which ones vary (among the camera-side columns, so the
    # Schur complement keeps them).
    group_start = {}
    variable = []
    terms = {}
    frames = None if gps_offset_frames is None else np.asarray(gps_offset_frames, dtype=np.float64).reshape(-1, 3, 3)
    if frames is not None:
        group_start["gps_offset"] = np.zeros(3) if gps_offset is None else np.array(gps_offset, np.float64).reshape(3)
        terms["gps_offset"] = frames[gps_rows]
        if estimate_gps_offset and gps_enu is not None and len(gps_rows):
            variable.append("gps_offset")
    if gps_drift_basis is not None:
        basis = np.asarray(gps_drift_basis, dtype=np.float64)
        k = basis.shape[2]
        group_start["gps_drift"] = np.zeros(k) if gps_drift is None else np.array(gps_drift, np.float64).reshape(k)
        terms["gps_drift"] = basis[gps_rows]
        if estimate_gps_drift and len(gps_rows):
            variable.append("gps_drift")
    for name, start in (groups or {}).items():
        group_start[name] = np.array(start, np.float64).ravel()
        variable.append(name)

    image_col = np.full(n_images, -1, np.int64)
    image_col[var_image] = 6 * np.arange(var_image.sum())
    model_col = np.full(n_models, -1, np.int64)
    base = 6 * int(var_image.sum())
    model_col[var_model] = base + n_intr * np.arange(var_model.sum())
    base += n_intr * int(var_model.sum())
    group_col = {}
    for name in variable:
        group_col[name] = base
        base += len(group_start[name])
    point_col = np.full(n_points, -1, np.int64)
    point_col[var_point] = base + 3 * np.arange(var_point.sum())
    lay = Layout(image_col, model_col, intr, group_col, point_col, base, base + 3 * int(var_point.sum()))

    prior_blocks = []
    if len(gps_rows):
        weight = np.array([1.0 / gps_sigma_h, 1.0 / gps_sigma_h, 1.0 / gps_sigma_v])
        prior_blocks.append(GpsPrior(gps_rows, gps_enu[gps_rows], weight, terms))
    if refine_focal and focal_prior is not None and len(np.flatnonzero(var_model)):
        sigma = np.broadcast_to(np.asarray(focal_prior_sigma, dtype=np.float64), (n_models,))
        prior_blocks.append(FocalPrior(np.flatnonzero(var_model), focal_prior, sigma))
    if refine_distortion and distortion_held is not None:
        held = np.flatnonzero(var_model & np.asarray(distortion_held, bool))
        if len(held):
            prior_blocks.append(DistortionPrior(held, k1, k2, HELD_DISTORTION_SIGMA))
    if scale_anchor is not None:
        ai, aj, length = scale_anchor
        if var_image[ai] or var_image[aj]:
            prior_blocks.append(ScaleAnchor(ai, aj, length))
    if "gps_offset" in group_col:
        prior_blocks.append(GroupPrior("gps_offset", 3, gps_offset_sigma_m))
    if "gps_drift" in group_col:
        prior_blocks.append(GroupPrior("gps_drift", len(group_start["gps_drift"]), gps_drift_sigma_m))
    if gravity_up is not None:
        up = np.asarray(gravity_up, dtype=np.float64)
        sig = np.broadcast_to(np.asarray(gravity_sigma_rad, dtype=np.float64), (n_images,))
        rows = np.flatnonzero(var_image & np.isfinite(up).all(axis=1) & np.isfinite(sig))
        if len(rows):
            prior_blocks.append(GravityPrior(rows, up[rows], sig[rows]))
    if mean_axis is not None:
        axis_images = var_image if mean_axis_exclude is None else var_image & ~np.asarray(mean_axis_exclude, bool)
        if axis_images.any():
            prior_blocks.append(MeanAxisPrior(np.flatnonzero(axis_images), mean_axis, mean_axis_sigma_rad))
    prior_blocks.extend(blocks)

    reprojection = Reprojection(lay, image_camera, pp, obs_image, obs_point, obs_xy, obs_sigma_px)
    problem = Problem(lay, R.copy(), C, focal, k1, k2, points, group_start, reprojection, prior_blocks)

    def unpack(x):
        s = problem.state(x)
        return s.R, s.C, s.w, s.focal, s.k1, s.k2, s.points

    def jacobian(x):
        return problem.jacobian(x)

    jacobian.normal_equations = problem.normal_equations  # the LM solver's fast path (scipy's uses jacobian)
    jacobian.problem = problem
    unpack.gps_offset = lambda x: problem.state(x).groups.get("gps_offset", np.zeros(3))  # not in unpack's tuple
    unpack.groups = lambda x: problem.state(x).groups
    return problem.pack(), problem.residuals, jacobian, unpack, reprojection.n_res, 3 * int(var_point.sum())


def bundle_adjust(R, C, focal, k1, k2, pp, image_camera, points, obs_image, obs_point, obs_xy, *,
                  loss="huber", loss_scale_px=1.0, max_nfev=50, ftol=1e-6, verbose=0, tr_options=None, solver="lm",
                  is_canceled=None, distortion_covariance=False, **options):
    """Refine poses, intrinsics and points; return a BundleResult.

    R (N,3,3), C (N,3): all images; only images that appear in obs_image and are not fixed vary.
    focal, k1, k2 (M,), pp (M,2): per camera model; image_camera (N,) model index of each image.
    points (P,3); obs_image, obs_point (K,) int; obs_xy (K,2) observed pixels.
    options: see build_problem (fixed blocks, intrinsics, GPS prior with offset and drift, gravity
    prior, focal prior, scale anchor, extra blocks and groups, obs_sigma_px: std of the pixel
    observations, weighting them against the priors).
    solver: "lm" (Levenberg-Marquardt on the normal equations, points eliminated by the Schur
    complement; the default, several times faster) or "scipy" (least_squares "trf" + lsmr with the same
    analytic sparse Jacobian and x_scale="jac"). is_canceled is polled between iterations.
    distortion_covariance: also the covariance of each refined model's (k1, k2) at the solution
    (one more assembly of the normal equations; the distortion gate's evidence).
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
        res_x, nfev, status = levenberg_marquardt(
            x0, residuals, jacobian, n_obs_res, n_point_cols, loss, loss_scale, max_nfev, ftol, is_canceled)
    else:
        sol = least_squares(
            residuals, x0, jac=jacobian, method="trf", x_scale="jac", loss=robust_loss(loss, loss_scale, n_obs_res),
            tr_solver="lsmr", tr_options=tr_options or {}, max_nfev=max_nfev, ftol=ftol, xtol=1e-10, gtol=1e-10,
            verbose=verbose,
        )
        res_x, nfev, status = sol.x, int(sol.nfev), str(sol.message)
    Rc, Cc, _, fc, k1c, k2c, Pc = unpack(res_x)
    covariances = {}
    if distortion_covariance and n_obs and nfev:
        lay = jacobian.problem.lay
        models = np.flatnonzero(lay.model_col >= 0)
        cols = lay.distortion_cols(models)
        if len(models) and (cols >= 0).all():
            cov = camera_covariance(res_x, residuals, jacobian, n_obs_res, n_point_cols, loss, loss_scale, cols.ravel())
            covariances = {int(m): cov[2 * k:2 * k + 2, 2 * k:2 * k + 2] for k, m in enumerate(models)}
    res = residuals(res_x)[:n_obs_res].reshape(-1, 2) * sigma_px
    seconds = time.perf_counter() - t0
    return BundleResult(
        R=Rc, C=Cc, focal=fc, k1=k1c, k2=k2c, points=Pc, gps_offset=np.array(unpack.gps_offset(res_x)), residual_px=res,
        initial_rms_px=initial_rms, final_rms_px=float(np.sqrt(np.mean(res**2))) if n_obs else 0.0,
        nfev=nfev, seconds=seconds, n_variables=len(x0), n_residuals=n_res,
        status=status, timings={"setup_s": t_setup, "solve_s": seconds - t_setup}, groups=unpack.groups(res_x),
        distortion_covariance=covariances,
    )


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
        _, w = loss_weights(loss, loss_scale_px, (res**2).sum(1))
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
        step[seen] = -np.matmul(inverse3(A[seen]), g[seen][:, :, None])[:, :, 0]
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
