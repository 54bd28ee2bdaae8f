"""The control-point adjustment: a final bundle adjustment of a finished reconstruction with ground
control, and the triangulation of points from fixed cameras (check points).

Control points enter as 3D points with a prior at their surveyed ENU position (per axis: sigma_h,
sigma_h, sigma_v; quadratic, like every prior) and their image measurements as reprojection
residuals under the same robust loss as the tie points. The GPS priors stay with the weights the
reconstruction estimated, and the antenna offset it found is kept. With three or more control points
spread over the block the focal is freed (a weak prior only): the control settles the focal/height
trade-off. With fewer, the EXIF focal prior stays and the GPS fixes what control cannot; the log says so.

The adjustment always starts from the saved reconstruction (the workspace's reconstruction.npz), so
editing control and running again redoes only this step.
"""
import time

import cv2
import numpy as np

from .bundle import build_problem, refine_points
from .bundle_blocks import PointPrior
from .bundle_solver import levenberg_marquardt
from .reconstruction import Reconstruction, flight_frames, umeyama

FREED_FOCAL_SIGMA = 0.25  # relative focal prior once control settles the focal (keeps LM well-posed)
TIE_POINTS_PER_IMAGE = 400  # tie points per image in the control adjustment (the rest follow the cameras)
MIN_SPREAD_RATIO = 0.25  # control spans the block when its smaller horizontal extent is this share of the block's
MAX_ITERATIONS = 60
MIN_CONTROL_RELIEF = 0.05  # control height range / flying height needed to free the focal
MAX_CONTROL_MISFIT = 3.0  # RMS prior sigmas: a freed focal that pulls the block off its control is not trusted
HELD_FOCAL_SIGMA = 1e-5  # relative: a focal the reconstruction held at EXIF stays there (as in reconstruction.py)
GPS_BIAS_SIGMA_M = 100.0  # prior on the GPS block bias against control: free in practice (datum differences)
FTOL = 1e-6  # relative cost decrease that ends the adjustment, as the reconstruction's final ones
MIN_SIGMA_PX = 0.05


def image_models(cams):
    """(model index per image, list of first image of each model) from cams' camera_key."""
    keys = [c["camera_key"] for c in cams]
    order = list(dict.fromkeys(keys))
    return np.array([order.index(k) for k in keys], np.int64), [keys.index(k) for k in order]


def triangulate(img, xy, R, C, focal, k1, k2, pp):
    """One point from its measurements (image index (m,), pixels (m,2)) with cameras held fixed:
    DLT on undistorted rays, then Gauss-Newton. focal/k1/k2 (N,) and pp (N,2) per image.
    Returns (X (3,), residual pixels (m,2)); X is NaN with fewer than two registered views."""
    img = np.asarray(img, np.int64)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    ok = np.isfinite(C[img]).all(1)
    if ok.sum() < 2:
        return np.full(3, np.nan), np.full((len(img), 2), np.nan)
    rows = []
    for i, (u, v) in zip(img[ok], xy[ok]):
        K = np.array([[focal[i], 0, pp[i, 0]], [0, focal[i], pp[i, 1]], [0, 0, 1.0]])
        n = cv2.undistortPoints(np.array([[[u, v]]]), K, np.array([k1[i], k2[i], 0.0, 0.0])).ravel()
        P = np.hstack([R[i], -R[i] @ C[i][:, None]])
        rows += [n[0] * P[2] - P[0], n[1] * P[2] - P[1]]
    h = np.linalg.svd(np.array(rows))[2][-1]
    X = h[:3] / h[3]
    sel = np.flatnonzero(ok)
    X = refine_points(R, C, focal, k1, k2, pp, np.arange(len(C)), X[None], img[sel], np.zeros(len(sel), np.int64),
                      xy[sel], loss="linear", iterations=10)[0]
    return X, reprojection(X, img, xy, R, C, focal, k1, k2, pp)


def reprojection(X, img, xy, R, C, focal, k1, k2, pp):
    """Predicted minus measured pixels of a point X in images img (NaN where the image has no pose)."""
    from .bundle import project

    img = np.asarray(img, np.int64)
    ok = np.isfinite(C[img]).all(1)
    out = np.full((len(img), 2), np.nan)
    if ok.any():
        i = img[ok]
        uv, _ = project(R[i], C[i], focal[i], k1[i], k2[i], pp[i], np.repeat(np.asarray(X)[None], len(i), 0))
        out[ok] = uv - np.asarray(xy, np.float64).reshape(-1, 2)[ok]
    return out


def spans_block(control_en, camera_en):
    """Whether control points (M,2) spread over the block of camera positions (N,2): at least three,
    and their extent along the block's narrower principal axis is a fair share of the block's."""
    if len(control_en) < 3:
        return False
    mu = camera_en.mean(0)
    _, vec = np.linalg.eigh(np.cov((camera_en - mu).T))
    cam_proj = (camera_en - mu) @ vec
    ctl_proj = (control_en - mu) @ vec
    cam_span = np.ptp(cam_proj, axis=0)
    ctl_span = np.ptp(ctl_proj, axis=0)
    return bool(np.all(ctl_span >= MIN_SPREAD_RATIO * np.maximum(cam_span, 1e-9)))


def adjust_with_control(recon, cams, gps_enu, control, config, is_canceled=None):
    """Bundle-adjust `recon` with control points. control: [(name, enu (3,), sigma (3,), img (m,), xy (m,2))]
    for the usable control points (image indices into cams). Returns (Reconstruction, {name: adjusted
    ENU}, log lines, whether the focal was freed). The input reconstruction is not modified."""
    t0 = time.perf_counter()
    log = []
    reg = recon.registered.copy()
    n_img = len(reg)
    model, first = image_models(cams)
    pp_img = np.array([c["K"][:2, 2] for c in cams], np.float64)
    focal_prior = np.array([0.5 * (cams[i]["K"][0, 0] + cams[i]["K"][1, 1]) for i in first])
    ref = [int(np.flatnonzero(reg & (model == m))[0]) if (reg & (model == m)).any() else first[m]
           for m in range(len(first))]
    focal_m = np.where(np.isfinite(recon.focal[ref]), recon.focal[ref], focal_prior)
    k1_m, k2_m = np.nan_to_num(recon.k1[ref]), np.nan_to_num(recon.k2[ref])
    pp_m = pp_img[first]
    R = np.where(reg[:, None, None], recon.R, np.eye(3))
    C = np.where(reg[:, None], recon.C, 0.0)
    points = recon.points.copy()

    used = [(name, np.asarray(s, float), np.asarray(sg, float), np.asarray(im, np.int64), np.asarray(xy, float))
            for name, s, sg, im, xy in control]
    # Only measurements in registered photos count; a point needs two of them.
    used = [(n, s, sg, im[reg[im]], xy[reg[im]]) for n, s, sg, im, xy in used if reg[im].sum() >= 2]
    f_img, k1_img, k2_img = focal_m[model], k1_m[model], k2_m[model]
    tri = np.array([triangulate(im, xy, R, np.where(reg[:, None], C, np.nan), f_img, k1_img, k2_img, pp_img)[0]
                    for _, _, _, im, xy in used]).reshape(-1, 3)
    surveyed = np.array([u[1] for u in used]).reshape(-1, 3)
    spread = spans_block(surveyed[:, :2], C[reg, :2])
    height = float(np.median(C[reg, 2])) - float(np.mean(surveyed[:, 2])) if len(used) else 0.0
    relief = float(np.ptp(surveyed[:, 2])) / max(height, 1e-9) if len(used) else 0.0
    if len(used) >= 3 and spread:
        s, rot, t = umeyama(tri, surveyed)  # start on the control: the adjustment then only refines
        C = np.where(reg[:, None], s * C @ rot.T + t, 0.0)
        R = np.where(reg[:, None, None], R @ rot.T, np.eye(3))
        points = s * points @ rot.T + t
        tri = s * tri @ rot.T + t
        log.append(f"control: {len(used)} control points span the block (similarity to control: scale {s:.4f})")
    elif used:
        shift = np.mean(surveyed - tri, axis=0)
        C = np.where(reg[:, None], C + shift, 0.0)
        points = points + shift
        tri = tri + shift
        why = "fewer than three control points" if len(used) < 3 else "the control points do not span the block"
        log.append(f"control: {why} ({len(used)} used): georeferencing falls back to the GPS for what control "
                   "cannot fix (rotation, scale, focal)")
    # The focal/height trade-off is settled by control at different heights (relief over the flying height).
    free_focal = len(used) >= 3 and spread and relief >= MIN_CONTROL_RELIEF
    if len(used) >= 3 and spread and not free_focal:
        log.append(f"control: the control points are nearly level (height range {100 * relief:.1f}% of the flying "
                   "height): they cannot settle the focal/height trade-off, the focal keeps its prior")

    # Tie points: a subset with the longest tracks (spread by a seeded shuffle), their observations.
    rng = np.random.default_rng(config.seed)
    track_len = np.bincount(recon.obs_point, minlength=len(points))
    score = track_len + rng.uniform(0, 1, len(points))
    n_keep = min(len(points), TIE_POINTS_PER_IMAGE * int(reg.sum()))
    keep = np.zeros(len(points), bool)
    keep[np.argsort(-score)[:n_keep]] = True
    tie_obs = np.flatnonzero(keep[recon.obs_point] & reg[recon.obs_image])
    tie_index = np.cumsum(keep) - 1
    n_tie = int(keep.sum())
    obs_image = [recon.obs_image[tie_obs]]
    obs_point = [tie_index[recon.obs_point[tie_obs]]]
    obs_xy = [recon.obs_xy[tie_obs]]
    for k, (_, _, _, im, xy) in enumerate(used):
        obs_image.append(im)
        obs_point.append(np.full(len(im), n_tie + k, np.int64))
        obs_xy.append(xy)
    obs_image, obs_point, obs_xy = np.concatenate(obs_image), np.concatenate(obs_point), np.concatenate(obs_xy)
    all_points = np.vstack([points[keep], tri])

    # Image noise from the reconstruction's own residuals (robust), as the reconstruction weighs it.
    res0 = reprojection_all(R, C, f_img, k1_img, k2_img, pp_img, points, recon.obs_image, recon.obs_point,
                            recon.obs_xy)
    sigma_px = max(1.4826 * float(np.median(np.abs(res0[np.isfinite(res0)]))), MIN_SIGMA_PX) if len(res0) else 1.0
    gps = np.asarray(gps_enu, np.float64) if gps_enu is not None else np.full((n_img, 3), np.nan)
    # The reconstruction's GPS drift in capture time (core.georef), when it modelled one, stays as it
    # found it: the fixes are corrected by it, and the control adds one constant bias on top.
    drift = np.asarray(getattr(recon, "gps_drift", np.zeros((0, 3))), np.float64)
    gps_fix = gps - np.nan_to_num(drift) if drift.shape == gps.shape else gps
    offset = recon.gps_antenna_offset_m
    offset = np.zeros(3) if not np.isfinite(offset).all() else offset
    rejected = np.asarray(recon.focal_rejected_px, np.float64)
    held = np.isfinite(rejected[ref]) if len(rejected) == n_img else np.zeros(len(first), bool)
    sigmas = np.array([u[2] for u in used]).reshape(-1, 3)

    frames = flight_frames(gps)
    with_gps = reg & np.isfinite(gps).all(1)
    bias0 = (np.mean(gps_fix[with_gps] - C[with_gps] - frames[with_gps] @ offset, axis=0) if with_gps.any()
             else np.zeros(3))

    def solve(free):
        # Freed: a weak prior at EXIF. Otherwise as the reconstruction had it (held where its gate held it).
        prior = focal_prior if free else np.where(held, focal_m, focal_prior)
        sigma = FREED_FOCAL_SIGMA if free else np.where(held, HELD_FOCAL_SIGMA, config.focal_prior_sigma)
        x0, residuals, jacobian, unpack, n_obs_res, n_point_cols = build_problem(
            R, C, focal_m, k1_m, k2_m, pp_m, model, all_points, obs_image, obs_point, obs_xy,
            fixed_images=~reg, refine_focal=config.refine_focal or free, refine_distortion=config.refine_distortion,
            gps_enu=gps_fix if np.isfinite(gps).all(1).any() else None,
            gps_sigma_h=recon.gps_sigma_h_m, gps_sigma_v=recon.gps_sigma_v_m,
            gps_offset=offset, gps_offset_frames=frames,
            # The GPS's own datum (a constant ENU bias against the surveyed control) is estimated: its
            # estimated sigmas describe its scatter, not its offset from the control's reference.
            gps_drift_basis=np.broadcast_to(np.eye(3), (n_img, 3, 3)), gps_drift=bias0, estimate_gps_drift=True,
            gps_drift_sigma_m=GPS_BIAS_SIGMA_M,
            focal_prior=prior, focal_prior_sigma=sigma,
            blocks=[PointPrior(n_tie + np.arange(len(used)), surveyed, sigmas)],
            loss=config.robust_loss, loss_scale_px=config.robust_scale_px, obs_sigma_px=sigma_px)
        x, nfev, status = levenberg_marquardt(x0, residuals, jacobian, n_obs_res, n_point_cols, config.robust_loss,
                                              config.robust_scale_px / sigma_px, MAX_ITERATIONS, FTOL, is_canceled)
        return unpack(x), nfev, status, unpack.groups(x).get("gps_drift", np.zeros(3))

    def control_misfit(P):  # RMS of the control residuals in prior sigmas
        return float(np.sqrt(np.mean(((P[n_tie:] - surveyed) / sigmas) ** 2))) if len(used) else 0.0

    # A focal the reconstruction held (its self-calibration ran off) stays held unless the control
    # contradicts it; a self-calibrated one is freed. The other choice is tried when the control is missed.
    allowed = free_focal
    free_focal = allowed and not held.any()
    sol = solve(free_focal)
    misfit = control_misfit(sol[0][6])
    if allowed and misfit > MAX_CONTROL_MISFIT:
        other = solve(not free_focal)
        misfit_other = control_misfit(other[0][6])
        log.append(f"control: with the focal {'freed' if free_focal else 'held'} the control points are missed by "
                   f"{misfit:.1f} sigmas ({misfit_other:.1f} with it {'held' if free_focal else 'freed'})")
        if misfit_other < misfit:
            sol, free_focal = (other[0], sol[1] + other[1], other[2], other[3]), not free_focal
        else:
            sol = (sol[0], sol[1] + other[1], sol[2], sol[3])
    (Rn, Cn, _, fn, k1n, k2n, Pn), nfev, status, bias = sol
    if free_focal:
        log.append("control: the control points span the block in plan and height: the focal is freed, the control "
                   "settles the focal/height trade-off")
    elif allowed:
        agree = "agrees with it" if control_misfit(Pn) <= MAX_CONTROL_MISFIT else "does not free it either"
        log.append("control: the focal stays held at its prior (the reconstruction found its self-calibration "
                   f"unreliable) and the control {agree}")
    adjusted = {u[0]: Pn[n_tie + k] for k, u in enumerate(used)}
    # Every point follows the adjusted cameras (the subset's start from their adjusted position).
    pts = points.copy()
    pts[keep] = Pn[:n_tie]
    f_img, k1_img, k2_img = fn[model], k1n[model], k2n[model]
    pts = refine_points(Rn, Cn, f_img, k1_img, k2_img, pp_img, np.arange(n_img), pts, recon.obs_image,
                        recon.obs_point, recon.obs_xy, loss=config.robust_loss, loss_scale_px=config.robust_scale_px,
                        iterations=3)
    out = _updated(recon, Rn, Cn, f_img, k1_img, k2_img, pp_img, pts, gps, offset)
    focal_change = 100.0 * (fn / focal_m - 1.0)
    log.append(f"control adjustment: {len(used)} control points, {n_tie} tie points, {nfev} iterations ({status}), "
               f"focal {', '.join(f'{f:.1f} px ({c:+.2f}%)' for f, c in zip(fn, focal_change))}, GPS bias against "
               f"the control {-bias[0]:+.2f} / {-bias[1]:+.2f} / {-bias[2]:+.2f} m (E/N/U), "
               f"{time.perf_counter() - t0:.1f} s")
    out.log = list(recon.log) + log
    out.timings = dict(recon.timings, control_adjust_s=time.perf_counter() - t0)
    return out, adjusted, log, free_focal


def reprojection_all(R, C, focal, k1, k2, pp, points, obs_image, obs_point, obs_xy):
    from .bundle import project

    if not len(obs_image):
        return np.zeros((0, 2))
    uv, _ = project(R[obs_image], C[obs_image], focal[obs_image], k1[obs_image], k2[obs_image], pp[obs_image],
                    points[obs_point])
    return uv - obs_xy


def _updated(recon, R, C, f_img, k1_img, k2_img, pp_img, points, gps, offset):
    """A copy of recon with new cameras, intrinsics and points, and every statistic recomputed."""
    reg = recon.registered
    R = np.where(reg[:, None, None], R, np.nan)
    C = np.where(reg[:, None], C, np.nan)
    res = reprojection_all(np.nan_to_num(R), np.nan_to_num(C), f_img, k1_img, k2_img, pp_img, points,
                           recon.obs_image, recon.obs_point, recon.obs_xy)
    err = np.linalg.norm(res, axis=1)
    n_pts = len(points)
    cnt = np.bincount(recon.obs_point, minlength=n_pts)
    n_obs = np.bincount(recon.obs_image, minlength=len(reg))
    sq = np.bincount(recon.obs_image, weights=err**2, minlength=len(reg))
    frames = flight_frames(gps)
    antenna = C + frames @ offset
    fields = {k: getattr(recon, k) for k in recon.__dataclass_fields__}
    fields.update(
        R=R, C=C, focal=np.where(reg, f_img, np.nan), k1=np.where(reg, k1_img, np.nan),
        k2=np.where(reg, k2_img, np.nan), points=np.ascontiguousarray(points),
        point_error_px=np.bincount(recon.obs_point, weights=err, minlength=n_pts) / np.maximum(cnt, 1),
        n_obs=n_obs, reproj_rmse_px=np.where(n_obs > 0, np.sqrt(sq / np.maximum(n_obs, 1)), np.nan),
        gps_residual=np.where((reg & np.isfinite(gps).all(1))[:, None], antenna - gps, np.nan),
        mean_reproj_px=float(err.mean()) if len(err) else float("nan"))
    return Reconstruction(**fields)
