"""Synthetic drone surveys with exact ground truth: the test bed for every SfM stage.

A deterministic (seeded) scene: a smooth terrain with real relief (a sum of Gaussian hills and
hollows: a planar scene is degenerate for the fundamental matrix) draped with a large, non-repetitive,
SIFT-rich ortho texture; a lawnmower flight over it (flight lines alternate direction, so the camera
yaw flips 180 degrees between lines); each image rendered by intersecting every pixel's ray with the
terrain and sampling the texture; JPEGs carrying EXIF (focal, 35 mm focal, GPS with optional noise)
and a DJI-like XMP packet, so the same code paths as real DJI photos run.

Conventions (see interfaces.md): world = local ENU metres of `core.geo.LocalFrame(lat0, lon0, h0)`,
whose origin is the take-off point ON the ground (terrain height 0 there); heights written to EXIF are
h0 + up ("MSL-like", like DJI's GPSAltitude). x_cam = R @ (X - C), OpenCV camera axes; pixel (col j,
row i) has its centre at (j, i); principal point ((w-1)/2, (h-1)/2); radial k1, k2 on normalised
coordinates.

35 mm equivalent focal: written by the DIAGONAL definition (f35 = f_mm * 43.27 / sensor diagonal),
rounded to the integer EXIF stores; the exact sensor width is in ground_truth.json. With the
defaults (8.77 mm on a 13.2 x 9.9 mm sensor) f35 = 23.00 mm, so the rounding costs < 0.02 %.
"""

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from .camera import angles_from_rotation, rotation_from_gimbal
from .geo import LocalFrame
from .synthetic_exif import jpeg_with_metadata
from .workspace import write_json

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm: the diagonal definition of "35 mm equivalent"
MAX_TEXTURE_SIDE = 8192  # texels; 8192^2 x 3 bytes = 200 MB, enough for ~440 m at the default 5 cm texel
IMAGE_NAME = re.compile(r"\.?img_\d{4}\.jpg(\.tmp)?")  # ours, or a temporary left by a killed run


@dataclass
class SurveySpec:
    rows: int = 4  # flight lines
    cols: int = 5  # images per flight line (4 x 5 = a 20-image survey)
    altitude_m: float = 60.0  # flying height above the take-off ground (the ENU origin)
    overlap: float = 0.75  # forward overlap along a flight line, on flat ground at take-off height
    sidelap: float = 0.6  # side overlap between neighbouring flight lines
    width: int = 1200  # image width in pixels
    height: int = 900  # image height in pixels
    focal_mm: float = 8.77  # lens focal; with the 13.2 mm sensor: f35 = 23.00 mm by the diagonal, 797 px
    sensor_width_mm: float = 13.2  # a 1-inch-class sensor width; its height follows the image aspect (9.9 mm)
    k1: float = 0.0  # radial distortion of the rendered lens (normalised coordinates)
    k2: float = 0.0  # second radial coefficient
    yaw_deg: float = 0.0  # heading of the first flight line, degrees clockwise from north
    relief_m: float = 8.0  # peak-to-peak terrain height over the surveyed area
    n_hills: int = 24  # Gaussian hills and hollows making the terrain
    attitude_jitter_deg: float = 1.0  # std of the random camera tilt/rotation about nadir, per axis
    position_jitter_m: float = 0.3  # std of the deviation from the planned waypoints (wind), per axis
    gps_noise_h_m: float = 0.0  # std of the Gaussian noise added to the EXIF GPS, east and north
    gps_noise_v_m: float = 0.0  # std of the Gaussian noise added to the EXIF GPS altitude
    gps_drift_v_m: float = 0.0  # GPS altitude drift, linear in capture time: last photo's fix minus first's (m)
    attitude_records: bool = True  # XMP gimbal / flight attitude written (False: a camera that records none)
    attitude_noise_deg: float = 0.0  # std of the noise on the recorded gimbal yaw, pitch and roll (degrees)
    image_noise: float = 1.5  # std of the additive sensor noise, in 8-bit grey levels
    jpeg_quality: int = 92  # like a drone camera's "fine" JPEG
    texel_per_pixel: float = 1.4  # texture texels per image pixel at take-off height: texture a bit sharper
    seed: int = 1  # every random choice derives from this
    lat0: float = 46.5  # take-off latitude (degrees; a field near Lausanne)
    lon0: float = 6.6  # take-off longitude (degrees)
    h0: float = 400.0  # take-off ground height (metres, MSL-like)
    make: str = "AlignKit"  # not in any sensor table: readers must use the EXIF focal values
    model: str = "SynthCam"  # likewise absent from every sensor table
    start_time: str = "2024:06:15 10:00:00"  # DateTimeOriginal of the first image; then 1 s apart

    def __post_init__(self):
        problems = []
        if self.rows < 1 or self.cols < 1:
            problems.append("rows and cols must be >= 1")
        if not (0.0 <= self.overlap < 1.0 and 0.0 <= self.sidelap < 1.0):
            problems.append("overlap and sidelap must be in [0, 1)")
        if self.altitude_m <= 0 or self.focal_mm <= 0 or self.sensor_width_mm <= 0:
            problems.append("altitude, focal and sensor width must be positive")
        if self.width < 16 or self.height < 16:
            problems.append("image must be at least 16 x 16 pixels")
        if self.relief_m < 0 or self.relief_m > 0.6 * self.altitude_m:
            problems.append("relief must be between 0 and 0.6 x altitude")
        if problems:
            raise ValueError("invalid SurveySpec: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def n_images(self):
        return self.rows * self.cols

    @property
    def focal_px(self):
        return self.focal_mm / self.sensor_width_mm * self.width

    @property
    def sensor_height_mm(self):
        return self.sensor_width_mm * self.height / self.width

    @property
    def focal_35mm_exact(self):
        return (
            self.focal_mm * FULL_FRAME_DIAGONAL_MM / math.hypot(self.sensor_width_mm, self.sensor_height_mm)
        )

    def K(self):
        f = self.focal_px
        return np.array(
            [[f, 0.0, (self.width - 1) / 2.0], [0.0, f, (self.height - 1) / 2.0], [0.0, 0.0, 1.0]]
        )


# Surveys named by the alignment acceptance criteria (issue 4), so every test builds the same ones.
# Vary one with dataclasses.replace(ACCEPTANCE_SURVEYS[name], ...) rather than by assignment.
ACCEPTANCE_SURVEYS = {
    "nadir_20": SurveySpec(rows=4, cols=5, gps_noise_h_m=1.0, gps_noise_v_m=2.0),  # consumer GPS
    "gps_noise_60": SurveySpec(rows=6, cols=10, gps_noise_h_m=3.0, gps_noise_v_m=3.0, yaw_deg=30.0, seed=2),
    "strong_relief": SurveySpec(rows=4, cols=5, relief_m=30.0, n_hills=12, seed=3),  # half the flying height
}


# ---------------------------------------------------------------- rotations


def _small_rotation(rng, sigma_deg):
    rvec = rng.normal(0.0, math.radians(sigma_deg), 3)
    return cv2.Rodrigues(rvec.reshape(3, 1))[0]


# ---------------------------------------------------------------- terrain


class Terrain:
    """Sum of Gaussian hills/hollows plus an offset that puts the take-off point (0, 0) at height 0."""

    def __init__(self, centers, sigmas, amplitudes, offset):
        self.centers = np.asarray(centers, np.float64).reshape(-1, 2)
        self.sigmas = np.asarray(sigmas, np.float64).ravel()
        self.amplitudes = np.asarray(amplitudes, np.float64).ravel()
        self.offset = float(offset)

    def _raw(self, e, n):
        e = np.asarray(e, np.float64)
        n = np.asarray(n, np.float64)
        out = np.zeros(np.broadcast(e, n).shape)
        for (ce, cn), s, a in zip(self.centers, self.sigmas, self.amplitudes):
            out += a * np.exp(-((e - ce) ** 2 + (n - cn) ** 2) / (2.0 * s * s))
        return out

    def height(self, e, n):
        return self._raw(e, n) + self.offset

    def to_dict(self):
        return {
            "model": "sum of Gaussians: u = offset + sum_k amplitude_k exp(-|(e,n) - center_k|^2 / (2 sigma_k^2))",
            "centers": self.centers.tolist(),
            "sigmas": self.sigmas.tolist(),
            "amplitudes": self.amplitudes.tolist(),
            "offset": self.offset,
        }

    @classmethod
    def from_dict(cls, d):
        return cls(d["centers"], d["sigmas"], d["amplitudes"], d["offset"])

    @classmethod
    def random(cls, rng, extent, relief_m, n_hills):
        """Hills spread over extent (e_min, n_min, e_max, n_max), scaled to relief_m peak-to-peak."""
        e0, n0, e1, n1 = extent
        size = max(e1 - e0, n1 - n0)
        centers = np.column_stack([rng.uniform(e0, e1, n_hills), rng.uniform(n0, n1, n_hills)])
        sigmas = size * rng.uniform(0.06, 0.2, n_hills)  # hills 10-40 % of the area wide: smooth slopes
        amplitudes = rng.uniform(0.3, 1.0, n_hills) * rng.choice([-1.0, 1.0], n_hills)
        terrain = cls(centers, sigmas, amplitudes, 0.0)
        if relief_m <= 0:
            return cls(centers, sigmas, np.zeros(n_hills), 0.0)
        ge, gn = np.meshgrid(np.linspace(e0, e1, 160), np.linspace(n0, n1, 160))
        h = terrain._raw(ge, gn)
        scale = relief_m / float(h.max() - h.min())
        amplitudes = amplitudes * scale
        offset = -float(cls(centers, sigmas, amplitudes, 0.0)._raw(0.0, 0.0))
        return cls(centers, sigmas, amplitudes, offset)


def terrain_height(gt_or_spec, e, n):
    """True ground height (ENU up) at (e, n), from a ground-truth dict / JSON path or a SurveySpec."""
    if isinstance(gt_or_spec, SurveySpec):
        terrain = _plan(gt_or_spec)["terrain"]
    elif isinstance(gt_or_spec, Terrain):
        terrain = gt_or_spec
    else:
        gt = gt_or_spec
        if isinstance(gt, (str, os.PathLike)):
            with open(gt, encoding="utf-8") as f:
                gt = json.load(f)
        terrain = Terrain.from_dict(gt["terrain"])
    return terrain.height(e, n)


class Raster:
    """A north-up grid over ENU: cell (col j, row i) has its centre at (e0 + j*cell, n0 - i*cell)."""

    def __init__(self, data, e0, n0, cell):
        self.data, self.e0, self.n0, self.cell = data, float(e0), float(n0), float(cell)

    def maps(self, e, n):
        """Fractional (col, row) float32 maps for cv2.remap."""
        mx = ((e - self.e0) * (1.0 / self.cell)).astype(np.float32, copy=False)
        my = ((self.n0 - n) * (1.0 / self.cell)).astype(np.float32, copy=False)
        return mx, my

    def inside(self, mx, my):
        h, w = self.data.shape[:2]
        return bool(mx.min() >= 0 and my.min() >= 0 and mx.max() <= w - 1 and my.max() <= h - 1)

    def sample(self, e, n):
        """Fast bilinear sample (cv2.remap quantises the fraction to 1/32 of a cell)."""
        mx, my = self.maps(e, n)
        return cv2.remap(self.data, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def sample_exact(self, e, n):
        """Bilinear sample with the exact fraction, for a single-channel raster."""
        mx, my = self.maps(e, n)
        h, w = self.data.shape
        mx = np.clip(mx, 0, w - 1.001)
        my = np.clip(my, 0, h - 1.001)
        ix = mx.astype(np.int32)
        iy = my.astype(np.int32)
        fx = mx - ix
        fy = my - iy
        flat = self.data.ravel()
        idx = iy * w + ix
        top = flat[idx] * (1 - fx) + flat[idx + 1] * fx
        bottom = flat[idx + w] * (1 - fx) + flat[idx + w + 1] * fx
        return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------- flight plan


def _plan(spec):
    """Cameras (K, R, C), terrain and texture extent: everything except pixels. Deterministic."""
    K = spec.K()
    f = spec.focal_px
    foot_w = spec.width / f * spec.altitude_m  # ground footprint across track (image x), flat ground
    foot_h = spec.height / f * spec.altitude_m  # along track (image y: the drone flies image-up)
    step_along = foot_h * (1.0 - spec.overlap)
    step_across = foot_w * (1.0 - spec.sidelap)
    yaw = math.radians(spec.yaw_deg)
    ahead = np.array([math.sin(yaw), math.cos(yaw)])  # unit heading in (east, north)
    right = np.array([math.cos(yaw), -math.sin(yaw)])
    rng_pose = np.random.default_rng([spec.seed, 1])
    rng_gps = np.random.default_rng([spec.seed, 2])
    n_images = spec.rows * spec.cols
    cams = []
    for line in range(spec.rows):
        across = (line - (spec.rows - 1) / 2.0) * step_across
        order = range(spec.cols) if line % 2 == 0 else range(spec.cols - 1, -1, -1)
        heading = spec.yaw_deg if line % 2 == 0 else spec.yaw_deg + 180.0
        for k in order:
            along = (k - (spec.cols - 1) / 2.0) * step_along
            en = across * right + along * ahead
            C = np.array([en[0], en[1], spec.altitude_m]) + rng_pose.normal(0.0, spec.position_jitter_m, 3)
            R0 = rotation_from_gimbal(heading, -90.0, 0.0)
            R = _small_rotation(rng_pose, spec.attitude_jitter_deg) @ R0
            gps = C + np.array(
                [
                    rng_gps.normal(0.0, spec.gps_noise_h_m),
                    rng_gps.normal(0.0, spec.gps_noise_h_m),
                    rng_gps.normal(0.0, spec.gps_noise_v_m),
                ]
            )
            drift = spec.gps_drift_v_m * len(cams) / max(n_images - 1, 1)  # photos 1 s apart, in this order
            gps[2] += drift
            cams.append(
                {"K": K, "R": np.ascontiguousarray(R), "C": C, "gps": gps, "heading": heading % 360.0,
                 "gps_drift": drift}
            )
    # Texture/terrain extent: every image corner ray down to the lowest ground possible, plus margin.
    corners = np.array(
        [[0, 0], [spec.width - 1, 0], [spec.width - 1, spec.height - 1], [0, spec.height - 1]], float
    )
    rays = _normalised_rays(corners, K, spec.k1, spec.k2)
    pts = []
    for cam in cams:
        d = rays @ cam["R"]  # rows: R.T @ ray
        t = (-spec.relief_m - cam["C"][2]) / d[:, 2]
        pts.append(cam["C"][:2] + t[:, None] * d[:, :2])
    pts = np.vstack(pts)
    margin = 0.05 * max(foot_w, foot_h) + 2.0
    extent = (
        float(pts[:, 0].min() - margin),
        float(pts[:, 1].min() - margin),
        float(pts[:, 0].max() + margin),
        float(pts[:, 1].max() + margin),
    )
    terrain = Terrain.random(np.random.default_rng([spec.seed, 3]), extent, spec.relief_m, spec.n_hills)
    return {"cameras": cams, "terrain": terrain, "extent": extent}


def _normalised_rays(pixels, K, k1=0.0, k2=0.0):
    """(N, 3) camera-frame rays (xn, yn, 1) through pixel centres, undistorting radial k1, k2."""
    xd = (pixels[:, 0] - K[0, 2]) / K[0, 0]
    yd = (pixels[:, 1] - K[1, 2]) / K[1, 1]
    x, y = xd.copy(), yd.copy()
    if k1 or k2:
        for _ in range(50):  # fixed point x = xd / (1 + k1 r2 + k2 r4); contracts for mild distortion
            r2 = x * x + y * y
            s = 1.0 + k1 * r2 + k2 * r2 * r2
            xn, yn = xd / s, yd / s
            done = max(np.abs(xn - x).max(), np.abs(yn - y).max()) < 1e-12
            x, y = xn, yn
            if done:
                break
    return np.column_stack([x, y, np.ones_like(x)])


def project(K, R, C, X, k1=0.0, k2=0.0):
    """Pixels (N, 2) of ENU points X (N, 3) with the interface's camera model."""
    Xc = (np.atleast_2d(X) - C) @ np.asarray(R).T
    xn, yn = Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2]
    r2 = xn * xn + yn * yn
    s = 1.0 + k1 * r2 + k2 * r2 * r2
    return np.column_stack([K[0, 0] * xn * s + K[0, 2], K[1, 1] * yn * s + K[1, 2]])


# ---------------------------------------------------------------- texture


def make_texture(rng, shape):
    """A (H, W, 3) uint8 colour texture: multi-scale noise + random ellipses and strokes.

    Band-limited (finest detail about 3 texels, then a light blur) so that rendering at ~1.4 texels
    per pixel does not alias into view-dependent, unstable features. Nothing repeats.
    """
    h, w = shape
    # Detail: octaves of Gaussian noise, coarse to fine, each level upsampled x2 (cubic) and a new
    # octave added: a 1/f^0.35-like spectrum with the finest octave at 3 texels, in O(H W).
    finest = 3
    levels = max(1, int(math.log2(max(h, w) / finest / 4)))
    lum = None
    for level in range(levels, -1, -1):
        cell = finest * 2**level
        lh, lw = h // cell + 4, w // cell + 4
        if lum is not None:
            lum = cv2.resize(lum, (lw, lh), interpolation=cv2.INTER_CUBIC)
        else:
            lum = np.zeros((lh, lw), np.float32)
        lum += rng.normal(0.0, cell**0.35, (lh, lw)).astype(np.float32)
    lum = cv2.resize(
        lum, ((w // finest + 4) * finest, (h // finest + 4) * finest), interpolation=cv2.INTER_CUBIC
    )
    lum = lum[finest : finest + h, finest : finest + w]
    lum *= np.float32(42.0 / lum.std())
    # Slowly varying ground colour (grass, soil, rock) modulated by the detail.
    cgrid = rng.uniform(0.05, 1.0, (max(2, h // 400 + 2), max(2, w // 400 + 2), 3)).astype(np.float32)
    palette = np.array([[70, 110, 60], [120, 100, 70], [150, 145, 130], [90, 130, 80]], np.float32)
    channels = []
    for ch in range(3):
        # Linear resize: no overshoot, weights stay in [0.05, 1]. In place: one full-size float plane.
        plane = cv2.resize(np.ascontiguousarray(cgrid[..., ch]), (w, h), interpolation=cv2.INTER_LINEAR)
        plane *= palette[1 + ch % 3, ch]
        plane += 0.35 * palette[0, ch]
        plane += lum
        channels.append(cv2.add(plane, 0.0, dtype=cv2.CV_8U))  # saturating float -> uint8
        del plane
    del lum
    img = cv2.merge(channels)
    del channels
    # Shapes: log-uniform sizes so every SIFT octave has blobs and corners; sub-pixel positions (shift 4).
    n_shapes = int(h * w / 350)
    cx = rng.uniform(0, w, n_shapes)
    cy = rng.uniform(0, h, n_shapes)
    ax = np.exp(rng.uniform(np.log(2.0), np.log(30.0), n_shapes))
    ay = ax * rng.uniform(0.3, 1.0, n_shapes)
    ang = rng.uniform(0, 180, n_shapes)
    kind = rng.uniform(0, 1, n_shapes)
    colors = np.clip(rng.normal((95.0, 115.0, 105.0), 55.0, (n_shapes, 3)), 0, 255)  # earthy, varied
    s = 16.0
    for i in range(n_shapes):
        col = tuple(int(c) for c in colors[i])
        if kind[i] < 0.75:
            cv2.ellipse(
                img,
                (int(cx[i] * s), int(cy[i] * s)),
                (int(ax[i] * s), int(ay[i] * s)),
                float(ang[i]),
                0,
                360,
                col,
                -1,
                cv2.LINE_AA,
                4,
            )
        else:
            a = math.radians(ang[i])
            dx, dy = ax[i] * 1.5 * math.cos(a), ax[i] * 1.5 * math.sin(a)
            cv2.line(
                img,
                (int((cx[i] - dx) * s), int((cy[i] - dy) * s)),
                (int((cx[i] + dx) * s), int((cy[i] + dy) * s)),
                col,
                max(1, int(ay[i] / 4)),
                cv2.LINE_AA,
                4,
            )
    return cv2.GaussianBlur(img, (0, 0), 0.8)


# ---------------------------------------------------------------- rendering


class Scene:
    """Terrain + textured ground + cameras of one survey; renders any camera exactly."""

    def __init__(self, spec):
        self.spec = spec
        plan = _plan(spec)
        self.cameras, self.terrain, self.extent = plan["cameras"], plan["terrain"], plan["extent"]
        e0, n0, e1, n1 = self.extent
        gsd = spec.altitude_m / spec.focal_px
        texel = gsd / spec.texel_per_pixel
        size = max(e1 - e0, n1 - n0) / texel
        if size > MAX_TEXTURE_SIDE:  # bound memory on huge surveys: coarser texture, still band-limited
            texel *= size / MAX_TEXTURE_SIDE
        tw, th = int(math.ceil((e1 - e0) / texel)) + 1, int(math.ceil((n1 - n0) / texel)) + 1
        self.texture = Raster(make_texture(np.random.default_rng([spec.seed, 4]), (th, tw)), e0, n1, texel)
        # Height grid for the per-pixel ray intersection: bilinear on <= 0.25 m cells deviates from
        # the analytic surface by well under a millimetre on these smooth hills (a test checks).
        dcell = min(0.25, gsd * 3)
        dw, dh = int(math.ceil((e1 - e0) / dcell)) + 1, int(math.ceil((n1 - n0) / dcell)) + 1
        ge = e0 + dcell * np.arange(dw)
        gn = n1 - dcell * np.arange(dh)
        self.dem = Raster(self.terrain.height(ge[None, :], gn[:, None]).astype(np.float32), e0, n1, dcell)
        u, v = np.meshgrid(np.arange(spec.width, dtype=np.float64), np.arange(spec.height, dtype=np.float64))
        rays = _normalised_rays(np.column_stack([u.ravel(), v.ravel()]), spec.K(), spec.k1, spec.k2)
        self._rays = [rays[:, k].reshape(spec.height, spec.width).astype(np.float32) for k in range(2)]

    def ground_points(self, index, tol_m=2e-4, max_iter=60):
        """ENU ground point seen by every pixel of camera `index`: (H, W) float32 arrays e, n, u.

        Fixed-point iteration on depth t: X = C + t d, t <- (h(X_e, X_n) - C_u) / d_u. It contracts
        when terrain slope x tan(view angle) < 1, true for near-nadir views of moderate relief; it is
        checked, never assumed.
        """
        cam = self.cameras[index]
        R, C = cam["R"], cam["C"]
        xn, yn = self._rays
        # World ray d = R.T @ (xn, yn, 1); depth t along it equals the camera z.
        d = [np.float32(R[0, k]) * xn + np.float32(R[1, k]) * yn + np.float32(R[2, k]) for k in range(3)]
        # Solve on every 8th pixel first (cheap), then start the full grid from that depth map.
        coarse = [a[::8, ::8] for a in d]
        t = np.full_like(coarse[2], -float(C[2])) / coarse[2]
        t = self._intersect(coarse, C, t, 0.02, max_iter, index)
        t = cv2.resize(t, (xn.shape[1], xn.shape[0]), interpolation=cv2.INTER_LINEAR)
        t = self._intersect(d, C, t, tol_m, max_iter, index)
        ce, cn, cu = (np.float32(c) for c in C)
        return ce + t * d[0], cn + t * d[1], cu + t * d[2]

    def _intersect(self, d, C, t, tol_m, max_iter, index):
        ce, cn, cu = (np.float32(c) for c in C)
        change = np.inf
        for _ in range(max_iter):
            # cv2.remap is fast but quantised (~1/32 cell): use it until within a centimetre.
            sample = self.dem.sample if change > 0.02 else self.dem.sample_exact
            h = sample(ce + t * d[0], cn + t * d[1])
            t_new = (h - cu) / d[2]
            change = float(np.abs((t_new - t) * d[2]).max())
            t = t_new
            if change < tol_m:
                return t
        raise RuntimeError(
            f"ray-terrain intersection did not converge for image {index} (last change {change:.3g} m): "
            "relief too steep for the view angles"
        )

    def render(self, index):
        """Noise-free (H, W, 3) uint8 BGR rendering of camera `index`."""
        e, n, _ = self.ground_points(index)
        mx, my = self.texture.maps(e, n)
        if not self.texture.inside(mx, my):
            raise RuntimeError(f"image {index} sees ground outside the texture: extent margin too small")
        return cv2.remap(self.texture.data, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def photo(self, index):
        """Rendering + sensor noise, as the camera would store it before JPEG coding."""
        img = self.render(index).astype(np.float32)
        rng = np.random.default_rng([self.spec.seed, 5, index])
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.spec.image_noise)
        return cv2.add(img, 0.0, dtype=cv2.CV_8U)  # rounds and saturates


# ---------------------------------------------------------------- the survey


def generate_survey(out_dir, spec=None, progress=None, decorate=None):
    """Write out_dir/images/img_NNNN.jpg and out_dir/ground_truth.json; return out_dir as a Path.

    ground_truth.json is written last, atomically: its presence means the survey is complete.
    decorate: optional object with paint(scene) (called before rendering, may change the texture) and
    write(out_dir, scene, frame, gt) (called before the ground truth is written; may add to it), e.g.
    core.synthetic_targets.SurveyTargets.
    """
    spec = spec or SurveySpec()
    out = Path(out_dir)
    img_dir = out / "images"
    if img_dir.is_dir():
        foreign = sorted(p.name for p in img_dir.iterdir() if not IMAGE_NAME.fullmatch(p.name))
        if foreign:
            raise ValueError(
                f"{img_dir} holds files that are not a synthetic survey's ({', '.join(foreign[:5])}): refusing to mix"
            )
    scene = Scene(spec)  # before touching the folder: a bad spec leaves an old survey intact
    if decorate is not None:
        decorate.paint(scene)
    # An interrupted run must not leave an old ground truth beside new images, nor old extra images.
    (out / "ground_truth.json").unlink(missing_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    keep = {f"img_{i + 1:04d}.jpg" for i in range(spec.n_images)}
    for stale in img_dir.iterdir():
        if stale.name not in keep:
            stale.unlink()
    frame = LocalFrame(spec.lat0, spec.lon0, spec.h0)
    centers = np.array([c["C"] for c in scene.cameras])
    gps = np.array([c["gps"] for c in scene.cameras])
    lat_t, lon_t, alt_t = frame.to_geodetic(centers)
    lat_g, lon_g, alt_g = frame.to_geodetic(gps)
    rng_flight = np.random.default_rng([spec.seed, 6])
    rng_record = np.random.default_rng([spec.seed, 7])
    cameras = []
    for i, cam in enumerate(scene.cameras):
        name = f"img_{i + 1:04d}.jpg"  # IMAGE_NAME
        gimbal = angles_from_rotation(cam["R"])
        recorded = tuple(float(a) for a in np.asarray(gimbal) + rng_record.normal(0.0, spec.attitude_noise_deg, 3))
        # The drone body leans into the wind a little; the gimbal keeps the camera near nadir.
        flight = (cam["heading"], float(rng_flight.normal(0, 2.0)), float(rng_flight.normal(0, 2.0)))
        # RelativeAltitude is the barometer's: the GPS noise, not the GPS drift
        data = jpeg_with_metadata(
            scene.photo(i), spec, i, lat_g[i], lon_g[i], alt_g[i], gps[i, 2] - cam["gps_drift"], recorded, flight
        )
        tmp = img_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, img_dir / name)
        cameras.append(
            {
                "image": name,
                "K": cam["K"].tolist(),
                "dist": [spec.k1, spec.k2],
                "R": cam["R"].tolist(),
                "center_enu": cam["C"].tolist(),
                "gps_enu": cam["gps"].tolist(),
                "lat": float(lat_t[i]),
                "lon": float(lon_t[i]),
                "alt": float(alt_t[i]),
                "gimbal_ypr_deg": list(gimbal),
                "gimbal_recorded_ypr_deg": list(recorded) if spec.attitude_records else None,
                "gps_drift_m": [0.0, 0.0, float(cam["gps_drift"])],
                "capture_s": float(i),
                "heading_deg": cam["heading"],
            }
        )
        if progress:
            progress((i + 1) / len(scene.cameras), name)
    gt = {
        "origin": frame.to_dict(),
        "spec": asdict(spec),
        "camera_model": {
            "width": spec.width,
            "height": spec.height,
            "focal_px": spec.focal_px,
            "focal_mm": spec.focal_mm,
            "sensor_width_mm": spec.sensor_width_mm,
            "focal_35mm_exact": spec.focal_35mm_exact,
            "focal_35mm_written": int(round(spec.focal_35mm_exact)),
            "focal_35mm_definition": "diagonal (43.27 mm)",
            "k1": spec.k1,
            "k2": spec.k2,
        },
        "altitude_meaning": "EXIF GPSAltitude and XMP AbsoluteAltitude = h0 + ENU up (MSL-like); "
        "RelativeAltitude = ENU up (above the take-off ground); both carry the vertical GPS noise; "
        "the GPS altitudes (not RelativeAltitude, a barometer's) also carry gps_drift_m, linear in capture time",
        "gimbal_convention": "DJI mechanical order: R_ned_from_gimbal = Rz(yaw) Rx(roll) Ry(pitch), pitch -90 = nadir",
        "cameras": cameras,
        "terrain": scene.terrain.to_dict(),
        "extent_enu": list(scene.extent),
    }
    if decorate is not None:
        decorate.write(out, scene, frame, gt)
    write_json(out / "ground_truth.json", gt)
    return out


def load_ground_truth(path):
    """ground_truth.json (or the survey folder holding it) -> dict with numpy K, R, center, gps arrays."""
    p = Path(path)
    if p.is_dir():
        p = p / "ground_truth.json"
    with open(p, encoding="utf-8") as f:
        gt = json.load(f)
    gt["K"] = np.array([c["K"] for c in gt["cameras"]], np.float64)
    gt["R"] = np.array([c["R"] for c in gt["cameras"]], np.float64)
    gt["C"] = np.array([c["center_enu"] for c in gt["cameras"]], np.float64)
    gt["gps"] = np.array([c["gps_enu"] for c in gt["cameras"]], np.float64)
    return gt
