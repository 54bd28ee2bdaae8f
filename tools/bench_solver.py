"""Reduced camera system solvers, timed in isolation on a realistic adjustment (issue 12).

    python -m alignkit.tools.bench_solver dump --survey out/bench-scale/survey-250 \
        --workspace out/bench-scale/run-250/result_workspace --npz out/bench-scale/rcs-250.npz
    python -m alignkit.tools.bench_solver time out/bench-scale/rcs-250.npz

dump: reruns only the reconstruction of a finished run (features and matches come from a copy of its
workspace) and saves the normal equations (U, W^T, V, g) of its largest bundle adjustment, at the
start values, plus every adjustment's size and seconds. time: forms the damped Schur complement
S = U + lambda D - W V^-1 W^T densely and sparsely and solves S x = b by dense Cholesky, SuperLU
(two orderings) and block-Jacobi preconditioned conjugate gradients; prints JSON.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def recorder():
    """Patch core.bundle's solver with one that records every adjustment's size and seconds, and the
    normal equations (at the start values) of the largest. Returns (restore, largest, calls)."""
    from alignkit.core import bundle

    original = bundle.levenberg_marquardt
    largest, calls = {}, []

    def recording(x0, residuals, jacobian, n_robust, n_point_cols, *args):
        nc = len(x0) - n_point_cols
        if nc > largest.get("nc", -1):
            r = residuals(x0)
            U, Wt, V, g = jacobian.normal_equations(x0, r, np.ones(len(r)), False, sparse_u=True)
            largest.update(nc=nc, U=U.tocoo(), Wt=Wt.tocoo(), V=V, g=g)
        t = time.perf_counter()
        out = original(x0, residuals, jacobian, n_robust, n_point_cols, *args)
        calls.append((nc, n_point_cols // 3, out[1], time.perf_counter() - t))
        return out

    bundle.levenberg_marquardt = recording
    return (lambda: setattr(bundle, "levenberg_marquardt", original)), largest, calls


def save(npz, largest, calls):
    U, Wt = largest["U"], largest["Wt"]
    np.savez(npz, nc=largest["nc"], U_row=U.row, U_col=U.col, U_val=U.data, Wt_row=Wt.row, Wt_col=Wt.col,
             Wt_val=Wt.data, Wt_shape=np.array(Wt.shape), V=largest["V"], g=largest["g"],
             calls=np.array(calls, np.float64))
    calls = np.array(calls)
    return {"adjustments": len(calls), "largest_camera_cols": int(largest["nc"]),
            "largest_points": int(Wt.shape[0] // 3), "ba_seconds_total": float(calls[:, 3].sum()),
            "ba_seconds_in_largest_5": float(np.sort(calls[:, 3])[-5:].sum())}


def dump(survey, workspace, npz):
    from alignkit.core import pipeline
    from alignkit.core.config import AlignConfig

    restore, largest, calls = recorder()
    try:
        with tempfile.TemporaryDirectory(prefix="alignkit-rcs-") as tmp:
            ws = Path(tmp) / "ws"
            shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns("reconstruction.npz", "*.lock"))
            pipeline.run(AlignConfig(images=str(Path(survey) / "images"), output=str(Path(tmp) / "r.gpkg"),
                                     workspace=str(ws)))
    finally:
        restore()
    print(json.dumps(save(npz, largest, calls), indent=1))


def _timed(fn, repeat=3):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def time_solvers(npz, lam=1e-4):
    from scipy.linalg import cho_factor, cho_solve
    from scipy.sparse import bsr_matrix, coo_matrix, diags
    from scipy.sparse.linalg import LinearOperator, cg, splu, spsolve

    from alignkit.core.bundle_solver import inverse3, solve_sparse_spd

    d = np.load(npz, allow_pickle=False)
    nc = int(d["nc"])
    U = coo_matrix((d["U_val"], (d["U_row"], d["U_col"])), shape=(nc, nc)).tocsr()
    Wt = coo_matrix((d["Wt_val"], (d["Wt_row"], d["Wt_col"])), shape=tuple(d["Wt_shape"])).tocsr()
    V, g = d["V"], d["g"]
    n_pts = len(V)
    diag = np.clip(np.concatenate([U.diagonal(), np.diagonal(V, axis1=1, axis2=2).ravel()]), 1e-12, 1e32) * lam
    Vinv = inverse3(V + diag[nc:].reshape(-1, 3)[:, :, None] * np.eye(3)[None])
    W = Wt.T.tocsr()

    def form_sparse():
        Vs = bsr_matrix((Vinv, np.arange(n_pts), np.arange(n_pts + 1)), shape=(3 * n_pts,) * 2)
        WV = (W @ Vs).tocsr()
        return (U + diags(diag[:nc]) - WV @ W.T).tocsc(), -g[:nc] + WV @ g[nc:]

    t_sparse, (S, rhs) = _timed(form_sparse)
    t_dense_form, Sd = _timed(lambda: S.toarray(), 1)
    result = {"npz": str(npz), "camera_cols": nc, "points": n_pts, "observations_nnz_Wt": int(Wt.nnz),
              "S_nnz": int(S.nnz), "S_density": S.nnz / nc**2, "S_dense_mb": nc * nc * 8 / 2**20,
              "form_S_sparse_s": t_sparse, "densify_S_s": t_dense_form}
    t, x_ref = _timed(lambda: cho_solve(cho_factor(Sd), rhs))
    result["dense_cholesky_s"] = t

    def err(x):
        return float(np.abs(x - x_ref).max() / np.abs(x_ref).max())

    for name, fn in (
        ("splu_mmd_symmetric_s", lambda: solve_sparse_spd(S, rhs)),  # what the adjustment uses
        ("splu_colamd_symmetric_s", lambda: splu(S.tocsc(), permc_spec="COLAMD", diag_pivot_thresh=0.0,
                                                 options={"SymmetricMode": True}).solve(rhs)),
        ("splu_colamd_s", lambda: splu(S).solve(rhs)),
        ("spsolve_s", lambda: spsolve(S, rhs)),
    ):
        t, x = _timed(fn)
        result[name], result[name[:-2] + "_rel_err"] = t, err(x)
    # Block-Jacobi preconditioner: the 6x6 block of each camera, the intrinsic tail as one block.
    n6 = (nc // 6) * 6
    Sc = S.tocsr()

    def pcg(rtol):
        B = np.array([Sc[i:i + 6, i:i + 6].toarray() for i in range(0, n6, 6)])
        Binv = np.linalg.inv(B)
        tail = np.linalg.inv(Sc[n6:, n6:].toarray()) if n6 < nc else np.zeros((0, 0))

        def apply(v):
            out = np.empty_like(v)
            out[:n6] = np.matmul(Binv, v[:n6].reshape(-1, 6, 1)).ravel()
            out[n6:] = tail @ v[n6:]
            return out

        M = LinearOperator((nc, nc), matvec=apply)
        its = [0]
        x, info = cg(Sc, rhs, tol=rtol, atol=0.0, maxiter=5000, M=M, callback=lambda _: its.__setitem__(0, its[0] + 1))
        return x, its[0], info

    for rtol in (1e-6, 1e-10):
        t, (x, its, info) = _timed(lambda r=rtol: pcg(r), 1)
        key = f"pcg_block_jacobi_rtol{rtol:g}"
        result[key + "_s"], result[key + "_iterations"], result[key + "_rel_err"] = t, its, err(x)
        result[key + "_converged"] = info == 0
    calls = d["calls"]
    if len(calls):
        result["reconstruction_adjustments"] = len(calls)
        result["reconstruction_ba_seconds"] = float(calls[:, 3].sum())
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("dump")
    a.add_argument("--survey", required=True)
    a.add_argument("--workspace", required=True)
    a.add_argument("--npz", required=True)
    b = sub.add_parser("time")
    b.add_argument("npz")
    b.add_argument("--lam", type=float, default=1e-4)
    args = ap.parse_args(argv)
    if args.cmd == "dump":
        dump(args.survey, args.workspace, args.npz)
    else:
        print(json.dumps(time_solvers(args.npz, args.lam), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
