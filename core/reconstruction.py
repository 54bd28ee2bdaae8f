"""Incremental structure from motion: initial pair, PnP registration, triangulation, bundle adjustment.

World frame: local ENU metres (core.geo.LocalFrame) once a component is aligned to GPS; x_cam = R (X - C).
The flow per component: a well-conditioned initial pair -> register the image that sees most
triangulated tracks (PnP RANSAC + refinement) -> triangulate the tracks it adds -> local bundle
adjustment (new image and its neighbours; the rest fixed) -> global adjustment whenever the model grew
by `global_ba_growth`. As soon as >= 3 registered images have non-collinear GPS, the component is
moved onto the GPS by a similarity (Umeyama; levelled by the photos' attitude where they say where
"down" is) and every later adjustment carries GPS priors, so the final model is metric and
georeferenced; where flight lines were flown both ways, a GPS antenna offset along / across the
direction of flight is estimated with it, and where the GPS altitudes drift in capture time, the drift
(core/georef.py). When nothing more registers, the remaining images start a new component: unrelated
parts are never forced into one model. Triangulation lives in core/triangulation.py; the search for
each point in the photos whose features missed it, in core/track_completion.py.
"""
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from .bundle import bundle_adjust, project, refine_points
from .cancel import check
from .georef import GPS_OFFSET_PRIOR_SIGMA_M, Georeferencing, flight_frames, umeyama  # noqa: F401 (umeyama: export)
from .lens_gates import LensGates
from .observations import ObservationIndex
from .track_completion import GrayCache, TrackCompletion
from .triangulation import Triangulation

INITIAL_GPS_SIGMA_H_M = 3.0  # start value while the horizontal GPS accuracy is being estimated
INITIAL_GPS_SIGMA_V_M = 10.0  # start value for the vertical one (consumer GPS heights drift)
MIN_SIGMA_PX = 0.05  # floor of the estimated image noise (px): sub-0.05 px claims are not credible
GROWTH_FTOL = 1e-4  # adjustments while the model grows stop earlier; the final ones converge to 1e-6
# Finishing adjustments whose result another adjustment refines (the lens test's rerun, the first round
# of track completion) stop here: at 1,000 photos the first round took 20 iterations to 1e-6 and 8 to
# 1e-5, and the final model came out 12.13 -> 11.86 mm from the truth.
INTERIM_FTOL = 1e-5
GUESSED_FOCAL_SIGMA = 1.0  # relative std of a guessed focal (no EXIF): free to move, only kept from absurd values
HELD_FOCAL_SIGMA = 1e-5  # relative std that holds a focal at its prior
# The last adjustment's larger subset (ba_final_points_per_image) only while it stays below this many
# observations: 18-photo block 6.5 -> 1.2 mm with 4000 points per image instead of 800; the 240-photo
# block took every point (1.26 M observations, 166 s for one adjustment) for no gain (9.0 mm either way).
FINAL_BA_MAX_OBSERVATIONS = 400_000
# Beyond this many observations an adjustment takes fewer points per image, as spread (an LM iteration
# costs ~7 us per observation at 1,000 photos): there, 4 finishing adjustments 462 -> 298 s, shape
# 12.71 -> 13.20 mm (0.022 % of the flying height either way); the 240-photo block stays below it.
BA_MAX_OBSERVATIONS = 600_000


@dataclass
class Reconstruction:
    registered: np.ndarray  # (N,) bool
    component: np.ndarray  # (N,) int, -1 = not registered
    R: np.ndarray  # (N,3,3) ENU -> camera (NaN when not registered)
    C: np.ndarray  # (N,3) centres in ENU (NaN when not registered)
    focal: np.ndarray  # (N,) px
    k1: np.ndarray  # (N,)
    k2: np.ndarray  # (N,)
    points: np.ndarray  # (P,3) ENU
    point_track: np.ndarray  # (P,) track id of each point
    point_rgb: np.ndarray  # (P,3) uint8
    point_error_px: np.ndarray  # (P,) mean reprojection error of the point's observations
    point_component: np.ndarray  # (P,) component of each point
    n_obs: np.ndarray  # (N,) observations of 3D points per image
    reproj_rmse_px: np.ndarray  # (N,) NaN when not registered
    gps_residual: np.ndarray  # (N,3) adjusted antenna (C + GPS offset) - GPS; NaN without GPS or registration
    gps_sigma_h_m: float
    gps_sigma_v_m: float
    mean_reproj_px: float  # mean reprojection error norm over all used observations
    obs_point: np.ndarray  # (K',) point index of each used observation
    obs_image: np.ndarray  # (K',)
    obs_xy: np.ndarray  # (K',2)
    georeferenced: bool  # every component was aligned to GPS
    timings: dict = field(default_factory=dict)  # seconds per activity
    ba_log: list = field(default_factory=list)  # one tuple per adjustment (see _Mapper.ba_log)
    log: list = field(default_factory=list)  # human readable events (registration failures, components)
    # GPS antenna offset (m: along track, across track to the left, up) of the largest component;
    # NaN when not estimated (gps_residual is then centre minus GPS)
    gps_antenna_offset_m: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    # (N,) the focal self-calibration reached when the focal gate rejected it and held the EXIF focal
    # (see _Mapper.gate_focal); NaN where the focal was self-calibrated (or not registered)
    focal_rejected_px: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # (N,) the distortion gate's Wald statistic of (k1, k2) and its threshold (NaN: not tested), and
    # whether the distortion was held at zero for want of evidence
    distortion_wald: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_threshold: float = float("nan")
    distortion_held: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # (N,3) estimated GPS drift at each image (ENU m; the fix is compared with antenna + drift); zeros
    # where none is modelled. gps_residual + gps_drift is the residual of the drift-corrected fix.
    gps_drift: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    gps_drift_flights: list = field(default_factory=list)  # per flight of the largest component (georef.drift_report)
    vertical_source: str = ""  # what the largest component's vertical rests on besides the GPS altitudes


class _Mapper(Triangulation, Georeferencing, ObservationIndex, TrackCompletion, LensGates):
    def __init__(self, tracks, cameras, gps_enu, pair_matches, config, progress, is_canceled, read_gray=None,
                 make_executor=None):
        self.cfg = config
        self.photos = GrayCache(read_gray) if read_gray is not None else None  # for track completion
        self.make_executor = make_executor  # where track completion searches the photos (None: here)
        self.progress = progress or (lambda f, m: None)
        self.is_canceled = is_canceled
        self.timings = {"local_ba_s": 0.0, "global_ba_s": 0.0, "triangulate_s": 0.0, "register_s": 0.0,
                        "complete_tracks_s": 0.0}
        self.log = []
        self.ba_log = []  # (kind, variable images, points, observations, evaluations, seconds, rms before, after)
        n = len(cameras)
        self.n_images = n
        keys = [str(c.get("camera_key", "default")) for c in cameras]
        model_keys = sorted(set(keys))
        self.image_model = np.array([model_keys.index(k) for k in keys], np.int64)
        m = len(model_keys)
        Ks = [np.asarray(c["K"], np.float64) for c in cameras]
        first = [keys.index(k) for k in model_keys]
        self.focal_prior = np.array([0.5 * (Ks[i][0, 0] + Ks[i][1, 1]) for i in first])
        self.focal = self.focal_prior.copy()
        self.focal_guess = np.array([cameras[i].get("focal_source") == "fallback_guess" for i in first])  # not held
        # A calibration the user gave is held: a nadir block cannot self-calibrate it (the focal and the
        # flying height trade off), which is why it was given.
        self.focal_given = np.array([cameras[i].get("focal_source") == "user" for i in first])
        self.k1 = np.zeros(m)
        self.k2 = np.zeros(m)
        self.pp = np.array([Ks[i][:2, 2] for i in first])
        self.sizes = np.array([[float(c.get("width") or 2 * Ks[i][0, 2] + 1), float(c.get("height") or 2 * Ks[i][1, 2] + 1)]
                               for i, c in enumerate(cameras)])

        order = np.argsort(np.asarray(tracks.obs_track), kind="stable")
        self.obs_track = np.asarray(tracks.obs_track, np.int64)[order]
        self.obs_image = np.asarray(tracks.obs_image, np.int64)[order]
        self.obs_xy = np.ascontiguousarray(np.asarray(tracks.obs_xy, np.float64)[order])
        self.track_rgb = np.asarray(getattr(tracks, "track_rgb", np.zeros((0, 3), np.uint8)))
        self.n_tracks = int(self.obs_track.max()) + 1 if len(self.obs_track) else 0
        if len(self.track_rgb) < self.n_tracks:
            self.track_rgb = np.zeros((self.n_tracks, 3), np.uint8)
        # An image seen twice in one track is ambiguous: keep only its first observation.
        key = self.obs_track * n + self.obs_image
        _, first_obs = np.unique(key, return_index=True)
        self.obs_valid = np.zeros(len(key), bool)
        self.obs_valid[first_obs] = True
        self.obs_ok = self.obs_valid.copy()  # currently an inlier of its track
        self.obs_found = np.zeros(len(key), bool)  # found by track completion, not by matching
        self.refuted_looks = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # (track, image) completion refuted

        self.gps = np.full((n, 3), np.nan) if gps_enu is None else np.asarray(gps_enu, np.float64).reshape(n, 3)
        self.has_gps = np.isfinite(self.gps).all(axis=1)
        self.sigma_h = config.gps_sigma_h_m or INITIAL_GPS_SIGMA_H_M
        self.sigma_v = config.gps_sigma_v_m or INITIAL_GPS_SIGMA_V_M
        self.comp_sigma = {}  # component -> (horizontal, vertical) GPS std estimated for it
        self.sigma_px = 1.0  # std of the image observations, estimated after global adjustments
        self.focal_rejected = np.full(m, np.nan)  # per model: the self-calibrated focal the gate rejected
        self.distortion_held = np.zeros(m, bool)  # per model: k1, k2 held at zero by the distortion gate
        self.distortion_wald = np.full(m, np.nan)  # per model: the gate's evidence for the distortion
        self.distortion_threshold = float("nan")
        self.pair_poses = {}
        for pm in pair_matches or []:
            if getattr(pm, "R_rel", None) is not None and getattr(pm, "t_rel", None) is not None:
                self.pair_poses[(int(pm.i), int(pm.j))] = (np.asarray(pm.R_rel, float), np.asarray(pm.t_rel, float))

        self.registered = np.zeros(n, bool)
        self.component = np.full(n, -1, np.int64)
        self.R = np.full((n, 3, 3), np.nan)
        self.C = np.full((n, 3), np.nan)
        self.points = np.full((self.n_tracks, 3), np.nan)
        self.has_point = np.zeros(self.n_tracks, bool)
        self.point_comp = np.full(self.n_tracks, -1, np.int64)
        self.failed = np.zeros(n, np.int64)  # registration attempts that failed (retry after growth)
        self.aligned = {}  # component -> aligned to GPS
        self.anchor = {}  # component -> (i, j, baseline) scale gauge without GPS
        self.gps_offset = {}  # component -> estimated GPS antenna offset in flight frames (absent: 0)
        self.flight_frames = flight_frames(self.gps)
        self.init_georef(cameras)
        self.update_normalised()
        self.covis = self.covisibility()
        self.init_observation_index()

    @property
    def focal_held(self):
        """Camera models whose focal is held at its prior: those the focal gate rejected."""
        return np.isfinite(self.focal_rejected)

    # ---------------------------------------------------------------- geometry helpers
    def update_normalised(self):
        """Undistorted normalised image coordinates of every observation under the current intrinsics."""
        self.xn = np.zeros_like(self.obs_xy)
        for mdl in range(len(self.focal)):
            sel = self.image_model[self.obs_image] == mdl
            if not sel.any():
                continue
            K = np.array([[self.focal[mdl], 0, self.pp[mdl, 0]], [0, self.focal[mdl], self.pp[mdl, 1]], [0, 0, 1]])
            dist = np.array([self.k1[mdl], self.k2[mdl], 0.0, 0.0])
            und = cv2.undistortPointsIter(
                self.obs_xy[sel].reshape(-1, 1, 2), K, dist, None, None,
                (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 1e-10),
            )
            self.xn[sel] = und.reshape(-1, 2)

    def K_of(self, image):
        mdl = self.image_model[image]
        f = self.focal[mdl]
        return np.array([[f, 0, self.pp[mdl, 0]], [0, f, self.pp[mdl, 1]], [0, 0, 1.0]])

    def dist_of(self, image):
        mdl = self.image_model[image]
        return np.array([self.k1[mdl], self.k2[mdl], 0.0, 0.0])

    def reproj_error(self, obs, X):
        """Pixel error norm of observations `obs` against 3D points X (per observation), and depth."""
        img = self.obs_image[obs]
        mdl = self.image_model[img]
        uv, z = project(self.R[img], self.C[img], self.focal[mdl], self.k1[mdl], self.k2[mdl], self.pp[mdl], X)
        return np.linalg.norm(uv - self.obs_xy[obs], axis=1), z

    def covisibility(self):
        """Shared-track counts between image pairs, {(i, j): n} with i < j."""
        from scipy.sparse import csr_matrix

        v = self.obs_valid
        inc = csr_matrix((np.ones(v.sum()), (self.obs_track[v], self.obs_image[v])), shape=(self.n_tracks, self.n_images))
        co = (inc.T @ inc).tocoo()
        keep = co.row < co.col
        return {(int(i), int(j)): int(c) for i, j, c in zip(co.row[keep], co.col[keep], co.data[keep])}

    def shared_obs(self, i, j, need_free=True):
        """Observation indices (in i, in j) of tracks seen by both (tracks without a point if need_free)."""
        sel_i = np.flatnonzero((self.obs_image == i) & self.obs_valid)
        sel_j = np.flatnonzero((self.obs_image == j) & self.obs_valid)
        common, ai, aj = np.intersect1d(self.obs_track[sel_i], self.obs_track[sel_j], return_indices=True)
        oi, oj = sel_i[ai], sel_j[aj]
        if need_free:
            free = ~self.has_point[common]
            oi, oj = oi[free], oj[free]
        return oi, oj

    # ---------------------------------------------------------------- initial pair
    def relative_pose(self, i, j, oi, oj):
        """Candidate relative poses (R, t), x_j = R x_i + t, from matching and from the tracks."""
        cands = []
        if (i, j) in self.pair_poses:
            cands.append(self.pair_poses[(i, j)])
        elif (j, i) in self.pair_poses:
            Rr, tr = self.pair_poses[(j, i)]
            cands.append((Rr.T, -Rr.T @ tr.ravel()))
        p1, p2 = self.xn[oi], self.xn[oj]
        thr = self.cfg.ransac_threshold_px / float(self.focal[self.image_model[i]])
        E, mask = cv2.findEssentialMat(p1, p2, np.eye(3), method=cv2.RANSAC, prob=0.999, threshold=thr)
        if E is not None and E.shape == (3, 3):
            _, Rr, tr, _ = cv2.recoverPose(E, p1, p2, np.eye(3), mask=mask.copy())
            cands.append((Rr, tr.ravel()))
        return [(np.asarray(Rr, float), np.asarray(tr, float).ravel() / max(np.linalg.norm(tr), 1e-12)) for Rr, tr in cands]

    def try_initial_pair(self, i, j, comp):
        oi, oj = self.shared_obs(i, j)
        if len(oi) < self.cfg.min_inliers:
            return False
        best = None
        for Rr, tr in self.relative_pose(i, j, oi, oj):
            self.R[i], self.C[i] = np.eye(3), np.zeros(3)
            self.R[j], self.C[j] = Rr, -Rr.T @ tr
            X, good, angle = self.triangulate_two(oi, oj)
            score = int(good.sum())
            if best is None or score > best[0]:
                best = (score, Rr, tr, float(np.median(angle[good])) if score else 0.0)
        if best is None or best[0] < max(self.cfg.min_inliers, 0.3 * len(oi)):
            self.R[[i, j]], self.C[[i, j]] = np.nan, np.nan
            return False
        score, Rr, tr, med_angle = best
        if med_angle < 2.0 * self.cfg.min_triangulation_angle_deg:
            self.R[[i, j]], self.C[[i, j]] = np.nan, np.nan
            return False
        baseline = 1.0
        if self.has_gps[i] and self.has_gps[j]:
            baseline = max(float(np.linalg.norm(self.gps[i] - self.gps[j])), 1e-3)
        self.R[i], self.C[i] = np.eye(3), np.zeros(3)
        self.R[j], self.C[j] = Rr, -Rr.T @ tr * baseline
        if self.has_gps[i]:  # start near the GPS so a later similarity has little to do
            self.C[[i, j]] += self.gps[i]
        self.registered[[i, j]] = True
        self.component[[i, j]] = comp
        self.anchor[comp] = (i, j, baseline)
        self.aligned[comp] = False
        n_new = self.triangulate_tracks(np.unique(self.obs_track[oi]), comp)
        self.log.append(f"component {comp}: initial pair {i}-{j} ({len(oi)} shared tracks, {n_new} points, "
                        f"median angle {med_angle:.1f} deg)")
        return n_new >= self.cfg.min_inliers

    # ---------------------------------------------------------------- registration
    def register_next(self, comp):
        """Register the unregistered image that sees the most points of `comp`; False when none can."""
        t0 = time.perf_counter()
        cfg = self.cfg
        cand = self.obs_of_images(self.frontier(comp))  # only they can see points of comp
        cand = cand[self.obs_valid[cand] & self.has_point[self.obs_track[cand]]
                    & (self.point_comp[self.obs_track[cand]] == comp)]
        counts = np.bincount(self.obs_image[cand], minlength=self.n_images)
        counts[self.registered] = 0
        order = np.argsort(-counts, kind="stable")
        for img in order[: cfg.registration_attempts]:
            if counts[img] < cfg.min_registration_inliers:
                break
            if self.failed[img] >= counts[img]:  # already failed with at least as many points
                continue
            obs = np.sort(cand[self.obs_image[cand] == img])
            ok = self.pnp(img, obs)
            if ok:
                self.component[img] = comp
                self.registered[img] = True
                self.timings["register_s"] += time.perf_counter() - t0
                return int(img)
            self.failed[img] = counts[img]
        self.timings["register_s"] += time.perf_counter() - t0
        return None

    def pnp(self, img, obs):
        cfg = self.cfg
        obj = self.points[self.obs_track[obs]]
        xy = self.obs_xy[obs]
        K, dist = self.K_of(img), self.dist_of(img)
        cv2.setRNGSeed(cfg.seed)
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj, xy, K, dist, iterationsCount=2000, reprojectionError=cfg.max_reproj_error_px, confidence=0.9999,
            flags=cv2.SOLVEPNP_EPNP,
        )
        if not ok or inl is None or len(inl) < cfg.min_registration_inliers:
            return False
        inl = inl.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], xy[inl], K, dist, rvec, tvec)
        R = cv2.Rodrigues(rvec)[0]
        C = -R.T @ tvec.ravel()
        self.R[img], self.C[img] = R, C
        err, z = self.reproj_error(obs, obj)
        good = (err < cfg.max_reproj_error_px) & (z > 0)
        if good.sum() < max(cfg.min_registration_inliers, 0.2 * len(obs)):
            self.R[img], self.C[img] = np.nan, np.nan
            return False
        self.obs_ok[obs] = good
        return True

    # ---------------------------------------------------------------- bundle adjustment
    def adjust(self, comp, variable_images=None, refine_intrinsics=False, max_nfev=None, ftol=1e-6, use_gps=True,
               points_per_image=None, test_distortion=False, refine_distortion=None):
        """Bundle-adjust component `comp`; only `variable_images` move (all when None) and their points;
        refine_intrinsics: the focal and (unless refine_distortion is False) the lens distortion;
        points_per_image: the points adjusted per image (0: all; None: ba_points_per_image), the rest
        re-triangulated; test_distortion: the result carries the covariance of each refined lens
        distortion (for gate_distortion)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        if variable_images is not None:  # the tracks the variable images see, with all their observations
            obs = self.local_obs(comp, variable_images)
            var_img = np.zeros(self.n_images, bool)
            var_img[variable_images] = True
        else:
            obs = self.active_obs(comp)
            var_img = self.registered & (self.component == comp)
        fixed = ~var_img
        use_gps = use_gps and self.aligned.get(comp, False)
        anchor = None
        if not use_gps:
            # Gauge without GPS: the component's first image fixed, and its distance to the second.
            first, second, _ = self.anchor[comp]
            fixed[first] = True
            anchor = (first, second, float(np.linalg.norm(self.C[first] - self.C[second])))
        sigma_h, sigma_v = self.comp_sigma.get(comp, (self.sigma_h, self.sigma_v))
        # The antenna offset moves only in global adjustments (it needs every flight line).
        estimate_offset = use_gps and variable_images is None and self.offset_observable(comp)
        rest = np.zeros(0, np.int64)
        per_image = cfg.ba_points_per_image if points_per_image is None else points_per_image
        if per_image > 0:
            chosen = self.select_points(obs, per_image)
            if points_per_image is not None and chosen.sum() > FINAL_BA_MAX_OBSERVATIONS:
                per_image = cfg.ba_points_per_image  # a big block: its own strength
                chosen = self.select_points(obs, per_image)
            if chosen.sum() > BA_MAX_OBSERVATIONS:  # a very big block: fewer points per image, as spread
                chosen = self.select_points(obs, max(16, int(per_image * BA_MAX_OBSERVATIONS / chosen.sum())))
            if chosen.sum() < 0.8 * len(obs):  # subsampling pays off
                obs, rest = obs[chosen], obs[~chosen]
        tracks_used, obs_point = np.unique(self.obs_track[obs], return_inverse=True)
        res = bundle_adjust(
            np.where(self.registered[:, None, None], self.R, np.eye(3)),
            np.where(self.registered[:, None], self.C, 0.0),
            self.focal, self.k1, self.k2, self.pp, self.image_model,
            self.points[tracks_used], self.obs_image[obs], obs_point, self.obs_xy[obs],
            fixed_images=fixed,
            refine_focal=refine_intrinsics and cfg.refine_focal,
            refine_distortion=refine_intrinsics and cfg.refine_distortion and refine_distortion is not False,
            gps_enu=self.gps if use_gps else None,
            gps_sigma_h=sigma_h, gps_sigma_v=sigma_v,
            gps_offset=self.gps_offset.get(comp), gps_offset_frames=self.flight_frames,
            estimate_gps_offset=estimate_offset, gps_offset_sigma_m=GPS_OFFSET_PRIOR_SIGMA_M,
            **(self.gravity_options(comp, variable_images is None) if use_gps else {}),
            **(self.drift_options(comp, variable_images is None) if use_gps else {}),
            blocks=self.extra_blocks(comp, tracks_used, use_gps),
            focal_prior=self.focal_prior, distortion_held=self.distortion_held,
            distortion_covariance=test_distortion and refine_intrinsics and cfg.refine_distortion,
            focal_prior_sigma=np.where(self.focal_held | self.focal_given, HELD_FOCAL_SIGMA,
                                       np.where(self.focal_guess, GUESSED_FOCAL_SIGMA, cfg.focal_prior_sigma)),
            scale_anchor=anchor, loss=cfg.robust_loss, loss_scale_px=cfg.robust_scale_px,
            obs_sigma_px=self.sigma_px, is_canceled=self.is_canceled,
            max_nfev=max_nfev or cfg.ba_max_iterations, ftol=ftol,
        )
        moved = self.registered & var_img
        self.R[moved], self.C[moved] = res.R[moved], res.C[moved]
        self.points[tracks_used] = res.points
        if estimate_offset:
            self.gps_offset[comp] = res.gps_offset
        if use_gps and variable_images is None and "gps_drift" in res.groups:
            self.drift[comp] = res.groups["gps_drift"]
        if refine_intrinsics:
            self.focal, self.k1, self.k2 = res.focal, res.k1, res.k2
            # held means held (a tight prior still lets them move by ~1e-10)
            held = self.focal_held | self.focal_given
            self.focal[held] = self.focal_prior[held]
            self.k1[self.distortion_held] = self.k2[self.distortion_held] = 0.0
            self.update_normalised()
        if len(rest):  # the points left out follow the adjusted cameras
            rest_tracks, rest_point = np.unique(self.obs_track[rest], return_inverse=True)
            self.points[rest_tracks] = refine_points(
                self.R, self.C, self.focal, self.k1, self.k2, self.pp, self.image_model, self.points[rest_tracks],
                self.obs_image[rest], rest_point, self.obs_xy[rest], loss=cfg.robust_loss,
                loss_scale_px=cfg.robust_scale_px, iterations=3)
        if variable_images is None and len(res.residual_px) > 50:
            # Weight of the images against the GPS: their actual noise (MAD of the inlier residuals).
            inl = np.abs(res.residual_px) < cfg.max_reproj_error_px
            self.sigma_px = max(1.4826 * float(np.median(np.abs(res.residual_px[inl]))), MIN_SIGMA_PX)
        key = "local_ba_s" if variable_images is not None else "global_ba_s"
        self.timings[key] += time.perf_counter() - t0
        self.ba_log.append((key[:-5], int(var_img.sum()), len(tracks_used), len(obs), res.nfev,
                            round(res.seconds, 3), round(res.initial_rms_px, 3), round(res.final_rms_px, 3)))
        return res

    def extra_blocks(self, comp, tracks_used, use_gps):
        """More residual blocks for an adjustment of `comp` (core/bundle_blocks.py; point indices are
        positions in tracks_used): the hook for further evidence such as control points. None here."""
        return []

    def select_points(self, obs, per_image):
        """Observations of a well-spread subset of points for adjustment: per image and cell of a 4x4
        grid, the points with the longest tracks, up to `per_image` per image. Returns a mask over obs
        that keeps every observation of the chosen points."""
        img = self.obs_image[obs]
        cell_xy = np.clip((self.obs_xy[obs] / self.sizes[img] * 4).astype(np.int64), 0, 3)
        cell = img * 16 + cell_xy[:, 1] * 4 + cell_xy[:, 0]
        tracks, tix = np.unique(self.obs_track[obs], return_inverse=True)
        length = np.bincount(tix)[tix]
        order = np.lexsort((tix, -length, cell))
        cs = cell[order]
        start = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
        chosen_track = np.zeros(len(tracks), bool)
        chosen_track[tix[order[rank < max(1, per_image // 16)]]] = True
        return chosen_track[tix]

    def filter_outliers(self, comp, images=None):
        """Drop observations beyond max_reproj_error_px, then points with < 2 views or tiny angles; of
        the tracks `images` see when given (after a local adjustment nothing else moved), else all."""
        cfg = self.cfg
        scope = obs = self.active_obs(comp) if images is None else self.local_obs(comp, images)
        err, z = self.reproj_error(obs, self.points[self.obs_track[obs]])
        bad = (err > cfg.max_reproj_error_px) | (z <= 0)
        self.obs_ok[obs[bad]] = False
        obs = obs[~bad]
        tracks, tix = np.unique(self.obs_track[obs], return_inverse=True)
        n = np.bincount(tix, minlength=len(tracks))
        angle = self.max_angle(self.points[self.obs_track[obs]], self.C[self.obs_image[obs]], tix,
                               np.ones(len(obs), bool), len(tracks))
        drop = tracks[(n < 2) | (angle < cfg.min_triangulation_angle_deg)]
        # and points of comp left without an active observation
        candidates = np.flatnonzero(self.has_point) if images is None else np.unique(self.obs_track[scope])
        lost = candidates[(self.point_comp[candidates] == comp) & ~np.isin(candidates, tracks)]
        drop = np.union1d(drop, lost)
        self.has_point[drop] = False
        self.point_comp[drop] = -1
        self.points[drop] = np.nan
        freed = self.obs_of_tracks(drop)
        self.obs_ok[freed[self.obs_valid[freed]]] = True  # free again for retriangulation
        return int(bad.sum()), len(drop)

    # ---------------------------------------------------------------- driver
    def initial_pair(self, comp):
        """Try pairs among unregistered images, most shared tracks first, until one initialises."""
        cfg = self.cfg
        cands = [(c, i, j) for (i, j), c in self.covis.items()
                 if not self.registered[i] and not self.registered[j] and c >= cfg.min_inliers]
        cands.sort(key=lambda x: (-x[0], x[1], x[2]))
        for _, i, j in cands[: cfg.initial_pair_attempts]:
            check(self.is_canceled)
            if self.try_initial_pair(i, j, comp):
                return True
            self.reset_component(comp)
        return False

    def reset_component(self, comp):
        imgs = self.component == comp
        self.registered[imgs] = False
        self.component[imgs] = -1
        self.R[imgs], self.C[imgs] = np.nan, np.nan
        pts = self.point_comp == comp
        self.has_point[pts] = False
        self.point_comp[pts] = -1
        self.points[pts] = np.nan
        self.obs_ok[pts[self.obs_track] & self.obs_valid] = True

    def grow(self, comp):
        cfg = self.cfg
        last_global = int((self.component == comp).sum())
        while True:
            check(self.is_canceled)
            img = self.register_next(comp)
            if img is None:
                return
            own = self.obs_of_images(img)
            tracks = self.obs_track[own[self.obs_valid[own]]]
            self.triangulate_tracks(tracks, comp)
            self.maybe_align(comp)
            n_comp = int((self.component == comp).sum())
            if n_comp <= 5 or n_comp >= last_global * cfg.global_ba_growth:
                self.adjust(comp, refine_intrinsics=n_comp >= 4, ftol=GROWTH_FTOL)
                if self.gate_focal(comp):  # caught while cheap, before the model settles on it
                    self.adjust(comp, refine_intrinsics=True, ftol=GROWTH_FTOL)
                self.filter_outliers(comp)
                last_global = n_comp
            else:
                nb = self.neighbours(img, comp, cfg.local_ba_images)
                self.adjust(comp, variable_images=nb, ftol=GROWTH_FTOL)
                self.filter_outliers(comp, images=nb)
            self.progress(self.registered.sum() / self.n_images,
                          f"registered {int(self.registered.sum())} of {self.n_images} images")

    def retriangulate(self, comp):
        """Re-admit observations that fit their point, and triangulate tracks that still lack one."""
        cfg = self.cfg
        img = self.obs_image
        cand = np.flatnonzero(self.obs_valid & ~self.obs_ok & self.registered[img] & self.has_point[self.obs_track]
                              & (self.component[img] == self.point_comp[self.obs_track]) & (self.component[img] == comp))
        if len(cand):
            err, z = self.reproj_error(cand, self.points[self.obs_track[cand]])
            self.obs_ok[cand[(err < cfg.max_reproj_error_px) & (z > 0)]] = True
        free = self.obs_valid & self.registered[img] & (self.component[img] == comp) & ~self.has_point[self.obs_track]
        return self.triangulate_tracks(np.unique(self.obs_track[free]), comp)

    def run(self, start=None, submodel=False):
        comp = 0
        if start is not None and self.seed(start):
            self.grow(comp)
            self.finish_component(comp)
            comp += 1
        while (~self.registered).sum() >= 2:
            check(self.is_canceled)
            if not self.initial_pair(comp):
                break
            self.adjust(comp, max_nfev=20)
            self.filter_outliers(comp)
            self.grow(comp)
            if submodel:  # its largest component is all a merge takes; the merged block is finished whole
                self.maybe_align(comp, force=True)
                self.retriangulate(comp)
                # The distortion gate too: a lens no part shows need not be tested on the merged block.
                self.gate_distortion(comp, self.adjust(comp, refine_intrinsics=True, ftol=GROWTH_FTOL,
                                                       test_distortion=True))
                self.filter_outliers(comp)
                break
            self.finish_component(comp)
            comp += 1
        return comp

    def seed(self, start):
        """Component 0 from merged submodels (core/submodels.py): their poses and lens, every track
        triangulated; the photos no submodel registered are left to grow."""
        reg = np.asarray(start["registered"], bool)
        if reg.sum() < 2:
            return False
        self.registered[:] = reg
        self.component[reg] = 0
        self.R[reg], self.C[reg] = start["R"][reg], start["C"][reg]
        for mdl in range(len(self.focal)):
            own = reg & (self.image_model == mdl)
            if own.any():
                self.focal[mdl] = np.median(start["focal"][own])
                self.k1[mdl], self.k2[mdl] = np.median(start["k1"][own]), np.median(start["k2"][own])
                self.hold_distortion_shown_by_no_part(mdl, start, own)
        self.update_normalised()
        self.aligned[0] = bool(self.has_gps[reg].sum() >= 3)  # the submodels were placed on their GPS
        # The gauge of the image-only adjustments: the registered pair that shares most tracks.
        _, i, j = max((c, i, j) for (i, j), c in self.covis.items() if reg[i] and reg[j])
        self.anchor[0] = (i, j, float(np.linalg.norm(self.C[i] - self.C[j])))
        # No adjustment here: the parts were adjusted, and their seams agree to the merge's precision;
        # the finishing adjustments take the whole block from this start.
        self.triangulate_tracks(np.unique(self.obs_track[self.obs_valid & reg[self.obs_image]]), 0)
        self.filter_outliers(0)
        return True

    def finish_component(self, comp):
        self.maybe_align(comp, force=True)
        self.retriangulate(comp)
        if self.aligned.get(comp):
            # The images alone decide the shape; the GPS then places it and says how good it is.
            before = (self.R.copy(), self.C.copy(), self.points.copy(), self.focal.copy(), self.focal_held.copy())
            # A lens already held (by the submodels, see hold_distortion_shown_by_no_part, or by an earlier
            # component's gate) has nothing to test, and track completion's adjustments refine this one,
            # as they refine the test's rerun below.
            held = self.distortion_held[np.unique(self.image_model[self.component == comp])].all()
            res = self.adjust(comp, refine_intrinsics=True, use_gps=False, test_distortion=not held,
                              ftol=INTERIM_FTOL if held else 1e-6)
            rerun = self.gate_focal(comp)
            if self.gate_distortion(comp, res):
                # From the model as it was: the free lens bent it into a dome, a weak mode that LM unwinds
                # slowly (1,000 photos, lens held: 40 iterations took the dome from 0.26 to 0.07 m).
                R, C, points, focal, held = before
                self.R[:], self.C[:], self.points[:] = R, C, points
                keep = ~self.focal_held | held  # not a focal gate_focal has just held
                self.focal[keep] = focal[keep]
                self.update_normalised()
                rerun = True
            if rerun:
                self.adjust(comp, refine_intrinsics=True, use_gps=False, ftol=INTERIM_FTOL)
            self.filter_outliers(comp)
            self.fit_to_gps(comp)
        elif self.gate_focal(comp):
            self.adjust(comp, refine_intrinsics=True)
        for final in (False, True):
            self.retriangulate(comp)
            # On the converged model (predictions within a pixel); the second round finds what the
            # first one's observations moved into reach (brighton: ~15 % more).
            self.complete_tracks(comp)
            # The distortion stays as the matched features calibrated it: found observations lean ~0.05 px
            # inward at the rim of a generated photo (matched ones do not), enough to bend k1. The focal
            # keeps refining: held at its value before completion, the 18-photo block's shape was 7.0 mm
            # against 1.6 mm refined (its focal 0.27 % off before, 0.01 % after).
            self.adjust(comp, refine_intrinsics=True, refine_distortion=not self.obs_found.any(),
                        points_per_image=self.cfg.ba_final_points_per_image if final and self.cfg.ba_points_per_image else None,
                        ftol=1e-6 if final else INTERIM_FTOL)
            self.trim_found(comp)
            self.filter_outliers(comp)
        if comp in self.gps_offset:
            along, across, up = self.gps_offset[comp]
            self.log.append(f"component {comp}: GPS antenna offset {along:+.2f} m along track, {across:+.2f} m "
                            f"across (left), {up:+.2f} m up (antenna lever arm or GPS latency), estimated")
        n = int((self.component == comp).sum())
        self.log.append(f"component {comp}: {n} images, {int((self.point_comp == comp).sum())} points")

    def result(self):
        obs = self.active_obs()
        tracks = np.flatnonzero(self.has_point)
        point_index = np.full(self.n_tracks, -1, np.int64)
        point_index[tracks] = np.arange(len(tracks))
        err, _ = self.reproj_error(obs, self.points[self.obs_track[obs]])
        opt = point_index[self.obs_track[obs]]
        n_pts = len(tracks)
        cnt = np.bincount(opt, minlength=n_pts)
        point_err = np.bincount(opt, weights=err, minlength=n_pts) / np.maximum(cnt, 1)
        n_obs = np.bincount(self.obs_image[obs], minlength=self.n_images)
        sq = np.bincount(self.obs_image[obs], weights=err**2, minlength=self.n_images)
        rmse = np.where(n_obs > 0, np.sqrt(sq / np.maximum(n_obs, 1)), np.nan)
        mdl = self.image_model
        # Residuals of the model: the adjusted antenna (not the camera centre) minus its GPS fix.
        gps_res = np.full((self.n_images, 3), np.nan)
        ok = np.flatnonzero(self.registered & self.has_gps)
        gps_res[ok] = self.antenna(ok) - self.gps[ok]
        comps, comp_size = np.unique(self.component[self.registered], return_counts=True)
        largest = int(comps[np.argmax(comp_size)]) if len(comps) else -1
        sigma = self.comp_sigma.get(largest, (self.sigma_h, self.sigma_v))
        return Reconstruction(
            registered=self.registered.copy(), component=self.component.copy(),
            R=self.R.copy(), C=self.C.copy(),
            focal=np.where(self.registered, self.focal[mdl], np.nan),
            k1=np.where(self.registered, self.k1[mdl], np.nan), k2=np.where(self.registered, self.k2[mdl], np.nan),
            points=np.ascontiguousarray(self.points[tracks]), point_track=tracks,
            point_rgb=np.ascontiguousarray(self.track_rgb[tracks]).astype(np.uint8),
            point_error_px=point_err, point_component=self.point_comp[tracks].copy(),
            n_obs=n_obs, reproj_rmse_px=rmse, gps_residual=gps_res,
            gps_sigma_h_m=float(sigma[0]), gps_sigma_v_m=float(sigma[1]),
            mean_reproj_px=float(err.mean()) if len(err) else float("nan"),
            obs_point=opt, obs_image=self.obs_image[obs].copy(), obs_xy=self.obs_xy[obs].copy(),
            georeferenced=bool(len(comps)) and all(self.aligned.get(int(c), False) for c in comps),
            timings=dict(self.timings), log=list(self.log), ba_log=list(self.ba_log),
            gps_antenna_offset_m=np.array(self.gps_offset.get(largest, np.full(3, np.nan)), dtype=np.float64),
            focal_rejected_px=np.where(self.registered, self.focal_rejected[mdl], np.nan),
            distortion_wald=np.where(self.registered, self.distortion_wald[mdl], np.nan),
            distortion_threshold=self.distortion_threshold,
            distortion_held=self.registered & self.distortion_held[mdl],
            gps_drift=np.where(self.registered[:, None], self.drift_of(np.arange(self.n_images)), np.nan),
            gps_drift_flights=self.drift_report(largest) if largest >= 0 else [],
            vertical_source=self.vertical_source.get(largest, ""),
        )


def reconstruct(tracks, cameras, gps_enu, pair_matches, config, progress=None, is_canceled=None, read_gray=None,
                start=None, submodel=False, make_executor=None):
    """Incremental SfM over `tracks` (obs_track, obs_image, obs_xy, track_rgb).

    cameras: per image dict(K 3x3, width, height, camera_key); gps_enu (N,3) ENU with NaN rows for
    images without GPS (None: no GPS at all); pair_matches: verified pairs (their relative poses seed
    the initial pair); read_gray(k) -> (grey working image of photo k, original pixels per working
    pixel) enables track completion (config.complete_tracks). Returns a Reconstruction; components are numbered 0.. in the order they were
    built (the first is the largest start). start: merged submodels' poses (core/submodels.py) that
    seed component 0; submodel: grow one component and adjust it with its GPS, no finishing;
    make_executor() gives the executor track completion runs on (read_gray must then pickle).
    """
    t0 = time.perf_counter()
    if len(cameras) < 2:
        raise ValueError(f"reconstruction needs at least two images, got {len(cameras)}")
    mapper = _Mapper(tracks, cameras, gps_enu, pair_matches, config, progress, is_canceled, read_gray, make_executor)
    mapper.run(start, submodel)
    if mapper.photos is not None:
        mapper.photos.clear()
    rec = mapper.result()
    rec.timings["total_s"] = time.perf_counter() - t0
    if progress:
        progress(1.0, f"registered {int(rec.registered.sum())} of {len(cameras)} images")
    return rec
