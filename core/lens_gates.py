"""The calibration gates of the reconstruction (a mixin of core.reconstruction._Mapper): which focal
and which lens distortion the photos really determine, and which are held at their prior.

On a nadir block over gentle terrain the focal trades against the flying height and the radial
distortion against a dome of the whole block; a self-calibration the photos cannot support is held.
"""
import numpy as np

FOCAL_GATE_SIGMAS = 3.0  # a self-calibrated focal further than this many prior sigmas from EXIF is not trusted
# The distortion gate: a lens distortion (k1, k2) whose evidence (Wald statistic) is below the BIC
# penalty of its 2 parameters, 2 ln(residuals), or that moves no pixel of the frame by
# DISTORTION_MIN_PX, is held at zero (see gate_distortion).
DISTORTION_PARAMETERS = 2
DISTORTION_MIN_PX = 0.5


class LensGates:
    """Needs the mapper's focal, focal_prior, focal_held, focal_guess, focal_rejected, k1, k2, pp, sizes,
    image_model, registered, component, distortion_held / _wald / _threshold, cfg, log and
    update_normalised()."""

    def gate_focal(self, comp):
        """Hold a camera model's focal at EXIF when self-calibration ran too far from it.

        On nadir flights over gentle terrain focal and flying height trade off: the images hardly
        tell them apart, and a small systematic error (rolling shutter, lens model) can drag a free
        focal by 20 % (COLMAP on brighton_beach: ground 10 m low). A drone's fixed-lens EXIF focal is
        far better than that, so a focal beyond FOCAL_GATE_SIGMAS prior sigmas is reset and held.
        Returns True when a focal was reset."""
        models = np.unique(self.image_model[self.registered & (self.component == comp)])
        drift = np.abs(self.focal[models] / self.focal_prior[models] - 1.0)
        # A guessed focal (no EXIF) is no knowledge to hold the photos to: it is never gated.
        runaway = models[(drift > FOCAL_GATE_SIGMAS * self.cfg.focal_prior_sigma) & ~self.focal_held[models]
                         & ~self.focal_guess[models]]
        for mdl in runaway:
            self.log.append(f"camera model {mdl}: self-calibrated focal {self.focal[mdl]:.0f} px is "
                            f"{100 * (self.focal[mdl] / self.focal_prior[mdl] - 1):+.0f}% from its prior "
                            f"{self.focal_prior[mdl]:.0f} px (focal/height trade-off): held at the prior")
        self.focal_rejected[runaway] = self.focal[runaway]
        self.focal[runaway] = self.focal_prior[runaway]
        if len(runaway):
            self.update_normalised()
        return bool(len(runaway))

    def gate_distortion(self, comp, res):
        """Hold a lens distortion at zero when the block does not show it (model selection by BIC).

        On a nadir block over gentle terrain the radial distortion and a dome of the whole block trade
        off (the doming of self-calibrated nadir blocks): the photos hardly tell them apart, so noise and
        biases of a hundredth of a pixel pick k1. Generated 240-photo block, lens without distortion:
        k1 -2.8e-4 and a 57 mm dome (0.096 % of the flying height); the data preferred that dome over the
        true lens by chi-square 16, while holding k1 = k2 = 0 gave 9 mm. A real lens's distortion is
        evident (Wald statistics of thousands), so it stays free. The evidence of a small systematic
        error grows with the block while the penalty grows with its logarithm: the generated 1,000-photo
        block showed k1 -2.6e-4 at 31.1 against 29.7 and domed by 0.26 m. So a distortion that moves no
        pixel of the frame by DISTORTION_MIN_PX (that one: 0.19 px) is held too: below what a nadir block
        can tell from a dome. `res` is the image-only self-calibrating adjustment, run with
        test_distortion. Returns True when a lens was held."""
        n_res = 2 * len(res.residual_px)
        threshold = DISTORTION_PARAMETERS * float(np.log(max(n_res, 2)))
        held = []
        for mdl, cov in res.distortion_covariance.items():
            k = np.array([self.k1[mdl], self.k2[mdl]])
            try:
                wald = float(k @ np.linalg.solve(cov, k))
            except np.linalg.LinAlgError:
                continue
            self.distortion_wald[mdl], self.distortion_threshold = wald, threshold
            if self.distortion_held[mdl]:
                continue
            shift = self.largest_distortion_px(mdl)
            if wald < threshold or shift < DISTORTION_MIN_PX:
                held.append(mdl)
                why = (f"evidence {wald:.1f} < {threshold:.1f}" if wald < threshold
                       else f"at most {shift:.2f} px anywhere in the frame")
                self.log.append(f"camera model {mdl}: lens distortion k1 {self.k1[mdl]:+.2e}, k2 {self.k2[mdl]:+.2e} "
                                f"not shown by the photos ({why}; on a nadir block it would dome the model): "
                                "held at zero")
        held = np.array(held, np.int64)
        self.distortion_held[held] = True
        self.k1[held] = self.k2[held] = 0.0
        if len(held):
            self.update_normalised()
        return bool(len(held))

    def largest_distortion_px(self, mdl):
        """The largest shift (px) the distortion of camera model `mdl` gives any pixel of its frame."""
        imgs = np.flatnonzero(self.image_model == mdl)
        w, h = self.sizes[imgs].max(axis=0)
        corners = (np.array([[0.0, 0.0], [w - 1, 0.0], [0.0, h - 1], [w - 1, h - 1]]) - self.pp[mdl]) / self.focal[mdl]
        r = np.linspace(0.0, float(np.linalg.norm(corners, axis=1).max()), 64)
        return float(np.max(np.abs(self.focal[mdl] * r * (self.k1[mdl] * r**2 + self.k2[mdl] * r**4))))

    def hold_distortion_shown_by_no_part(self, mdl, start, own):
        """A lens distortion that every submodel's gate held (core/submodels.py) stays held at zero: the
        merged block skips the test, a whole adjustment (1,000 photos: 14 iterations, ~60 s). A real
        lens shows in every part of hundreds of photos (evidence in the thousands), so then, as when a
        part lacked the test, the merged block tests it as any block."""
        held = np.asarray(start.get("distortion_held", np.zeros(len(own), bool)), bool)[own]
        if not held.all():
            return
        self.distortion_held[mdl] = True
        self.k1[mdl] = self.k2[mdl] = 0.0
        self.distortion_wald[mdl] = float(np.nanmax(start["distortion_wald"][own]))
        self.distortion_threshold = float(np.nanmin(start["distortion_threshold"][own]))
        self.log.append(f"camera model {mdl}: lens distortion not shown by any submodel (evidence at most "
                        f"{self.distortion_wald[mdl]:.1f}, threshold {self.distortion_threshold:.1f}): held at zero")
