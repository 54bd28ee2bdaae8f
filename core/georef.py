"""Georeferencing of a reconstruction: GPS, recorded attitude and a GPS drift in capture time.

The block's shape comes from the photos; here it is placed in the local ENU frame. A similarity
fitted to the GPS alone follows whatever the GPS does: with metres of horizontal noise and a vertical
drift of tens of metres in capture time, it tilts the block to follow the drift (issue 11: a 40-degree
hillside). So where the photos say where "down" is -- recorded gimbal pitch / roll (DJI XMP), or, for
a nadir block without records, the geometry (cameras looking down on average) -- the fit is levelled
by that whenever the GPS alone would tilt the block further than the attitude's accuracy allows: the
vertical comes from the attitude, the horizontal position, heading and scale from the horizontal GPS,
and the height from the GPS altitudes with a drift polynomial in capture time per flight when that
explains them (if nothing explains the disagreement, the GPS is consistent and the attitude evidence
is dropped). The adjustments then carry the same evidence as residual blocks (gravity or mean-axis
prior; GPS prior with the drift terms, vertical free, horizontal linear and held to a few metres).
While a component grows, its provisional GPS alignment is the plain similarity, as before.

Heights are tied to the GPS altitude at the start of the first flight (the drift polynomial has no
constant term there); later flights get their own constant (a battery change restarts the GPS).
"""
from datetime import datetime, timezone

import numpy as np

from .bundle import robust_gps_sigmas
from .camera import rotation_from_gimbal

GPS_SIGMA_FLOOR_H_M = 0.02  # estimated sigmas never go below these (RTK-grade at best)
GPS_SIGMA_FLOOR_V_M = 0.03
# GPS antenna offset along / across the direction of flight (an antenna lever arm on the aircraft,
# or GPS latency): estimated only when flight lines were flown in opposite directions, which flips
# it in the world so that no shift of the block can absorb it.
GPS_OFFSET_MIN_IMAGES = 8  # fewer GPS images with a known flight direction: the offset is held at 0
GPS_OFFSET_MIN_PER_HEADING = 2  # images needed on each of two headings more than 90 deg apart
GPS_OFFSET_PRIOR_SIGMA_M = (1.0, 1.0, 0.01)  # along, across free; up is a vertical shift of the
#   whole block, which the GPS cannot tell from the block's own height: held at 0
FLIGHT_LINE_MIN_COS = 0.9  # a GPS step this parallel to the main flight axis gives an image's direction
FLIGHT_STEP_MIN_M = 0.5  # shorter GPS steps (hovering) say nothing about the direction
ATTITUDE_SIGMA_DEG = 3.0  # accuracy of a recorded gimbal pitch / roll (a gimbal holds ~1 deg; IMU drift)
NADIR_SIGMA_DEG = 5.0  # a nadir block without records looks straight down on average, to this (the
#   mean of its optical axes: a camera without gimbal may lean a degree or two; any one camera more)
NADIR_MAX_MEDIAN_DEG = 10.0  # a block is nadir when its optical axes are this close (median) to their mean
NADIR_MAX_PLANE_DEG = 25.0  # ... and its sparse ground's best plane this close to perpendicular to it
# The GPS alone may tilt the block this far from the photos' vertical before its altitudes are
# overruled (levelled fit, drift model): records are good to ~ATTITUDE_SIGMA_DEG / sqrt(n) on average
# (tolerance: 3 times that, at least 1 deg); a nadir block's mean axis to a degree or two.
TILT_TOLERANCE_DEG = {"attitude records": 1.0, "nadir geometry": 3.0}
FLIGHT_GAP_S = 120.0  # a pause longer than this between photos starts a new flight (battery change)
DRIFT_DEGREE = 2  # degree of the GPS altitude drift polynomial in capture time (per flight)
DRIFT_MIN_IMAGES = 8  # fewer GPS images in a component: no drift is estimated
DRIFT_MIN_GAIN = 2.0  # the drift is modelled when it divides the GPS altitudes' spread by this much
DRIFT_MIN_M = 1.0  # ... and moves them by more than this over a flight
DRIFT_PRIOR_SIGMA_M = 1000.0  # zero-mean prior on the vertical drift coefficients: free, but never singular
DRIFT_H_PRIOR_SIGMA_M = 2.0  # ... on the horizontal (linear) ones: a consumer GPS wanders metres, not tens


def _within_robust_limit(dist):
    """GPS fixes kept by a robust fit: distances up to median + 3 robust sigmas (MAD), never under 0.5 m."""
    limit = max(3.0 * 1.4826 * np.median(np.abs(dist - np.median(dist))) + np.median(dist), 0.5)
    return dist <= limit


def umeyama(src, dst):
    """Similarity (s, R, t) minimising |s R src + t - dst|^2 (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1
    rot = u @ sign @ vt
    var = (a**2).sum() / len(src)
    scale = np.trace(np.diag(d) @ sign) / var
    return scale, rot, mu_d - scale * rot @ mu_s


def flight_frames(gps):
    """Per image (N,3,3): columns along track, across track (to the left), up, in ENU; zeros where the
    direction of flight is unknown (no GPS, hovering, an isolated shot).

    The direction is that of the GPS step to the previous or the next GPS image (images are in capture
    order: sorted by name) which is more parallel to the block's main flight axis, so the turn between
    two lines does not count; a step less parallel than FLIGHT_LINE_MIN_COS gives no direction.
    """
    n = len(gps)
    frames = np.zeros((n, 3, 3))
    idx = np.flatnonzero(np.isfinite(gps).all(axis=1))
    if len(idx) < 3:
        return frames
    step = np.diff(gps[idx, :2], axis=0)
    length = np.linalg.norm(step, axis=1)
    moving = length > FLIGHT_STEP_MIN_M
    if moving.sum() < 2:
        return frames
    unit = np.zeros_like(step)
    unit[moving] = step[moving] / length[moving, None]
    axis = np.linalg.eigh(unit.T @ unit)[1][:, -1]  # main flight axis (sign-free)
    parallel = np.abs(unit @ axis)
    for k, i in enumerate(idx):
        cands = [s for s in (k - 1, k) if 0 <= s < len(step) and moving[s]]  # steps before / after image i
        if not cands:
            continue
        best = max(cands, key=lambda s: parallel[s])
        if parallel[best] < FLIGHT_LINE_MIN_COS:
            continue
        a = unit[best]
        frames[i] = [[a[0], -a[1], 0.0], [a[1], a[0], 0.0], [0.0, 0.0, 1.0]]
    return frames


def capture_seconds(prior):
    """A photo's capture time (EXIF DateTimeOriginal, ISO text on the prior) as POSIX seconds; None if
    unknown. Camera-local time without a zone is read as UTC: only differences are used."""
    text = getattr(prior, "capture_time", None)
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def recorded_up(prior):
    """The world's up direction in camera axes (3,) from the recorded gimbal pitch and roll (DJI XMP;
    the yaw drops out and is not used: brighton's is wrong by ~170 deg on one line); None without."""
    if getattr(prior, "gimbal_pitch", None) is None:
        return None
    roll = prior.gimbal_roll if prior.gimbal_roll is not None else 0.0
    return rotation_from_gimbal(0.0, prior.gimbal_pitch, roll)[:, 2].copy()


def flights_from_times(capture_s, gap_s=FLIGHT_GAP_S):
    """(N,) flight number of each image from capture times (s; NaN unknown -> -1): a new flight after
    every pause longer than gap_s."""
    t = np.asarray(capture_s, np.float64)
    flight = np.full(len(t), -1, np.int64)
    known = np.flatnonzero(np.isfinite(t))
    if not len(known):
        return flight
    order = known[np.argsort(t[known], kind="stable")]
    flight[order] = np.concatenate([[0], np.cumsum(np.diff(t[order]) > gap_s)])
    return flight


def drift_basis(capture_s, flight, degree=DRIFT_DEGREE, horizontal=True):
    """(N,3,k) per image, the ENU offset of its GPS fix per drift coefficient, and per coefficient its
    (flight, axis, power). Per flight, the vertical drift is a polynomial in the flight's normalised
    time tau in [0, 1] (the first flight's without constant term: heights are tied to its first fix;
    later flights have one), and, when `horizontal`, east and north drift linearly in tau (held by a
    prior: weaker). Zero rows for images without capture time."""
    t = np.asarray(capture_s, np.float64)
    n = len(t)
    labels, columns = [], []
    for f in range(int(flight.max()) + 1 if len(flight) else 0):
        sel = flight == f
        t0, t1 = t[sel].min(), t[sel].max()
        tau = np.where(sel, (t - t0) / max(t1 - t0, 1.0), 0.0)
        for p in range(0 if f else 1, degree + 1):
            columns.append((2, np.where(sel, tau**p, 0.0)))
            labels.append((f, "up", p))
        if horizontal:
            for axis, name in ((0, "east"), (1, "north")):
                columns.append((axis, np.where(sel, tau, 0.0)))
                labels.append((f, name, 1))
    basis = np.zeros((n, 3, len(columns)))
    for k, (axis, values) in enumerate(columns):
        basis[:, axis, k] = values
    return basis, labels


def drift_prior_sigma(labels):
    """Zero-mean prior sigma of each drift coefficient: vertical free, horizontal held to a few metres."""
    return np.array([DRIFT_PRIOR_SIGMA_M if axis == "up" else DRIFT_H_PRIOR_SIGMA_M for _, axis, _ in labels])


def rotation_onto_up(v):
    """Rotation (3,3) taking the unit vector v onto (0, 0, 1) by the shortest arc."""
    v = np.asarray(v, np.float64) / np.linalg.norm(v)
    axis = np.cross(v, [0.0, 0.0, 1.0])
    s, c = np.linalg.norm(axis), float(v[2])
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def _similarity_2d(src, dst):
    """2D similarity (s, R (2,2), t) minimising |s R src + t - dst|^2, no reflection."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    re = float(np.sum(a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]))
    im = float(np.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]))
    var = float((a**2).sum())
    s = np.hypot(re, im) / max(var, 1e-300)
    theta = np.arctan2(im, re)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return s, rot, mu_d - s * rot @ mu_s


def levelled_fit(centres, up_block, targets, basis_z=None):
    """Similarity taking `centres` onto GPS `targets` with the block's up direction `up_block` held
    vertical: scale, heading and horizontal shift from the horizontal GPS, height (and a drift
    basis_z (n,k) @ coefficients) from the GPS altitudes; wild fixes dropped as in the plain fit.
    Returns (s, R, t), residuals (fitted + drift - target), kept mask, drift coefficients (k,)."""
    A = rotation_onto_up(up_block)
    P = centres @ A.T
    n = len(P)
    B = np.column_stack([np.ones(n)] + ([basis_z] if basis_z is not None and basis_z.shape[1] else []))
    keep = np.ones(n, bool)
    for _ in range(4):
        s, rot2, t2 = _similarity_2d(P[keep, :2], targets[keep, :2])
        y = targets[:, 2] - s * P[:, 2]
        coef = np.linalg.lstsq(B[keep], y[keep], rcond=None)[0]
        fitted = np.column_stack([s * P[:, :2] @ rot2.T + t2, s * P[:, 2] + B @ coef])
        res = fitted - targets
        new_keep = _within_robust_limit(np.linalg.norm(res, axis=1))
        if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    rot = np.eye(3)
    rot[:2, :2] = rot2
    t = np.array([t2[0], t2[1], coef[0]])
    return (s, rot @ A, t), res, keep, coef[1:]


def _vertical_spread(res, keep):
    """Robust std (1.4826 MAD) of the vertical residuals of the kept fixes."""
    z = res[keep, 2]
    return float(1.4826 * np.median(np.abs(z - np.median(z)))) if len(z) else 0.0


def off_nadir_deg(R):
    """(n,) angle (deg) between each camera's optical axis and straight down (ENU)."""
    axis = np.asarray(R)[:, 2, :]  # camera z in world: the third row of world->camera
    return np.degrees(np.arccos(np.clip(-axis[:, 2], -1.0, 1.0)))


def plane_fit(points):
    """Best plane through (n,3) points by least squares in z: (slope_deg, normal, residual std)."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        return None
    c = p.mean(0)
    A = np.column_stack([p[:, 0] - c[0], p[:, 1] - c[1], np.ones(len(p))])
    coef, *_ = np.linalg.lstsq(A, p[:, 2] - c[2], rcond=None)
    normal = np.array([-coef[0], -coef[1], 1.0])
    normal /= np.linalg.norm(normal)
    spread = float(np.std(p[:, 2] - c[2] - A @ coef))
    return float(np.degrees(np.arccos(normal[2]))), normal, spread


class Georeferencing:
    """GPS and attitude methods of the mapper (core/reconstruction.py's _Mapper): it needs the
    mapper's registered / component / R / C / points / gps arrays, cfg and log."""

    def init_georef(self, cameras):
        """Capture times, flights, the drift basis and recorded attitude from the camera dicts
        (optional keys: capture_s, seconds; up_cam, the world's up direction in camera axes)."""
        n = self.n_images
        self.capture_s = np.array([np.nan if c.get("capture_s") is None else float(c["capture_s"]) for c in cameras])
        self.up_rec = np.full((n, 3), np.nan)
        for i, c in enumerate(cameras):
            if c.get("up_cam") is not None:
                self.up_rec[i] = np.asarray(c["up_cam"], np.float64).reshape(3)
        self.flight = flights_from_times(self.capture_s)
        self.drift_basis, self.drift_labels = drift_basis(self.capture_s, self.flight)
        self.drift = {}  # component -> GPS drift coefficients (drift_labels), when the drift is modelled
        self.vertical_source = {}  # component -> what its vertical rests on besides the GPS altitudes
        self.levelled = {}  # component -> (GPS-alone tilt, tolerance, evidence) when the last fit was levelled
        self.fitted = set()  # components placed by fit_to_gps: their adjustments carry the vertical evidence
        self.disagreement = {}  # component -> (tilt, evidence) when the GPS vertical was kept against it
        self.evidence_rejected = set()  # components whose attitude evidence the GPS contradicted: no gravity prior

    # ---------------------------------------------------------------- vertical evidence
    def vertical_evidence(self, comp):
        """(source, up (N,3) with NaN rows) of `comp`'s vertical, or None.

        Recorded attitude where >= 3 registered images have it: up is the world's up direction in
        each camera (held per camera with ATTITUDE_SIGMA_DEG). Else, when the geometry says the block
        is a nadir survey (optical axes within NADIR_MAX_MEDIAN_DEG of their mean, median, and the
        sparse ground roughly perpendicular to that mean), "looks down" (0, 0, -1) for the cameras near
        the mean axis, held on average (NADIR_SIGMA_DEG). Frame-independent: it can be asked before
        georeferencing."""
        imgs = self.registered & (self.component == comp)
        rec = imgs & np.isfinite(self.up_rec).all(axis=1)
        if rec.sum() >= 3:
            return "attitude records", np.where(rec[:, None], self.up_rec, np.nan)
        idx = np.flatnonzero(imgs)
        if len(idx) < 3:
            return None
        axes = self.R[idx, 2, :]
        mean = axes.mean(0)
        mean /= np.linalg.norm(mean)
        off = np.degrees(np.arccos(np.clip(axes @ mean, -1.0, 1.0)))
        if np.median(off) > NADIR_MAX_MEDIAN_DEG:
            return None
        pts = self.points[self.has_point & (self.point_comp == comp)]
        if len(pts) < 10:
            return None
        normal = np.linalg.svd(pts - pts.mean(0), full_matrices=False)[2][2]
        if np.degrees(np.arccos(min(abs(float(normal @ mean)), 1.0))) > NADIR_MAX_PLANE_DEG:
            return None
        near = np.zeros(self.n_images, bool)
        near[idx[off <= 2.0 * NADIR_MAX_MEDIAN_DEG]] = True
        return "nadir geometry", np.where(near[:, None], [0.0, 0.0, -1.0], np.nan)

    def block_up(self, evidence, imgs):
        """The world's up direction in the component's current frame, from the evidence of `imgs`:
        the mean of R_i^T up_i (records: each camera's own; nadir: minus the mean optical axis)."""
        _, up = evidence
        ok = imgs[np.isfinite(up[imgs]).all(axis=1)]
        v = np.einsum("nji,nj->i", self.R[ok], up[ok])
        return v / np.linalg.norm(v)

    def drift_of(self, images, comp=None):
        """(n,3) estimated GPS drift at `images` (zeros where not modelled)."""
        out = np.zeros((len(images), 3))
        for k, i in enumerate(np.atleast_1d(images)):
            c = int(self.component[i]) if comp is None else comp
            if c in self.drift:
                out[k] = self.drift_basis[i] @ self.drift[c]
        return out

    def similarity_to_gps(self, comp, imgs, targets, evidence, allow_drift=True):
        """(s, R, t), residuals, kept mask, drift coefficients or None.

        The plain robust similarity (the GPS alone decides the block's vertical), unless it tilts the
        block further from what the photos' attitude says than that evidence's accuracy allows
        (TILT_TOLERANCE_DEG): then the fit is levelled by the attitude, with a drift in capture time when
        that explains the altitudes far better than both the levelled and the GPS-tilted block do. When
        levelling makes the altitudes fit much worse and no drift explains it, the GPS is consistent and
        the attitude evidence is what is wrong: the GPS fit stands and the evidence is dropped."""
        sim, res, keep = self.robust_similarity(self.C[imgs], targets)
        if evidence is None:
            return sim, res, keep, None
        all_imgs = np.flatnonzero(self.registered & (self.component == comp))
        v = self.block_up(evidence, all_imgs)
        tilt = float(np.degrees(np.arccos(np.clip((sim[1] @ v)[2], -1.0, 1.0))))
        n_rec = int(np.isfinite(evidence[1][all_imgs]).all(axis=1).sum())
        tol = TILT_TOLERANCE_DEG[evidence[0]]
        if evidence[0] == "attitude records":
            tol = max(tol, 3.0 * ATTITUDE_SIGMA_DEG / np.sqrt(max(n_rec, 1)))
        if tilt <= tol:
            return sim, res, keep, None
        plain = (sim, res, keep)
        sim, res, keep, _ = levelled_fit(self.C[imgs], v, targets)
        used = np.abs(self.drift_basis[imgs][:, 2, :]).sum(axis=0) > 0
        spread_plain, spread = _vertical_spread(plain[1], plain[2]), _vertical_spread(res, keep)
        if allow_drift and len(imgs) >= DRIFT_MIN_IMAGES and used.any():
            sim_d, res_d, keep_d, coef = levelled_fit(self.C[imgs], v, targets, self.drift_basis[imgs][:, 2, used])
            full = np.zeros(self.drift_basis.shape[2])
            full[used] = coef
            moved = self.drift_basis[imgs][:, 2, :] @ full
            floor = DRIFT_MIN_GAIN * max(_vertical_spread(res_d, keep_d), GPS_SIGMA_FLOOR_V_M)
            # A drift: the levelled block explains the altitudes far better with it, and so much
            # better than the tilted one that the GPS's tilt cannot stand in for it.
            if spread > floor and spread_plain > floor and np.ptp(moved) > DRIFT_MIN_M:
                self.levelled[comp] = (tilt, tol, evidence[0])  # logged by the caller, once
                return sim_d, res_d, keep_d, full
        if spread > DRIFT_MIN_GAIN * max(spread_plain, GPS_SIGMA_FLOOR_V_M):
            # Levelled, the altitudes fit much worse and no drift explains it: the GPS is consistent
            # and the attitude evidence is what disagrees (a mounting offset?). The GPS stands.
            self.disagreement[comp] = (tilt, evidence[0])
            self.evidence_rejected.add(comp)
            return (*plain, None)
        self.levelled[comp] = (tilt, tol, evidence[0])
        return sim, res, keep, None

    def levelled_note(self, comp):
        if comp in self.disagreement:
            tilt, source = self.disagreement.pop(comp)
            return (f"; its {source} disagree with the GPS by {tilt:.1f} deg in the vertical, and no GPS drift "
                    f"explains it: the GPS vertical kept (check the attitude records / camera mount)")
        if comp not in self.levelled:
            return ""
        tilt, tol, source = self.levelled.pop(comp)
        return (f"; the GPS alone would tilt the block {tilt:.1f} deg from the vertical of its {source} "
                f"(tolerance {tol:.1f} deg): levelled by them")

    def gravity_options(self, comp, whole_block):
        """bundle_adjust keywords of `comp`'s vertical evidence (empty without, and while the component
        grows: from fit_to_gps on): recorded attitude per camera; the nadir "looks down on average" only
        when the whole block is adjusted."""
        ev = self.vertical_evidence(comp) if comp in self.fitted and comp not in self.evidence_rejected else None
        if ev is None:
            return {}
        self.vertical_source[comp] = ev[0]
        if ev[0] == "attitude records":
            return {"gravity_up": ev[1], "gravity_sigma_rad": np.radians(ATTITUDE_SIGMA_DEG)}
        if not whole_block:
            return {}
        fixed = ~np.isfinite(ev[1]).all(axis=1)  # the cameras far from the mean axis do not count
        return {"mean_axis": [0.0, 0.0, -1.0], "mean_axis_sigma_rad": np.radians(NADIR_SIGMA_DEG),
                "mean_axis_exclude": fixed}

    def drift_options(self, comp, estimate):
        """bundle_adjust keywords of `comp`'s GPS drift (empty when it is not modelled)."""
        if comp not in self.drift:
            return {}
        return {"gps_drift_basis": self.drift_basis, "gps_drift": self.drift[comp], "estimate_gps_drift": estimate,
                "gps_drift_sigma_m": drift_prior_sigma(self.drift_labels)}

    def drift_report(self, comp):
        """Per flight of `comp`: what the drift model estimated (for the summary's gps_drift)."""
        out = []
        imgs = np.flatnonzero(self.registered & (self.component == comp) & self.has_gps)
        for f in np.unique(self.flight[imgs]):
            if f < 0:
                continue
            sel = imgs[self.flight[imgs] == f]
            entry = {"flight": int(f), "images": int(len(sel)),
                     "start": float(np.nanmin(self.capture_s[sel])), "duration_s": float(np.ptp(self.capture_s[sel]))}
            if comp in self.drift:
                coef = {(axis, p): self.drift[comp][k] for k, (ff, axis, p) in enumerate(self.drift_labels) if ff == f}
                tau = np.linspace(0.0, 1.0, 101)
                d = sum(c * tau**p for (axis, p), c in coef.items() if axis == "up")
                entry.update(modelled=True, vertical_start_m=float(d[0]), vertical_end_m=float(d[-1]),
                             vertical_drift_m=float(d[-1] - d[0]), vertical_range_m=float(np.ptp(d)),
                             east_drift_m=float(coef.get(("east", 1), 0.0)),
                             north_drift_m=float(coef.get(("north", 1), 0.0)),
                             coefficients={f"{axis} tau^{p}": float(c) for (axis, p), c in coef.items()})
            else:
                entry.update(modelled=False, vertical_drift_m=0.0)
            out.append(entry)
        return out

    # ---------------------------------------------------------------- GPS
    def offset_observable(self, comp):
        """Whether `comp` can tell a GPS offset in flight frames from a shift of the whole block: enough
        GPS images with a known flight direction, GPS_OFFSET_MIN_PER_HEADING or more of them on each of
        two headings more than 90 deg apart."""
        imgs = np.flatnonzero(self.registered & (self.component == comp) & self.has_gps)
        along = self.flight_frames[imgs, :2, 0]
        along = along[np.linalg.norm(along, axis=1) > 0.5]  # known direction
        if len(along) < GPS_OFFSET_MIN_IMAGES:
            return False
        opposite = (along @ along.T < 0).sum(axis=1) >= GPS_OFFSET_MIN_PER_HEADING
        return bool(opposite.sum() >= 2 * GPS_OFFSET_MIN_PER_HEADING)

    def antenna(self, images):
        """Adjusted GPS antenna positions C + F L of `images` (L = 0 where not estimated)."""
        offset = np.array([self.gps_offset.get(int(c), np.zeros(3)) for c in self.component[images]]).reshape(-1, 3)
        return self.C[images] + np.einsum("nij,nj->ni", self.flight_frames[images], offset)

    def maybe_align(self, comp, force=False):
        if self.aligned.get(comp):
            return
        imgs = np.flatnonzero(self.registered & (self.component == comp) & self.has_gps)
        if len(imgs) < 3:
            return
        g = self.gps[imgs] - self.gps[imgs].mean(0)
        sv = np.linalg.svd(g, compute_uv=False)
        if not force and (sv[1] < 0.05 * sv[0] or sv[1] / np.sqrt(len(imgs)) < 2.0 * self.sigma_h):
            return  # (nearly) collinear: the roll about the line would be a guess
        # Provisional (the model grows under GPS priors): fit_to_gps places the finished component,
        # levelled by the photos' attitude where the GPS altitudes disagree with it.
        self.apply_similarity(comp, *umeyama(self.C[imgs], self.gps[imgs]))
        self.aligned[comp] = True
        self.log.append(f"component {comp}: aligned to GPS with {len(imgs)} images")

    def apply_similarity(self, comp, s, rot, t):
        imgs = self.registered & (self.component == comp)
        self.C[imgs] = s * self.C[imgs] @ rot.T + t
        self.R[imgs] = self.R[imgs] @ rot.T
        pts = self.has_point & (self.point_comp == comp)
        self.points[pts] = s * self.points[pts] @ rot.T + t

    def log_flight_offset(self, imgs, res):
        """Diagnose GPS residuals that follow the flight direction (GPS latency or an antenna offset in
        the aircraft frame): they flip sign between opposite flight lines, so no similarity absorbs them.
        Logged only; the direction of flight is taken from the GPS track in image order."""
        if len(imgs) < 6:
            return
        gps = self.gps[imgs, :2]
        d = np.gradient(gps, axis=0)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        if np.abs(d.mean(axis=0)).max() > 0.8:  # one heading only: indistinguishable from a shift
            return
        normal = np.column_stack([-d[:, 1], d[:, 0]])
        A = np.column_stack([np.concatenate([d[:, 0], d[:, 1]]), np.concatenate([normal[:, 0], normal[:, 1]])])
        b = np.concatenate([res[:, 0], res[:, 1]])
        coef = np.linalg.lstsq(A, b, rcond=None)[0]
        before = np.sqrt(np.mean(res[:, 0] ** 2 + res[:, 1] ** 2))
        after = np.sqrt(np.mean(((b - A @ coef) ** 2).reshape(2, -1).sum(0)))
        if after < 0.7 * before:
            self.log.append(f"GPS residuals follow the flight direction: {coef[0]:+.2f} m along, {coef[1]:+.2f} m "
                            f"across track (GPS latency or antenna offset); horizontal RMSE {before:.2f} m, "
                            f"{after:.2f} m without it")

    @staticmethod
    def robust_similarity(centres, targets):
        """Similarity of centres onto targets dropping wild GPS fixes (altitude jumps);
        returns (s, R, t), residuals (fitted - target) of all, and the kept mask."""
        keep = np.ones(len(centres), bool)
        for _ in range(3):
            sim = umeyama(centres[keep], targets[keep])
            res = sim[0] * centres @ sim[1].T + sim[2] - targets
            new_keep = _within_robust_limit(np.linalg.norm(res, axis=1))
            if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        return sim, res, keep

    def fit_to_gps(self, comp):
        """Move `comp` onto its GPS by a robust similarity; estimate the GPS accuracy from what is left.

        Called on a model adjusted WITHOUT GPS priors, so the residuals are the GPS noise and not
        noise the model was bent to follow (estimating from a GPS-weighted adjustment feeds on itself).
        """
        imgs = np.flatnonzero(self.registered & (self.component == comp) & self.has_gps)
        if len(imgs) < 3:
            return
        frames = self.flight_frames[imgs]
        estimate_offset = self.offset_observable(comp)
        evidence = self.vertical_evidence(comp)
        offset = np.zeros(3)
        for _ in range(3 if estimate_offset else 1):
            sim, res, keep, drift = self.similarity_to_gps(comp, imgs, self.gps[imgs] - frames @ offset, evidence)
            if estimate_offset:
                # What the similarity could not absorb and follows the flight direction: the GPS offset
                # (along, across; with a shift that the next similarity takes). Left in, it would pass
                # for GPS noise and weaken the GPS weight (seen: 0.5 m std for 0.5 m offset, 3 cm noise).
                k = int(keep.sum())
                A = np.concatenate([np.tile(np.eye(3), (k, 1)), frames[keep][:, :, :2].reshape(-1, 2)], axis=1)
                offset[:2] += np.linalg.lstsq(A, -res[keep].ravel(), rcond=None)[0][3:]
        if estimate_offset:
            sim, res, keep, drift = self.similarity_to_gps(comp, imgs, self.gps[imgs] - frames @ offset, evidence)
            self.gps_offset[comp] = offset  # the start of the adjustments with GPS
        self.apply_similarity(comp, *sim)
        self.fitted.add(comp)
        if evidence is not None and comp not in self.evidence_rejected:
            self.vertical_source[comp] = evidence[0]
        note = self.levelled_note(comp)
        if note:
            self.log.append(f"component {comp}: fitted to GPS" + note)
        self.drift.pop(comp, None)
        n_drift = 0
        if drift is not None:
            self.drift[comp] = drift  # the start of the adjustments with GPS, which estimate it
            n_drift = int((drift != 0).sum())
            moved = self.drift_basis[imgs][:, 2, :] @ drift
            self.log.append(f"component {comp}: the GPS altitudes drift with capture time ({np.ptp(moved):.1f} m "
                            f"over the flight): modelled, the block levelled by {evidence[0]}")
        est = robust_gps_sigmas(res[keep], GPS_SIGMA_FLOOR_H_M, GPS_SIGMA_FLOOR_V_M)
        if est is None:
            return
        dof = np.sqrt(3 * keep.sum() / max(3 * keep.sum() - 7 - 2 * estimate_offset - n_drift, 1))  # unknowns absorbed
        sigma_h = self.cfg.gps_sigma_h_m or est[0] * dof
        sigma_v = self.cfg.gps_sigma_v_m or est[1] * dof
        self.comp_sigma[comp] = (float(sigma_h), float(sigma_v))
        self.log_flight_offset(imgs[keep], res[keep])
        self.log.append(f"component {comp}: GPS std {sigma_h:.2f} m horizontal, {sigma_v:.2f} m vertical "
                        f"({int((~keep).sum())} GPS outliers)")
