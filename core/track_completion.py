"""Track completion: a triangulated point is looked for, by image correlation, in the registered photos
that see it but where no feature of it was matched.

Why: SIFT finds one ground point in only some of the photos that see it. On brighton_beach a point
projects into 5.4 photos on average but was matched in 2.95 (53 % of the points in two only); only
5 % of the missing projections had any keypoint within 3 px (the rate of chance), and doubling the
features moved the mean to 3.03: the detector, not the matcher, loses them.

How, for a point P and a photo k that sees it without observing it: the TEMPLATE x TEMPLATE window
around P's observation in the observing photo nearest to k (the reference r; working resolution, as
SIFT saw it) is the template; photo k is resampled in r's geometry over the plane through P parallel
to r's image plane (the ground, on a nadir block), +-SEARCH px around the prediction, and correlated
with it. From the correlation peak, least-squares matching (an affine window plus brightness and
contrast, `_refine`) gives the position in k: a measurement made by the images, not by the model,
since the search window is wider than the prediction's error (< 1 px after adjustment). Only a
textured template (MIN_TEXTURE) with an interior peak (COARSE_NCC) that matches (MIN_NCC) counts;
the mapper then holds the found observations to FOUND_MAX_SIGMAS after the adjustment, and drops a
two-photo point that REFUTING_PHOTOS other photos refute (nothing like it in the window).

Photos are read through a cache with a byte budget (targets in capture order, so their references
are mostly still in it): memory is the cache, not the block.
"""
import time
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from .bundle import project
from .cancel import check
from .observations import ranges

TEMPLATE = 15  # template side (working pixels); 11 locates as well but carried the blocks less well
SEARCH = 3  # search radius around the prediction (working pixels)
MIN_NCC = 0.75  # correlation a match must reach (1 = identical up to brightness and contrast)
MIN_TEXTURE = 4.0  # grey-level standard deviation below which a template is too flat to locate
EDGE_MARGIN = 2.0  # working pixels kept free at the border of a photo
COARSE_NCC = 0.6  # the window's best correlation before matching corrects the patch's shape
REFUTE_NCC = 0.5  # a textured template correlating below this everywhere in the window is not there
LSM_ITERATIONS = 8  # Gauss-Newton steps of least-squares matching (it converges in 3-5)
MAX_SHAPE_CHANGE = 0.3  # the matched window's shape may differ this much from the ground plane's
LSM_TOLERANCE_PX = 0.02  # a step smaller than this has converged (a tenth of matching's precision)
FOUND_MAX_SIGMAS = 3.0  # a found observation further from its point than this many image sigmas is dropped
REFUTING_PHOTOS = 2  # photos showing nothing like a two-photo point where it should be: a false match
GRAY_CACHE_BYTES = 256 << 20  # decoded working photos kept (brighton at 3200 px: all 18 in 104 MB)
PARALLEL_MIN_PHOTOS = 60  # fewer target photos are searched in this process (a worker's start costs ~1 s)
PARALLEL_BATCHES = 8  # tasks per search on an executor: contiguous runs of targets in capture order


@dataclass
class Views:
    """Registered cameras, per image: x_cam = R (X - C); focal, k1, k2 of its model, principal point,
    original size, and the size of a working pixel in original pixels."""
    R: np.ndarray  # (N,3,3)
    C: np.ndarray  # (N,3)
    focal: np.ndarray  # (N,)
    k1: np.ndarray  # (N,)
    k2: np.ndarray  # (N,)
    pp: np.ndarray  # (N,2)
    sizes: np.ndarray  # (N,2) original width, height

    def project(self, image, X):
        """Original-pixel positions and depths of world points X (n,3) in `image`."""
        n = len(X)
        rep = np.full(n, image)
        return project(self.R[rep], self.C[rep], self.focal[rep], self.k1[rep], self.k2[rep], self.pp[rep], X)


class GrayCache:
    """Working-resolution grey photos, decoded once and kept while they fit a byte budget (least
    recently used out first): cache(k) -> (uint8 image, (sx, sy) original pixels
    per working pixel). read(k) decodes one. Kept as uint8 (a quarter of float32's memory): OpenCV
    resamples it at 1/32 px steps either way, and the rounding of the samples (0.3 grey levels) is
    far below the texture matching needs (MIN_TEXTURE)."""

    def __init__(self, read, budget_bytes=GRAY_CACHE_BYTES):
        self.read, self.budget, self.items = read, budget_bytes, OrderedDict()

    def __call__(self, k):
        k = int(k)
        if k in self.items:
            self.items.move_to_end(k)
        else:
            gray, scale = self.read(k)
            self.items[k] = (np.ascontiguousarray(gray, np.uint8), np.broadcast_to(np.asarray(scale, np.float64), (2,)))
            while len(self.items) > 1 and sum(g.nbytes for g, _ in self.items.values()) > self.budget:
                self.items.popitem(last=False)
        return self.items[k]

    def clear(self):
        self.items.clear()


def candidates(points, obs_point, obs_image, views, images, neighbours, known=None):
    """(point, image) pairs to look for: `images` (registered) where a point observed in one of the
    image's `neighbours` (dict image -> images it was matched with) projects inside, in front, and
    has no observation yet (of obs_*, or of `known`, a pair of (point, image) arrays of further
    observations, e.g. outliers). Returns two int64 arrays."""
    stride = len(views.C)
    kp, ki = (obs_point, obs_image) if known is None else (np.r_[obs_point, known[0]], np.r_[obs_image, known[1]])
    key = np.unique(np.asarray(kp, np.int64) * stride + ki)  # (point, image) observed, sorted
    # the points of each image by one sort (a scan per image grew with the square of the block)
    n_points = int(np.max(obs_point, initial=0)) + 1
    per_image, pts_sorted = np.divmod(np.unique(np.asarray(obs_image, np.int64) * n_points + obs_point), n_points)
    bounds = np.searchsorted(per_image, np.arange(stride + 1))
    cand_p, cand_k = [], []
    for k in images:
        near = [pts_sorted[bounds[j]:bounds[j + 1]] for j in neighbours.get(int(k), ())]
        if not near:
            continue
        pts = np.unique(np.concatenate(near))
        query = pts * stride + k
        at = np.minimum(np.searchsorted(key, query), len(key) - 1)
        pts = pts[key[at] != query]  # pts is empty when key is: key holds every observed pair
        if not len(pts):
            continue
        uv, z = views.project(k, points[pts])
        w, h = views.sizes[k]
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] <= h - 1)
        cand_p.append(pts[inside])
        cand_k.append(np.full(int(inside.sum()), k, np.int64))
    if not cand_p:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(cand_p), np.concatenate(cand_k)


def nearest_observation(cand_p, cand_k, obs_point, obs_image, C):
    """For each candidate (point, image), the observation (index into obs_*) of that point whose
    camera centre is nearest to the candidate image's."""
    order = np.argsort(obs_point, kind="stable")
    sorted_pt = obs_point[order]
    lo = np.searchsorted(sorted_pt, cand_p)
    hi = np.searchsorted(sorted_pt, cand_p, side="right")
    rows = np.repeat(np.arange(len(cand_p)), hi - lo)
    obs = order[ranges(lo, hi)]
    dist = np.linalg.norm(C[obs_image[obs]] - C[cand_k[rows]], axis=1)
    best = np.full(len(cand_p), -1, np.int64)
    by_distance = np.lexsort((dist, rows))  # per candidate, nearest first
    first = np.flatnonzero(np.r_[True, rows[by_distance][1:] != rows[by_distance][:-1]])
    best[rows[by_distance][first]] = obs[by_distance][first]
    return best


def _sample(gray, x, y, interpolation=cv2.INTER_LINEAR):
    """Samples of `gray` at working-pixel positions x, y (same shape, float64)."""
    shape, size = x.shape, x.size
    width = 4096  # remap's maps must stay below 32767 rows and columns: fold the samples into rows
    rows = -(-size // width)
    maps = np.zeros((2, rows * width), np.float32)
    maps[0, :size], maps[1, :size] = x.ravel(), y.ravel()
    out = cv2.remap(gray, maps[0].reshape(rows, width), maps[1].reshape(rows, width), interpolation,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.ravel()[:size].reshape(shape).astype(np.float64)


def _to_working(xy, scale):
    return (xy + 0.5) / scale - 0.5


def _plane_points(views, ref, xn, depth, offsets_px):
    """World points of reference pixels offset by offsets_px ((n, m, 2) original pixels) from rays xn
    (n, 2; undistorted normalised) on the plane at `depth` parallel to each reference image: (n, m, 3).
    (The lens distortion's change over a few pixels is neglected: the patch is only resampled.)"""
    R, C, f = views.R[ref], views.C[ref], views.focal[ref]
    centre = np.column_stack([xn * depth[:, None], depth])  # camera frame
    offsets_px = np.asarray(offsets_px, np.float64)
    step = (depth / f)[:, None, None] * np.concatenate([offsets_px, np.zeros(offsets_px.shape[:2] + (1,))], axis=2)
    cam = centre[:, None, :] + step
    return np.einsum("nji,nmj->nmi", R, cam) + C[:, None, :]


def _ncc(templates, regions):
    """Normalised cross-correlation of each template (n,T,T) at each shift inside its region (n,R,R): (n,S,S)."""
    side = regions.shape[1] - TEMPLATE + 1
    out = np.empty((len(templates), side, side), np.float32)
    for i, (t, r) in enumerate(zip(templates, regions)):
        out[i] = cv2.matchTemplate(r.astype(np.float32), t.astype(np.float32), cv2.TM_CCOEFF_NORMED)
    return out


def _parabola(left, centre, right):
    denom = left - 2.0 * centre + right
    return np.where(denom < 0, 0.5 * (left - right) / np.where(denom < 0, denom, -1.0), 0.0)


def _window_positions(centre, A, d, half=TEMPLATE // 2):
    """Target positions x, y (n, 2 half + 1, 2 half + 1) of a window of reference pixels shifted by
    d (n, 2) through the affine map (centre, A)."""
    t = np.arange(-half, half + 1, dtype=np.float64)
    qx = t[None, None, :] + d[:, 0, None, None]  # (n, 1, T) reference columns
    qy = t[None, :, None] + d[:, 1, None, None]  # (n, T, 1) reference rows
    x = centre[:, 0, None, None] + A[:, 0, 0, None, None] * qx + A[:, 0, 1, None, None] * qy
    y = centre[:, 1, None, None] + A[:, 1, 0, None, None] * qx + A[:, 1, 1, None, None] * qy
    return x, y


def _refine(gray, templates, centre, A):
    """Least-squares matching (Gruen 1985): the affine map p -> c + B p of the template's pixels p
    into the target (c: the point's position, target working pixels) and the brightness a, b that
    minimise sum (a G(c + B p) + b - T(p))^2, by Gauss-Newton from (centre, A). Sub-pixel without
    the pull toward whole pixels of a parabola through correlation scores, and free to correct the
    shape the ground plane gave the window (a slope, relief). Returns (c, samples of G there,
    converged)."""
    n = len(centre)
    half = TEMPLATE // 2
    t = np.arange(-half, half + 1, dtype=np.float64)
    px = np.broadcast_to(t[None, :], (TEMPLATE, TEMPLATE)).ravel()[None]
    py = np.broadcast_to(t[:, None], (TEMPLATE, TEMPLATE)).ravel()[None]
    tpl = templates.reshape(n, -1).astype(np.float64)
    c, B = centre.astype(np.float64).copy(), A.astype(np.float64).copy()
    a, b = np.ones(n), np.zeros(n)
    converged = np.zeros(n, bool)
    active = np.arange(n)
    for iteration in range(LSM_ITERATIONS):
        x, y = _window_positions(c[active], B[active], np.zeros((len(active), 2)))
        g = _sample(gray, x, y, cv2.INTER_CUBIC).reshape(len(active), -1)
        if iteration == 0:  # brightness and contrast from the moments
            a = tpl.std(axis=1) / np.maximum(g.std(axis=1), 1e-6)
            b = tpl.mean(axis=1) - a * g.mean(axis=1)
        # The image's gradient from the resampled window itself (Gruen's way): differences along the
        # template's axes, taken back through the window's affine map.
        dp_y, dp_x = np.gradient(g.reshape(-1, TEMPLATE, TEMPLATE), axis=(1, 2))
        Binv = np.linalg.inv(B[active])  # d(p)/d(image): image gradient = Binv^T (template gradient)
        dp_x, dp_y = dp_x.reshape(len(active), -1), dp_y.reshape(len(active), -1)
        aa = a[active, None]
        gx = aa * (Binv[:, None, 0, 0] * dp_x + Binv[:, None, 1, 0] * dp_y)
        gy = aa * (Binv[:, None, 0, 1] * dp_x + Binv[:, None, 1, 1] * dp_y)
        r = aa * g + b[active, None] - tpl[active]
        Jt = np.empty((len(active), 8, g.shape[1]))  # the Jacobian, transposed: rows are parameters
        Jt[:, 0], Jt[:, 1], Jt[:, 6], Jt[:, 7] = gx, gy, g, 1.0
        np.multiply(gx, px, out=Jt[:, 2])
        np.multiply(gx, py, out=Jt[:, 3])
        np.multiply(gy, px, out=Jt[:, 4])
        np.multiply(gy, py, out=Jt[:, 5])
        step = -np.linalg.solve(Jt @ Jt.transpose(0, 2, 1) + 1e-9 * np.eye(8), Jt @ r[..., None])[..., 0]
        c[active] += np.clip(step[:, :2], -1.0, 1.0)  # at most a pixel per step: stays in the peak's basin
        B[active] += np.clip(step[:, 2:6], -0.1, 0.1).reshape(-1, 2, 2)
        a[active] += step[:, 6]
        b[active] += step[:, 7]
        done = np.abs(step[:, :2]).max(axis=1) < LSM_TOLERANCE_PX  # the position is what is asked for
        converged[active[done]] = True
        active = active[~done]
        if not len(active):
            break
    x, y = _window_positions(c, B, np.zeros((n, 2)))
    h, w = gray.shape
    # Where the window left the photo (replicated border pixels) or its shape ran off, the fit is void.
    inside = (x.min(axis=(1, 2)) >= EDGE_MARGIN) & (y.min(axis=(1, 2)) >= EDGE_MARGIN) \
        & (x.max(axis=(1, 2)) <= w - 1 - EDGE_MARGIN) & (y.max(axis=(1, 2)) <= h - 1 - EDGE_MARGIN)
    sane = np.linalg.norm(B - A, axis=(1, 2)) <= MAX_SHAPE_CHANGE * np.linalg.norm(A, axis=(1, 2))
    return c, _sample(gray, x, y, cv2.INTER_CUBIC), converged & inside & sane


def _ncc_at(templates, samples):
    t = templates - templates.mean(axis=(1, 2), keepdims=True)
    g = samples - samples.mean(axis=(1, 2), keepdims=True)
    return (t * g).sum(axis=(1, 2)) / np.maximum(np.sqrt((t * t).sum(axis=(1, 2)) * (g * g).sum(axis=(1, 2))), 1e-9)


def _affine_map(views, ref_image, ref_xn, depth, ref_scale, target_image, target_scale):
    """The plane's map from reference to target working pixels near each point, as an affine map:
    centre (n,2), A (n,2,2) (target pixels per reference pixel), and the depth in the target (n,)."""
    r = float(TEMPLATE // 2 + SEARCH)
    probes = np.array([[0, 0], [r, 0], [-r, 0], [0, r], [0, -r]])
    X = _plane_points(views, ref_image, ref_xn, depth, probes[None] * ref_scale[:, None, :])
    uv, z = views.project(target_image, X.reshape(-1, 3))
    wk = _to_working(uv, target_scale).reshape(len(ref_image), 5, 2)
    A = np.stack([(wk[:, 1] - wk[:, 2]) / (2 * r), (wk[:, 3] - wk[:, 4]) / (2 * r)], axis=2)
    return wk[:, 0], A, z.reshape(-1, 5).min(axis=1)


def locate(views, read_gray, ref_image, ref_xy, ref_xn, depth, target_image):
    """Look for reference observations (ref_image, ref_xy original px, ref_xn undistorted normalised,
    depth of the point in the reference camera) in one target image: correlation over the search
    window, then least-squares matching from its peak. Returns (xy (n,2) original pixels in the
    target, correlation score (n,), ok (n,) bool, refuted (n,) bool: looked at, textured and in
    view, and nothing like the template anywhere in the window)."""
    n = len(ref_image)
    half, reach = TEMPLATE // 2, TEMPLATE // 2 + SEARCH
    ok = np.ones(n, bool)
    templates = np.zeros((n, TEMPLATE, TEMPLATE))
    ref_scale = np.ones((n, 2))
    for r in np.unique(ref_image):
        sel = np.flatnonzero(ref_image == r)
        gray, scale = read_gray(r)
        ref_scale[sel] = scale
        c = _to_working(ref_xy[sel], scale)
        h, w = gray.shape
        ok[sel] &= (c[:, 0] >= half + EDGE_MARGIN) & (c[:, 1] >= half + EDGE_MARGIN) \
            & (c[:, 0] <= w - 1 - half - EDGE_MARGIN) & (c[:, 1] <= h - 1 - half - EDGE_MARGIN)
        x, y = _window_positions(c, np.broadcast_to(np.eye(2), (len(sel), 2, 2)), np.zeros((len(sel), 2)))
        templates[sel] = _sample(gray, x, y, cv2.INTER_CUBIC)
    ok &= templates.std(axis=(1, 2)) >= MIN_TEXTURE
    gray, scale = read_gray(target_image)
    h, w = gray.shape
    centre, A, z = _affine_map(views, ref_image, ref_xn, depth, ref_scale, target_image, scale)
    ok &= z > 0
    corner = np.abs(A).sum(axis=2) * reach  # how far the search window reaches from its centre
    ok &= (centre - corner >= EDGE_MARGIN).all(axis=1) & (centre[:, 0] + corner[:, 0] <= w - 1 - EDGE_MARGIN) \
        & (centre[:, 1] + corner[:, 1] <= h - 1 - EDGE_MARGIN)
    xy = np.full((n, 2), np.nan)
    score = np.zeros(n)
    refuted = np.zeros(n, bool)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return xy, score, ok, refuted
    x, y = _window_positions(centre[idx], A[idx], np.zeros((len(idx), 2)), reach)
    ncc = _ncc(templates[idx], _sample(gray, x, y, cv2.INTER_CUBIC))
    s = 2 * SEARCH + 1
    flat = ncc.reshape(len(idx), -1).argmax(axis=1)
    row, col = np.divmod(flat, s)
    best = ncc[np.arange(len(idx)), row, col]
    a = np.arange(len(idx))
    rr, cc = np.clip(row, 1, s - 2), np.clip(col, 1, s - 2)
    d_col = _parabola(ncc[a, rr, cc - 1], ncc[a, rr, cc], ncc[a, rr, cc + 1])
    d_row = _parabola(ncc[a, rr - 1, cc], ncc[a, rr, cc], ncc[a, rr + 1, cc])
    start = np.column_stack([cc - SEARCH + d_col, rr - SEARCH + d_row])
    refuted[idx] = best < REFUTE_NCC
    ok[idx] = False
    # Least-squares matching only where the correlation peaks inside the window, high enough: the rest
    # is rejected whatever matching gives, so the result is the same.
    peak = (row > 0) & (row < s - 1) & (col > 0) & (col < s - 1) & (best >= COARSE_NCC)
    idx, start = idx[peak], start[peak]
    if not len(idx):
        return xy, score, ok, refuted
    found, samples, converged = _refine(gray, templates[idx], centre[idx] + np.einsum("nij,nj->ni", A[idx], start), A[idx])
    shift = np.linalg.solve(A[idx], (found - centre[idx])[..., None])[..., 0]  # reference pixels
    final = _ncc_at(templates[idx], samples)
    xy[idx] = (found + 0.5) * scale - 0.5
    score[idx] = final
    ok[idx] = converged & (final >= MIN_NCC) & (np.abs(shift) <= SEARCH).all(axis=1)
    return xy, score, ok, refuted


def _batch_bounds(n, make_executor):
    """Contiguous runs of targets, one task each: in this process one run; on an executor a few per
    worker, so that the references a worker reads stay mostly its own (photos overlap in capture order)."""
    if make_executor is None or n < PARALLEL_MIN_PHOTOS:
        return [(0, n)] if n else []
    edges = np.linspace(0, n, min(n, PARALLEL_BATCHES) + 1).astype(int)
    return list(zip(edges[:-1], edges[1:]))


def locate_batch(task):
    """What an executor's worker runs: (batch number, views, read_gray, looks) -> (batch number,
    locate's result per look (target, ref_image, ref_xy, ref_xn, depth)); it decodes the photos itself,
    through a cache of its own."""
    number, views, read_gray, looks = task
    gray = GrayCache(read_gray)
    return number, [locate(views, gray, ref, xy, xn, depth, k) for k, ref, xy, xn, depth in looks]


def _locate_batches(batches, views, gray, make_executor, is_canceled):
    """locate's result for every look of every batch, in order: here, or one task per batch on the
    executor make_executor() gives (made only then: a Dask client connects and probes the storage)."""
    if make_executor is None or len(batches) <= 1:
        results = []
        for looks in batches:
            for k, ref, xy, xn, depth in looks:
                check(is_canceled)
                results.append(locate(views, gray, ref, xy, xn, depth, k))
        return results
    tasks = [(number, views, gray.read, looks) for number, looks in enumerate(batches)]
    with make_executor() as executor:
        done = dict(executor.map(locate_batch, tasks, is_canceled=is_canceled, message="looking for points"))
    return [r for number in range(len(batches)) for r in done[number]]


def complete_tracks(points, obs_point, obs_image, obs_xy, obs_xn, views, images, neighbours, gray,
                    known=None, is_canceled=None, make_executor=None):
    """New observations of the points (indices into `points`) found by correlation in `images`.

    obs_*: the points' current observations (original pixels; obs_xn undistorted normalised);
    neighbours: image -> images it shares matches with (where to look for points); gray: a GrayCache
    of the photos; known: see `candidates`; make_executor() gives the executor a search of many photos
    runs on (its workers read the photos through gray.read).
    Returns (point, image, xy (n,2) original pixels, score) of what was found, and (point, image)
    of the photos that refute a point (see `locate`)."""
    cand_p, cand_k = candidates(points, obs_point, obs_image, views, images, neighbours, known)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0))
    if not len(cand_p):
        return empty, (np.zeros(0, np.int64), np.zeros(0, np.int64))
    ref = nearest_observation(cand_p, cand_k, obs_point, obs_image, views.C)
    ref_image = obs_image[ref]
    depth = np.einsum("nj,nj->n", views.R[ref_image][:, 2, :], points[cand_p] - views.C[ref_image])

    # Targets in capture order, so that the references of one photo are mostly cached. (Two threads
    # were slower, 8.6 s against 5.7 s on brighton: NumPy's small batched products contend.)
    order = np.argsort(cand_k, kind="stable")
    targets, starts = np.unique(cand_k[order], return_index=True)
    looks = [(int(k), order[a:b]) for k, a, b in zip(targets, starts, np.r_[starts[1:], len(order)])]
    batches = [[(k, ref_image[sel], obs_xy[ref[sel]], obs_xn[ref[sel]], depth[sel]) for k, sel in looks[a:b]]
               for a, b in _batch_bounds(len(looks), make_executor)]
    located = _locate_batches(batches, views, gray, make_executor, is_canceled)
    out, refuted = [], []
    for (_, sel), (xy, score, ok, no) in zip(looks, located):
        out.append((cand_p[sel[ok]], cand_k[sel[ok]], xy[ok], score[ok]))
        refuted.append((cand_p[sel[no]], cand_k[sel[no]]))
    found = tuple(np.concatenate(parts) for parts in zip(*out)) if out else empty
    none = np.zeros(0, np.int64)
    return found, tuple(np.concatenate([r[i] for r in refuted] + [none]) for i in (0, 1))


class TrackCompletion:
    """The mapper's side of track completion (a mixin of core/reconstruction.py's _Mapper: it reads
    and extends the mapper's observations, poses and points)."""

    def add_observations(self, track, image, xy):
        """Append observations (kept sorted by track, as triangulation expects) as valid inliers."""
        if not len(track):
            return
        self.obs_track = np.r_[self.obs_track, np.asarray(track, np.int64)]
        self.obs_image = np.r_[self.obs_image, np.asarray(image, np.int64)]
        self.obs_xy = np.concatenate([self.obs_xy, np.asarray(xy, np.float64).reshape(-1, 2)])
        self.obs_valid = np.r_[self.obs_valid, np.ones(len(track), bool)]
        self.obs_ok = np.r_[self.obs_ok, np.ones(len(track), bool)]
        self.obs_found = np.r_[self.obs_found, np.ones(len(track), bool)]
        order = np.argsort(self.obs_track, kind="stable")
        for name in ("obs_track", "obs_image", "obs_xy", "obs_valid", "obs_ok", "obs_found"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[order]))
        self.update_normalised()
        self.covis = self.covisibility()
        self.init_observation_index()  # the lookups by image and by track point into the old order

    def complete_tracks(self, comp):
        """Find the points of `comp` in the registered photos that see them but never matched them
        (image correlation, core/track_completion.py). Returns the number of observations added."""
        if self.photos is None or not self.cfg.complete_tracks:
            return 0
        t0 = time.perf_counter()
        obs = self.active_obs(comp)
        known = np.flatnonzero(~self.obs_ok & self.has_point[self.obs_track])  # outliers stay out
        refuted = self.refuted_looks
        neighbours = {}
        for i, j in self.covis:
            neighbours.setdefault(i, []).append(j)
            neighbours.setdefault(j, []).append(i)
        mdl = self.image_model
        views = Views(R=self.R, C=self.C, focal=self.focal[mdl], k1=self.k1[mdl], k2=self.k2[mdl],
                      pp=self.pp[mdl], sizes=self.sizes)
        (track, image, xy, _), (refuted_point, refuted_image) = complete_tracks(
            self.points, self.obs_track[obs], self.obs_image[obs], self.obs_xy[obs], self.xn[obs], views,
            np.flatnonzero(self.registered & (self.component == comp)), neighbours, self.photos,
            known=(np.r_[self.obs_track[known], refuted[0]], np.r_[self.obs_image[known], refuted[1]]),
            is_canceled=self.is_canceled, make_executor=self.make_executor)
        self.refuted_looks = (np.r_[refuted[0], refuted_point], np.r_[refuted[1], refuted_image])  # not again
        refuting = np.bincount(self.refuted_looks[0], minlength=self.n_tracks)
        # A point seen in two photos only is checked by nothing but its epipolar line; when two more
        # photos that see it show nothing like it where it should be, it is a false match.
        n_views = np.bincount(self.obs_track[obs], minlength=self.n_tracks) + np.bincount(track, minlength=self.n_tracks)
        false = np.flatnonzero((n_views == 2) & (refuting >= REFUTING_PHOTOS) & (self.point_comp == comp))
        self.add_observations(track, image, xy)
        self.drop_points(false)
        self.timings["complete_tracks_s"] += time.perf_counter() - t0
        n_points = int((self.point_comp == comp).sum())
        self.log.append(f"component {comp}: track completion found {len(track)} more observations of "
                        f"{len(np.unique(track))} of its {n_points} points by image correlation; {len(false)} "
                        f"two-photo points that {REFUTING_PHOTOS}+ other photos refuted were dropped")
        return len(track)

    def trim_found(self, comp):
        """Drop found observations the adjusted model does not explain to FOUND_MAX_SIGMAS image
        sigmas: unlike matches, nothing else has checked them (a look-alike in the window). Returns
        the number dropped."""
        obs = self.active_obs(comp)
        obs = obs[self.obs_found[obs]]
        err, _ = self.reproj_error(obs, self.points[self.obs_track[obs]])
        bad = obs[err > FOUND_MAX_SIGMAS * self.sigma_px]
        self.obs_ok[bad] = False
        self.obs_valid[bad] = False  # for good: retriangulation does not re-admit them
        self.log.append(f"component {comp}: {len(bad)} of {len(obs)} found observations beyond "
                        f"{FOUND_MAX_SIGMAS:g} x {self.sigma_px:.2f} px dropped")
        return len(bad)

    def drop_points(self, tracks):
        """Remove the points of `tracks` for good: their observations are no longer triangulated."""
        self.has_point[tracks] = False
        self.point_comp[tracks] = -1
        self.points[tracks] = np.nan
        self.obs_valid[np.isin(self.obs_track, tracks)] = False
