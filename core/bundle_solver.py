"""The bundle adjustment's solvers: Levenberg-Marquardt on the normal equations with the points
eliminated by a Schur complement (the default), and the robust losses both solvers use.

The LM solver needs only `jacobian.normal_equations(x, r, sw, dense) -> (U, Wt, V, g)` from the
problem (core/bundle.py), whatever residual blocks it was assembled from.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .cancel import check

DENSE_SCHUR_LIMIT = 40_000_000  # camera x point columns below which the Schur complement is formed densely
# Camera-side columns (6 per photo) from which the reduced camera system is kept sparse and factorised
# by a sparse LU (SuperLU, symmetric mode): each camera couples only with the cameras it shares points
# with, so memory and time grow with the block instead of its square and cube. Measured (docs/SCALE.md):
# equal at 250-500 photos, sparse 1.6x faster at 1,000 and 3.9x at 2,000; dense Cholesky below.
SPARSE_SCHUR_MIN_COLS = 3000
# Non-zeros of W from which the sparse Schur product W V^-1 W^T runs by row blocks on threads (SciPy's
# sparse products release the GIL): the finishing adjustments of a big block run while the pool is idle.
THREADED_SCHUR_MIN_NNZ = 1_000_000


def robust_loss(kind, scale, n_robust):
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


def inverse3(m):
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


def loss_weights(kind, scale, z):
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


def levenberg_marquardt(x0, residuals, jacobian, n_robust, n_point_cols, loss, scale, max_iter, ftol,
                         is_canceled=None):
    """Levenberg-Marquardt on the normal equations, points eliminated by a Schur complement.

    The robust loss is applied per observation (2-vector norm) by iteratively reweighting. The point
    block of J^T J is block-diagonal (3x3 per point), so the reduced camera system has the size of the
    camera and intrinsic parameters only: solved densely by Cholesky, or from SPARSE_SCHUR_MIN_COLS
    camera-side columns on kept sparse and solved by a sparse factorisation.
    """
    from scipy.linalg import LinAlgError

    n_var = len(x0)
    nc = n_var - n_point_cols
    n_pts = n_point_cols // 3

    def cost_and_weights(r):
        return _cost_and_weights(r, n_robust, loss, scale)

    x = x0.copy()
    r = residuals(x)
    cost, sw = cost_and_weights(r)
    lam = 1e-4
    nfev, status = 1, "maximum number of iterations reached"
    for _ in range(max_iter):
        check(is_canceled)  # between iterations: a large adjustment still stops within about a second
        # Small enough: the camera-point block dense, so the Schur products are BLAS calls.
        sparse_s = nc >= SPARSE_SCHUR_MIN_COLS
        dense = not sparse_s and nc * n_point_cols <= DENSE_SCHUR_LIMIT
        if sparse_s:  # Wt (3P, nc): W transposed, point-major
            U, Wt, Vb, g = jacobian.normal_equations(x, r, sw, False, sparse_u=True)
        else:
            U, Wt, Vb, g = jacobian.normal_equations(x, r, sw, dense)
        diag_a = _diagonal(U, Vb)
        Wt_dense = Wt.reshape(n_pts, 3, nc) if dense else None
        W = None if dense else Wt.T.tocsr()
        step_taken = False
        while lam < 1e12:
            dd = lam * diag_a
            S, rhs, Vinv = _reduced_system(U, Wt, Wt_dense, W, Vb, g, dd, nc, sparse_s)
            try:
                dc = _solve_spd(S, rhs, sparse_s) if nc else np.zeros(0)
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
        del U, Wt, W, Wt_dense, S  # before the next assembly: W^T and W take ~230 bytes per observation each
        if reduction < ftol:
            status = "relative cost decrease below ftol"
            break
    return x, nfev, status


def _cost_and_weights(r, n_robust, loss, scale):
    """The robust cost of residuals r (the first n_robust are reprojection pairs) and the row weights
    sqrt(rho') that turn it into weighted least squares (iterative reweighting)."""
    z = r[0:n_robust:2] ** 2 + r[1:n_robust:2] ** 2
    rho, drho = loss_weights(loss, scale, z)
    sw = np.ones(len(r))
    sw[:n_robust] = np.repeat(np.sqrt(drho), 2)
    return 0.5 * (rho.sum() + np.sum(r[n_robust:] ** 2)), sw


def _diagonal(U, Vb):
    """The diagonal of the normal equations (cameras, then points), kept off zero and infinity."""
    return np.clip(np.concatenate([U.diagonal(), np.diagonal(Vb, axis1=1, axis2=2).ravel()]), 1e-12, 1e32)


def _solve_spd(S, rhs, sparse):
    """S x = rhs for the reduced camera system: sparse factorisation or dense Cholesky."""
    from scipy.linalg import cho_factor, cho_solve

    return solve_sparse_spd(S, rhs) if sparse else cho_solve(cho_factor(S), rhs)


def _reduced_system(U, Wt, Wt_dense, W, Vb, g, dd, nc, sparse_s):
    """The reduced camera system S dc = rhs (points eliminated by the Schur complement) of the damped
    normal equations (damping dd on the diagonal), and the damped point blocks' inverses."""
    from scipy.sparse import bsr_matrix, diags

    n_pts = len(Vb)
    if not n_pts:
        return U + (diags(dd[:nc]) if sparse_s else np.diag(dd[:nc])), -g[:nc], np.zeros((0, 3, 3))
    Vinv = inverse3(Vb + dd[nc:].reshape(-1, 3)[:, :, None] * np.eye(3)[None])
    if Wt_dense is not None:
        VWt = np.matmul(Vinv, Wt_dense).reshape(3 * n_pts, nc)  # V^-1 W^T
        return U + np.diag(dd[:nc]) - Wt.T @ VWt, -g[:nc] + VWt.T @ g[nc:], Vinv
    Vinv_s = bsr_matrix((Vinv, np.arange(n_pts), np.arange(n_pts + 1)), shape=(3 * n_pts,) * 2)
    WVW, WVg = _schur_product(W, Vinv_s, Wt, g[nc:])
    S = U + diags(dd[:nc]) - WVW if sparse_s else U + np.diag(dd[:nc]) - WVW.toarray()
    return S, -g[:nc] + WVg, Vinv


def _threads():
    """Threads this process may keep busy: its CPUs, or OMP_NUM_THREADS when set (a pool worker gets 1:
    its siblings have the other cores)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(n, int(env))) if env.isdigit() else n


def _schur_product(W, Vinv_s, Wt, g_points):
    """W V^-1 W^T (CSR) and W V^-1 g_points; by blocks of W's rows of equal non-zeros on threads when W is
    big. W^T is taken as it is (CSR): W.T would be converted back to CSR first."""
    from scipy.sparse import vstack

    def block(rows):
        WV = (W[rows] @ Vinv_s).tocsr()
        return WV @ Wt, WV @ g_points

    threads = _threads() if W.nnz >= THREADED_SCHUR_MIN_NNZ else 1
    if threads == 1:
        return block(slice(None))
    cuts = np.searchsorted(W.indptr, np.linspace(0, W.nnz, threads + 1)[1:-1])
    bounds = np.r_[0, cuts, W.shape[0]]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(block, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
    return vstack([p[0] for p in parts], format="csr"), np.concatenate([p[1] for p in parts])


def camera_covariance(x, residuals, jacobian, n_robust, n_point_cols, loss, scale, cols):
    """Covariance of camera-side parameters `cols` at the solution x: the (cols, cols) block of the
    inverse of the reduced camera system (J^T J with the points eliminated, robust weights of x),
    scaled by the a-posteriori variance factor (weighted residual sum of squares per redundancy)."""
    n_var = len(x)
    nc = n_var - n_point_cols
    r = residuals(x)
    _, sw = _cost_and_weights(r, n_robust, loss, scale)
    sparse_s = nc >= SPARSE_SCHUR_MIN_COLS
    U, Wt, Vb, g = jacobian.normal_equations(x, r, sw, False, sparse_u=sparse_s)
    S, _, _ = _reduced_system(U, Wt, None, Wt.T.tocsr(), Vb, g, 1e-12 * _diagonal(U, Vb), nc, sparse_s)
    unit = np.zeros((nc, len(cols)))
    unit[np.asarray(cols), np.arange(len(cols))] = 1.0
    inv_cols = _solve_spd(S, unit, sparse_s)  # one factorisation for every column
    variance_factor = float(np.sum((sw * r) ** 2)) / max(len(r) - n_var, 1)
    return variance_factor * inv_cols[np.asarray(cols)]


def solve_sparse_spd(S, rhs):
    """Solve the sparse symmetric positive definite system S x = rhs (scipy sparse matrix; rhs (n,) or (n, k)).

    SuperLU in symmetric mode with a minimum-degree ordering of S + S^T and diagonal pivots: for a
    reduced camera system this is a sparse Cholesky in all but name. COLAMD instead: 1.67 s against
    0.95 s on the 1,000-photo block's reduced system (6,004 columns, 3.9 % full), though 0.055 s
    against 1.33 s on a denser 185-photo one, which takes the dense path (docs/SCALE.md). Raises
    LinAlgError when S is singular or the solution is not finite (the LM loop then raises its damping).
    """
    from scipy.linalg import LinAlgError
    from scipy.sparse.linalg import splu

    try:
        lu = splu(S.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
    except RuntimeError as exc:  # "Factor is exactly singular"
        raise LinAlgError(str(exc)) from None
    x = lu.solve(np.asarray(rhs, np.float64))
    if not np.isfinite(x).all():
        raise LinAlgError("sparse reduced camera system: non-finite solution")
    return x
