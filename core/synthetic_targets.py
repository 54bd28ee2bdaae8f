"""Survey targets for synthetic surveys: 2x2 checkers and ArUco markers painted on the ground.

Targets are painted into the scene's ortho texture before the photos are rendered, so they are
draped over the terrain and seen by every camera exactly as the ground is (perspective, relief,
sensor noise, JPEG). The surveyed point of a target is its centre on the ground: the checker's
saddle, the ArUco marker's centre (where its diagonals cross). Painting is anti-aliased by
supersampling, symmetric about the centre, so the painted centre is the true one to ~1/50 texel.

Use: `generate_survey(out, spec, decorate=SurveyTargets(...))` writes, beside ground_truth.json,
`gcp_list.txt` (target CRS: the survey's UTM zone; heights with the EXIF altitude's meaning) with
the true projection of every target fully inside a photo, and a `targets` entry in the ground truth.
"""
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .geo import utm_crs_for

ARUCO_DICTIONARY = cv2.aruco.DICT_4X4_50  # 4x4 bits + border = 6 cells: large cells at drone GSDs
SUPERSAMPLE = 8  # sub-texel samples per texel side when painting (anti-aliasing)
KINDS = ("checker", "aruco")


def aruco_dictionary():
    return cv2.aruco.getPredefinedDictionary(ARUCO_DICTIONARY)


@dataclass
class SurveyTargets:
    """Where and what to paint. positions: (N, 2) ENU east/north metres, or None for a spread layout
    over the block (corners, centre, edge midpoints). kinds: one kind for all or one per target."""

    count: int = 8  # targets in the automatic layout (used when positions is None)
    kinds: object = "checker"  # "checker", "aruco", or a list with one per target
    size_px: float = 24.0  # target side in image pixels at the flying height (sets the size in metres)
    positions: object = None  # (N, 2) east, north in the survey's ENU frame
    inset: float = 0.18  # automatic layout: fraction of the camera block kept free at the edges
    seed: int = 11  # target rotations
    names: list = field(default_factory=list)  # default gcp_01, gcp_02 ...
    placed: list = field(default_factory=list)  # filled by paint(): one dict per target

    def layout(self, scene):
        if self.positions is not None:
            return np.asarray(self.positions, np.float64).reshape(-1, 2)
        C = np.array([c["C"][:2] for c in scene.cameras])
        lo, hi = C.min(0), C.max(0)
        span = hi - lo
        lo, hi = lo + self.inset * span, hi - self.inset * span
        mid = 0.5 * (lo + hi)
        base = [lo, hi, (lo[0], hi[1]), (hi[0], lo[1]), mid,
                (mid[0], lo[1]), (mid[0], hi[1]), (lo[0], mid[1]), (hi[0], mid[1]),
                0.5 * (lo + mid), 0.5 * (hi + mid), (0.5 * (lo[0] + mid[0]), 0.5 * (hi[1] + mid[1]))]
        if self.count > len(base):
            raise ValueError(f"automatic target layout has {len(base)} places; give positions for {self.count}")
        return np.array(base[: self.count], np.float64)

    def paint(self, scene):
        """Paint every target into scene.texture (in place) and remember them in self.placed."""
        spec = scene.spec
        gsd = spec.altitude_m / spec.focal_px
        size_m = self.size_px * gsd
        en = self.layout(scene)
        kinds = [self.kinds] * len(en) if isinstance(self.kinds, str) else list(self.kinds)
        if len(kinds) != len(en) or any(k not in KINDS for k in kinds):
            raise ValueError(f"kinds must be one of {KINDS} or one per target ({len(en)})")
        rng = np.random.default_rng([self.seed, 1])
        self.placed = []
        aruco_id = 0
        for k, ((e, n), kind) in enumerate(zip(en, kinds)):
            angle = float(rng.uniform(0, 90))
            name = self.names[k] if k < len(self.names) else f"gcp_{k + 1:02d}"
            marker = None
            if kind == "aruco":
                marker, aruco_id = aruco_id, aruco_id + 1
            _paint(scene.texture, e, n, size_m, angle, kind, marker)
            up = float(scene.terrain.height(e, n))
            self.placed.append({"name": name, "kind": kind, "aruco_id": marker, "enu": [float(e), float(n), up],
                                "size_m": size_m, "angle_deg": angle})
        return self.placed

    def observations(self, scene, margin_px=4.0):
        """True pixel of every target fully inside a photo: [(target index, image index, x, y)]."""
        from .synthetic import project

        spec = scene.spec
        out = []
        for t, tgt in enumerate(self.placed):
            X = np.array(tgt["enu"])
            h = 0.5 * tgt["size_m"] * math.sqrt(2.0) + 0.5 * tgt["size_m"] / 6.0  # corner + the quiet zone
            ring = X + np.array([[h, 0, 0], [-h, 0, 0], [0, h, 0], [0, -h, 0]])
            for i, cam in enumerate(scene.cameras):
                uv = project(cam["K"], cam["R"], cam["C"], np.vstack([X, ring]), spec.k1, spec.k2)
                if ((uv >= margin_px - 0.5).all() and (uv[:, 0] <= spec.width - 0.5 - margin_px).all()
                        and (uv[:, 1] <= spec.height - 0.5 - margin_px).all()):
                    out.append((t, i, float(uv[0, 0]), float(uv[0, 1])))
        return out

    def write(self, out_dir, scene, frame, gt):
        """gcp_list.txt with the true projections; the targets into the ground-truth dict."""
        from .workspace import _atomic

        crs = utm_crs_for(frame.lon0, frame.lat0)
        xyz = frame.to_crs(np.array([t["enu"] for t in self.placed]).reshape(-1, 3), crs)
        obs = self.observations(scene)
        rows = [crs]
        for t, i, x, y in obs:
            rows.append(f"{xyz[t, 0]:.4f} {xyz[t, 1]:.4f} {xyz[t, 2]:.4f} {x:.4f} {y:.4f} "
                        f"img_{i + 1:04d}.jpg {self.placed[t]['name']}")
        data = ("\n".join(rows) + "\n").encode("utf-8")
        _atomic(out_dir / "gcp_list.txt", lambda f: f.write(data), ".txt")
        gt["targets"] = {"crs": crs, "points": [dict(t, crs_xyz=xyz[k].tolist()) for k, t in enumerate(self.placed)],
                         "observations": [{"target": t, "image": f"img_{i + 1:04d}.jpg", "x": x, "y": y}
                                          for t, i, x, y in obs]}


def _pattern(kind, u, v, half, marker):
    """Target reflectance (0 black .. 1 white) at target-local coordinates (u right, v up), |u|,|v| <= half."""
    if kind == "checker":
        return ((u >= 0) == (v >= 0)).astype(np.float32)
    bits = cv2.aruco.generateImageMarker(aruco_dictionary(), int(marker), 6)  # 6x6 cells incl. the border
    # The marker fills the inner 6/8 of the target (a white quiet zone of one cell around it).
    cell = 2.0 * half / 8.0
    col = np.floor(u / cell + 3.0).astype(int)
    row = np.floor(3.0 - v / cell).astype(int)
    inside = (col >= 0) & (col < 6) & (row >= 0) & (row < 6)
    out = np.ones(u.shape, np.float32)
    out[inside] = bits[row[inside], col[inside]] / 255.0
    return out


def _paint(texture, e, n, size_m, angle_deg, kind, marker):
    """Paint one target of side size_m centred at (e, n), rotated by angle_deg, into a Raster texture."""
    half = 0.5 * size_m
    cell = texture.cell
    reach = half * math.sqrt(2.0) + 2 * cell
    j0 = int(math.floor((e - reach - texture.e0) / cell))
    j1 = int(math.ceil((e + reach - texture.e0) / cell))
    i0 = int(math.floor((texture.n0 - (n + reach)) / cell))
    i1 = int(math.ceil((texture.n0 - (n - reach)) / cell))
    h, w = texture.data.shape[:2]
    if j0 < 0 or i0 < 0 or j1 >= w or i1 >= h:
        raise ValueError(f"target at ({e:.1f}, {n:.1f}) lies outside the survey's texture")
    s = SUPERSAMPLE
    # Sub-sample centres of texel (j, i): offsets (k + 0.5) / s - 0.5 texels, symmetric about the centre.
    off = (np.arange(s) + 0.5) / s - 0.5
    jj = (np.arange(j0, j1 + 1)[:, None] + off[None, :]).ravel()
    ii = (np.arange(i0, i1 + 1)[:, None] + off[None, :]).ravel()
    de = (texture.e0 + jj * cell - e)[None, :]
    dn = (texture.n0 - ii * cell - n)[:, None]
    a = math.radians(angle_deg)
    u = math.cos(a) * de + math.sin(a) * dn
    v = -math.sin(a) * de + math.cos(a) * dn
    u, v = np.broadcast_arrays(u, v)
    on = (np.abs(u) <= half) & (np.abs(v) <= half)
    value = np.where(on, _pattern(kind, u, v, half, marker), 0.0).astype(np.float32)
    cover = on.astype(np.float32)
    shape = (i1 - i0 + 1, j1 - j0 + 1)
    value = value.reshape(shape[0], s, shape[1], s).mean(axis=(1, 3))
    cover = cover.reshape(shape[0], s, shape[1], s).mean(axis=(1, 3))
    patch = texture.data[i0:i1 + 1, j0:j1 + 1].astype(np.float32)
    black, white = 25.0, 235.0  # printed target: not quite 0 / 255
    painted = black * cover + (white - black) * value  # value is already weighted by the coverage
    patch = patch * (1.0 - cover[..., None]) + painted[..., None]
    texture.data[i0:i1 + 1, j0:j1 + 1] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
