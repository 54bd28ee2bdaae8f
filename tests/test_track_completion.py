"""Track completion (core/track_completion.py) against a rendered scene with exact truth: a textured
ground plane seen by two nadir cameras of known pose, one of them rotated and higher (scale and
rotation between the photos, as between opposite flight lines)."""
import cv2
import numpy as np
import pytest

from alignkit.core import track_completion as tc

W, H, F = 480, 360, 400.0
PP = np.array([(W - 1) / 2.0, (H - 1) / 2.0])


def _rot_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


# Nadir: camera x east, y south, z down.
NADIR = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])


def _texture(seed, size=1024):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), 2.0) + 0.5 * cv2.GaussianBlur(noise, (0, 0), 6.0)
    tex = (tex - tex.mean()) / tex.std()
    return np.clip(128 + 40 * tex, 0, 255).astype(np.float32)


def _render(R, C, texture, metres_per_texel=0.05):
    """The ground plane z = 0 as camera (R, C) sees it (no distortion)."""
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([(u - PP[0]) / F, (v - PP[1]) / F, np.ones_like(u)], axis=-1) @ R  # world directions
    t = -C[2] / rays[..., 2]
    ground = C[:2] + rays[..., :2] * t[..., None]
    centre = texture.shape[0] / 2.0
    mx = (ground[..., 0] / metres_per_texel + centre).astype(np.float32)
    my = (-ground[..., 1] / metres_per_texel + centre).astype(np.float32)
    return cv2.remap(texture, mx, my, cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _project(R, C, X):
    x = (X - C) @ R.T
    return x[:, :2] / x[:, 2:] * F + PP, x[:, 2]


def _scene(second_texture_seed=None):
    R0, C0 = NADIR, np.array([0.0, 0.0, 20.0])
    R1, C1 = NADIR @ _rot_z(-30.0), np.array([1.5, -1.0, 23.0])  # world -> camera: yaw 30 deg, 15 % higher
    tex = _texture(1)
    images = [_render(R0, C0, tex), _render(R1, C1, _texture(second_texture_seed) if second_texture_seed else tex)]
    views = tc.Views(R=np.stack([R0, R1]), C=np.stack([C0, C1]), focal=np.full(2, F), k1=np.zeros(2),
                     k2=np.zeros(2), pp=np.stack([PP, PP]), sizes=np.array([[W, H], [W, H]], float))
    rng = np.random.default_rng(7)
    X = np.column_stack([rng.uniform(-4, 4, 300), rng.uniform(-3, 3, 300), np.zeros(300)])
    xy0, depth = _project(R0, C0, X)
    return views, images, X, xy0, depth


def _locate(views, images, xy0, depth, shift_px=0.0):
    cache = tc.GrayCache(lambda k: (images[k], (1.0, 1.0)))
    xn = (xy0 - PP) / F
    return tc.locate(views, cache, np.zeros(len(xy0), np.int64), xy0 + shift_px, xn, depth, 1)


def test_least_squares_matching_finds_the_true_position_to_a_twentieth_of_a_pixel():
    views, images, X, xy0, depth = _scene()
    xy, score, ok, refuted = _locate(views, images, xy0, depth)
    truth, _ = _project(views.R[1], views.C[1], X)
    err = np.linalg.norm(xy[ok] - truth[ok], axis=1)
    assert ok.mean() > 0.9 and not refuted.any()
    assert np.median(err) < 0.05 and err.max() < 0.3, (np.median(err), err.max())
    assert score[ok].min() >= tc.MIN_NCC


def test_the_position_comes_from_the_images_not_from_the_prediction():
    """Points 1 m too high on the viewing ray of photo 0 (same observation there, a prediction in
    photo 1 more than a pixel off): the correlation still lands on the ground point photo 0 saw."""
    views, images, X, xy0, depth = _scene()
    truth, _ = _project(views.R[1], views.C[1], X)
    wrong_depth = depth * 0.95
    xn = (xy0 - PP) / F
    Xw = views.C[0] + (np.column_stack([xn, np.ones(len(xn))]) * wrong_depth[:, None]) @ views.R[0]
    predicted, _ = _project(views.R[1], views.C[1], Xw)
    shift = np.linalg.norm(predicted - truth, axis=1)
    assert np.median(shift) > 1.0
    xy, _, ok, _ = _locate(views, images, xy0, wrong_depth)
    err = np.linalg.norm(xy[ok] - truth[ok], axis=1)
    assert ok.mean() > 0.8 and np.median(err) < 0.1, np.median(err)


def test_a_photo_of_other_ground_finds_nothing_and_refutes_what_it_sees():
    views, images, X, xy0, depth = _scene(second_texture_seed=99)
    _, _, ok, refuted = _locate(views, images, xy0, depth)
    assert ok.mean() < 0.02
    assert refuted.mean() > 0.5


def test_flat_ground_is_neither_found_nor_refuted():
    views, images, X, xy0, depth = _scene()
    images = [np.full_like(images[0], 120), images[1]]
    _, _, ok, refuted = _locate(views, images, xy0, depth)
    assert not ok.any() and not refuted.any()


def test_candidates_are_the_points_a_photo_sees_but_does_not_observe():
    views, images, X, xy0, depth = _scene()
    obs_point = np.arange(len(X))
    obs_image = np.zeros(len(X), np.int64)
    cand_p, cand_k = tc.candidates(X, obs_point, obs_image, views, [1], {1: [0]})
    _, z = _project(views.R[1], views.C[1], X)
    uv, _ = _project(views.R[1], views.C[1], X)
    inside = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] <= H - 1) & (z > 0)
    assert set(cand_p.tolist()) == set(np.flatnonzero(inside).tolist()) and (cand_k == 1).all()
    # already observed in photo 1 (as an inlier or an outlier): not a candidate
    known = (np.array([0, 1]), np.array([1, 1]))
    cand_p, _ = tc.candidates(X, obs_point, obs_image, views, [1], {1: [0]}, known=known)
    assert 0 not in cand_p and 1 not in cand_p


@pytest.mark.parametrize("budget_images", [1, 3])
def test_photos_are_decoded_once_while_they_fit_the_budget(budget_images):
    reads = []
    image = np.zeros((10, 10), np.uint8)

    def read(k):
        reads.append(k)
        return image, (1.0, 1.0)

    cache = tc.GrayCache(read, budget_bytes=budget_images * image.nbytes)
    for k in [0, 1, 0, 1, 2, 0]:
        cache(k)
    assert reads == ([0, 1, 0, 1, 2, 0] if budget_images == 1 else [0, 1, 2])


def test_search_on_an_executor_finds_what_the_search_here_finds(monkeypatch, tmp_path):
    """Four photos along a line, points observed in the first only: looked for in the other three
    in two batches on a process pool (whose workers read the photos themselves), the same result."""
    from alignkit.core.executor import ProcessExecutor
    from alignkit.core.features import WorkingGray

    tex = _texture(1)
    C = np.array([[0.0, 0.0, 20.0], [1.0, 0.2, 20.5], [2.0, -0.3, 21.0], [3.0, 0.1, 19.5]])
    R = np.stack([NADIR @ _rot_z(a) for a in (0.0, 5.0, -8.0, 12.0)])
    paths = tuple(tmp_path / f"{k}.png" for k in range(4))
    for path, r, c in zip(paths, R, C):
        cv2.imwrite(str(path), _render(r, c, tex))
    photos = WorkingGray(paths, 4000)
    views = tc.Views(R=R, C=C, focal=np.full(4, F), k1=np.zeros(4), k2=np.zeros(4), pp=np.tile(PP, (4, 1)),
                     sizes=np.tile([W, H], (4, 1)).astype(float))
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.uniform(-3, 5, 400), rng.uniform(-3, 3, 400), np.zeros(400)])
    xy0, _ = _project(R[0], C[0], X)
    seen = (xy0 >= 20).all(axis=1) & (xy0[:, 0] < W - 20) & (xy0[:, 1] < H - 20)
    X, xy0 = X[seen], xy0[seen]
    args = (X, np.arange(len(X)), np.zeros(len(X), np.int64), xy0, (xy0 - PP) / F, views, [1, 2, 3],
            {0: [1, 2, 3], 1: [0], 2: [0], 3: [0]})
    here = tc.complete_tracks(*args, tc.GrayCache(photos))
    monkeypatch.setattr(tc, "PARALLEL_MIN_PHOTOS", 2)
    monkeypatch.setattr(tc, "PARALLEL_BATCHES", 2)
    there = tc.complete_tracks(*args, tc.GrayCache(photos), make_executor=lambda: ProcessExecutor(2))
    (point, image, xy, score), refuted = here
    assert len(point) > 0.5 * len(X) and set(image.tolist()) == {1, 2, 3}
    # The same observations; positions to the last bits only: the workers run BLAS on one thread (see
    # core/executor.py), this process on every core, and a sum in another order may differ there (an
    # EPYC machine: 2 of 2,400 coordinates by 3e-14 px).
    for a, b in zip(here[0] + here[1], there[0] + there[1]):
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
        else:
            np.testing.assert_array_equal(a, b)
