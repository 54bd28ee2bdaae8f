"""Residual blocks of the bundle adjustment: each a few residuals with an analytic Jacobian.

A block is defined on the problem's own indices (images, camera models, points, named parameter
groups), never on columns: the problem (core/bundle.py) lays the variables out and hands every
block the current `State` and the `Layout`. A block returns its residuals (already divided by their
standard deviation) and its Jacobian as (rows, cols, vals) triplets over the variable columns only
(held parameters have column -1 and are skipped). The reprojection block lives in core/bundle.py:
it is most of the work and the solver assembles its normal equations per observation.

Blocks here: GPS prior (camera centre + optional linear terms such as an antenna offset in flight
frames or a GPS drift in capture time, against the fix), focal prior, scale anchor, zero-mean prior
on a parameter group, gravity-direction prior (camera pitch / roll from recorded attitude or "looks
down"), and 3D point prior (a point held near surveyed coordinates with per-axis sigma: control points).

Rotations: R_i = exp([w_i]x) R0_i, so d(R_i y)/dw_i = -[R_i y]x J_l(w_i).
"""
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation


def rotations_from_vectors(w):
    return Rotation.from_rotvec(np.asarray(w, dtype=np.float64).reshape(-1, 3)).as_matrix()


def skew(v):
    """(n,3) -> (n,3,3) cross-product matrices."""
    s = np.zeros(v.shape[:-1] + (3, 3))
    s[..., 0, 1], s[..., 0, 2] = -v[..., 2], v[..., 1]
    s[..., 1, 0], s[..., 1, 2] = v[..., 2], -v[..., 0]
    s[..., 2, 0], s[..., 2, 1] = -v[..., 1], v[..., 0]
    return s


def left_jacobian(w):
    """SO(3) left Jacobian J_l(w): d(exp([w]x) y)/dw = -[exp([w]x) y]x J_l(w)."""
    theta = np.linalg.norm(w, axis=1)
    small = theta < 1e-8
    t = np.where(small, 1.0, theta)
    a = np.where(small, 0.5, (1.0 - np.cos(t)) / t**2)
    b = np.where(small, 1.0 / 6.0, (t - np.sin(t)) / t**3)
    k = skew(w)
    return np.eye(3)[None] + a[:, None, None] * k + b[:, None, None] * (k @ k)


@dataclass
class State:
    """The parameters at one point x: every image, model and point (held ones at their start value)."""
    R: np.ndarray  # (N,3,3)
    C: np.ndarray  # (N,3)
    w: np.ndarray  # (N,3) rotation increments (0 for held images)
    focal: np.ndarray  # (M,)
    k1: np.ndarray
    k2: np.ndarray
    points: np.ndarray  # (P,3)
    groups: dict = field(default_factory=dict)  # name -> (k,) values of a parameter group


@dataclass
class Layout:
    """Column of each variable block; -1 = held. Camera-side columns (images, models, groups) come
    first, then 3 per variable point (point_base onwards), as the Schur complement wants."""
    image_col: np.ndarray  # (N,) first of 6 columns: rotation increment w, then centre C
    model_col: np.ndarray  # (M,) first of the intrinsic columns
    intr: tuple  # which intrinsics vary: (focal, k1, k2) booleans
    group_col: dict  # name -> first column of the group (absent: held)
    point_col: np.ndarray  # (P,) first of 3 columns
    point_base: int
    n_var: int

    def focal_col(self, models):
        return np.where(self.intr[0] & (self.model_col[models] >= 0), self.model_col[models], -1)

    def distortion_cols(self, models):
        """(len(models), 2) columns of k1 and k2 (-1 where held)."""
        base = self.model_col[models][:, None] + int(self.intr[0]) + np.arange(2)
        return np.where(self.intr[1] & (self.model_col[models][:, None] >= 0), base, -1)


def _triplets(rows, cols, vals):
    """Keep the entries on variable columns."""
    rows, cols, vals = np.broadcast_arrays(np.asarray(rows), np.asarray(cols), np.asarray(vals, dtype=np.float64))
    ok = cols >= 0
    return rows[ok].ravel(), cols[ok].ravel(), vals[ok].ravel()


class GpsPrior:
    """(C_i + sum_g M_g,i p_g - gps_i) * weight for each image: the GPS antenna against its fix.

    linear_terms: {group name: (n,3,k) matrices} adding linear terms to the antenna position, e.g.
    an antenna offset in per-image flight frames (k = 3) or a GPS drift in capture time (the fix is
    then compared with C + drift(t), k = the drift's coefficients); groups held or absent count at
    their value in the state (0 when the state has no such group)."""

    def __init__(self, images, gps, weight, linear_terms=None):
        self.images = np.asarray(images, np.int64)
        self.gps = np.asarray(gps, np.float64).reshape(-1, 3)
        self.weight = np.broadcast_to(np.asarray(weight, np.float64), (len(self.images), 3)).copy()  # 1/sigma (3,) or (n,3)
        self.linear_terms = {k: np.asarray(v, np.float64) for k, v in (linear_terms or {}).items()}
        self.n_res = 3 * len(self.images)

    def antenna(self, s):
        pos = s.C[self.images].copy()
        for name, m in self.linear_terms.items():
            if name in s.groups:
                pos += m @ s.groups[name]
        return pos

    def residuals(self, s):
        return ((self.antenna(s) - self.gps) * self.weight).ravel()

    def jacobian(self, s, lay):
        n = len(self.images)
        r = np.arange(3 * n).reshape(n, 3)
        rows = [r.ravel()]
        cols = [(np.where(lay.image_col[self.images] >= 0, lay.image_col[self.images] + 3, -1)[:, None]
                 + np.arange(3)[None] * (lay.image_col[self.images] >= 0)[:, None]).ravel()]
        vals = [self.weight.ravel()]
        for name, m in self.linear_terms.items():
            if name not in lay.group_col:
                continue
            k = m.shape[2]
            rows.append(np.repeat(r[:, :, None], k, axis=2).ravel())
            cols.append(np.broadcast_to(lay.group_col[name] + np.arange(k), m.shape).ravel())
            vals.append((m * self.weight[:, :, None]).ravel())
        return _triplets(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals))


class FocalPrior:
    """(f_m - prior_m) / (sigma_m prior_m) per camera model: a relative prior on the focal.
    prior and sigma_rel (scalar or per model) are indexed by model; `models` are the ones it holds."""

    def __init__(self, models, prior, sigma_rel):
        self.models = np.asarray(models, np.int64)
        self.prior = np.asarray(prior, np.float64)[self.models]
        self.sigma = np.broadcast_to(np.asarray(sigma_rel, np.float64), (len(np.asarray(prior)),))[self.models]
        self.n_res = len(self.models)

    def residuals(self, s):
        return (s.focal[self.models] - self.prior) / (self.sigma * self.prior)

    def jacobian(self, s, lay):
        return _triplets(np.arange(self.n_res), lay.focal_col(self.models), 1.0 / (self.sigma * self.prior))


class DistortionPrior:
    """(k1_m - k1_start_m) / sigma and the same for k2, per held camera model: the lens distortion kept
    where it started (the distortion gate's decision, see _Mapper.gate_distortion)."""

    def __init__(self, models, k1, k2, sigma):
        self.models = np.asarray(models, np.int64)
        self.start = np.column_stack([np.asarray(k1)[self.models], np.asarray(k2)[self.models]])
        self.sigma = float(sigma)
        self.n_res = 2 * len(self.models)

    def residuals(self, s):
        return ((np.column_stack([s.k1[self.models], s.k2[self.models]]) - self.start) / self.sigma).ravel()

    def jacobian(self, s, lay):
        return _triplets(np.arange(self.n_res), lay.distortion_cols(self.models).ravel(), 1.0 / self.sigma)


class ScaleAnchor:
    """(|C_i - C_j| - length) * weight: the scale gauge of a block without GPS."""

    n_res = 1

    def __init__(self, i, j, length, weight=None):
        self.i, self.j, self.length = int(i), int(j), float(length)
        self.weight = 1e3 / max(self.length, 1e-9) if weight is None else float(weight)

    def residuals(self, s):
        return np.array([(np.linalg.norm(s.C[self.i] - s.C[self.j]) - self.length) * self.weight])

    def jacobian(self, s, lay):
        diff = s.C[self.i] - s.C[self.j]
        g = diff / max(np.linalg.norm(diff), 1e-12) * self.weight
        rows, cols, vals = [], [], []
        for idx, sign in ((self.i, 1.0), (self.j, -1.0)):
            if lay.image_col[idx] >= 0:
                rows.append(np.zeros(3, np.int64))
                cols.append(lay.image_col[idx] + 3 + np.arange(3))
                vals.append(sign * g)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


class GroupPrior:
    """(p_g - mean) / sigma: a prior on a parameter group (e.g. zero-mean on an antenna offset)."""

    def __init__(self, group, size, sigma, mean=0.0):
        self.group = group
        self.n_res = int(size)
        self.sigma = np.broadcast_to(np.asarray(sigma, np.float64), (self.n_res,)).copy()
        self.mean = np.broadcast_to(np.asarray(mean, np.float64), (self.n_res,)).copy()

    def residuals(self, s):
        return (s.groups[self.group] - self.mean) / self.sigma

    def jacobian(self, s, lay):
        if self.group not in lay.group_col:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.arange(self.n_res), lay.group_col[self.group] + np.arange(self.n_res), 1.0 / self.sigma


class GravityPrior:
    """(R_i e_up - up_i) / sigma_i per image: where "up" points in the camera, against a record.

    up_i (n,3) is the world's up direction in camera axes from recorded attitude (gimbal pitch and
    roll; the yaw drops out) or, for a nadir survey without records, (0, 0, -1) ("looks down").
    Three residuals for the two angles; |R e_up - up| is the angle between them (radians) when small."""

    def __init__(self, images, up_cam, sigma_rad):
        self.images = np.asarray(images, np.int64)
        up = np.asarray(up_cam, np.float64).reshape(-1, 3)
        self.up = up / np.linalg.norm(up, axis=1, keepdims=True)
        self.sigma = np.broadcast_to(np.asarray(sigma_rad, np.float64), (len(self.images),)).copy()
        self.n_res = 3 * len(self.images)

    def residuals(self, s):
        return ((s.R[self.images][:, :, 2] - self.up) / self.sigma[:, None]).ravel()

    def jacobian(self, s, lay):
        n = len(self.images)
        u = s.R[self.images][:, :, 2]  # R e3
        d = -(skew(u) @ left_jacobian(s.w[self.images])) / self.sigma[:, None, None]  # (n,3,3) d/dw
        col0 = lay.image_col[self.images]
        rows = np.broadcast_to(np.arange(3 * n).reshape(n, 3, 1), (n, 3, 3))
        cols = np.where(col0 >= 0, col0, -1)[:, None, None] + np.arange(3)[None, None, :] * (col0 >= 0)[:, None, None]
        return _triplets(rows, np.broadcast_to(cols, (n, 3, 3)), d)


class PointPrior:
    """(X_p - xyz_p) / sigma_p per point and axis: a point held near surveyed coordinates (control)."""

    def __init__(self, points, xyz, sigma):
        self.points = np.asarray(points, np.int64)
        self.xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        self.sigma = np.broadcast_to(np.asarray(sigma, np.float64), self.xyz.shape).copy()
        self.n_res = 3 * len(self.points)

    def residuals(self, s):
        return ((s.points[self.points] - self.xyz) / self.sigma).ravel()

    def jacobian(self, s, lay):
        col0 = lay.point_col[self.points]
        cols = np.where(col0 >= 0, col0, -1)[:, None] + np.arange(3)[None] * (col0 >= 0)[:, None]
        return _triplets(np.arange(self.n_res), cols.ravel(), (1.0 / self.sigma).ravel())


class MeanAxisPrior:
    """(mean_i R_i^T e_z - direction) / sigma: the cameras' optical axes point along `direction` (world)
    on average, e.g. (0, 0, -1) for a nadir block without attitude records: the block's vertical,
    not any one camera's (each may lean a few degrees). d(R_i^T e_z)/dw_i = R_i^T [e_z]x J_l(w_i)."""

    n_res = 3

    def __init__(self, images, direction, sigma_rad):
        self.images = np.asarray(images, np.int64)
        d = np.asarray(direction, np.float64).reshape(3)
        self.direction = d / np.linalg.norm(d)
        self.sigma = float(sigma_rad)

    def residuals(self, s):
        return (s.R[self.images][:, 2, :].mean(axis=0) - self.direction) / self.sigma

    def jacobian(self, s, lay):
        n = len(self.images)
        ez = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (n, 3))
        d = np.transpose(s.R[self.images], (0, 2, 1)) @ skew(ez) @ left_jacobian(s.w[self.images])
        d = d / (n * self.sigma)  # (n,3,3): rows = residual, cols = w_i
        col0 = lay.image_col[self.images]
        rows = np.broadcast_to(np.arange(3)[None, :, None], (n, 3, 3))
        cols = np.where(col0 >= 0, col0, -1)[:, None, None] + np.arange(3)[None, None, :] * (col0 >= 0)[:, None, None]
        return _triplets(rows, np.broadcast_to(cols, (n, 3, 3)), d)
