"""SIFT feature store: pixel convention, scaling, resumability, determinism, cancellation."""

import os
import time

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree

from alignkit.core.cancel import Canceled
from alignkit.core.config import AlignConfig
from alignkit.core.executor import ProcessExecutor, SerialExecutor
from alignkit.core.features import FeatureStore, extract_features
from alignkit.core.synthetic import make_texture


def _texture(seed, width=720, height=480):
    """A colour image with blob texture at several scales (SIFT finds plenty)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for sigma in (1.5, 4.0, 10.0):
        noise = rng.normal(0, 1, (height, width, 3)).astype(np.float32)
        img += cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


def _config(**kw):
    values = {"max_image_size": 400, "max_features": 1500, "workers": 1}
    values.update(kw)
    return AlignConfig(**values)


@pytest.fixture
def rotated_pair(tmp_path):
    img = _texture(1)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), img)
    cv2.imwrite(str(folder / "b.png"), np.ascontiguousarray(img[::-1, ::-1]))
    return [folder / "a.png", folder / "b.png"], img


def test_keypoints_follow_pixel_centre_convention_after_scaling(rotated_pair, tmp_path):
    """A point at (x, y) sits at (W-1-x, H-1-y) in the 180-degree rotated image, at any working scale."""
    paths, img = rotated_pair
    height, width = img.shape[:2]
    store = extract_features(paths, tmp_path / "ws", _config(), SerialExecutor())
    a, b = store.keypoints(0), store.keypoints(1)
    b_back = np.column_stack([width - 1 - b[:, 0], height - 1 - b[:, 1]])
    dist, idx = cKDTree(b_back).query(a)
    close = dist < 1.0  # the same detections (working pixel = 1.8 original pixels here)
    assert close.sum() > 300
    residual = a[close] - b_back[idx[close]]
    # Without the 0.25 px offset correction this would be 2 * 0.25 * 1.8 = 0.9 px.
    assert np.all(np.abs(np.median(residual, axis=0)) < 0.05)
    assert store.image_size(0) == (width, height)
    assert store.working_scale(0) == pytest.approx(width / 400)


def test_strips_find_the_same_keypoints_as_one_pass():
    """SIFT in overlapping strips (to bound memory) keeps what one SIFT pass over the image keeps."""
    from alignkit.core.features import sift_features

    gray = cv2.cvtColor(_texture(4, 900, 500), cv2.COLOR_BGR2GRAY)
    whole, _, _ = sift_features(gray, 2000, 0.02)
    strips, _, _ = sift_features(gray, 2000, 0.02, max_tile_pixels=150_000)  # 3 strips
    dist, _ = cKDTree(whole[:, :2]).query(strips[:, :2])
    assert len(strips) == len(whole) == 2000
    assert np.mean(dist < 0.01) > 0.95


def test_detection_without_doubled_octave_matches_full_sift():
    """Detect on the halved image, describe on the image: the same keypoints as OpenCV's full SIFT."""
    from alignkit.core.features import sift_features, sift_features_no_doubling

    gray = cv2.cvtColor(_texture(6, 900, 600), cv2.COLOR_BGR2GRAY)
    full, full_desc, _ = sift_features(gray, 1500, 0.02)
    fast, fast_desc, _ = sift_features_no_doubling(gray, 1500, 0.02)
    assert len(fast) == len(full) == 1500
    dist, idx = cKDTree(full[:, :2]).query(fast[:, :2])
    close = dist < 0.5
    assert close.mean() > 0.7
    assert np.median(dist) < 0.2  # both in the pixel-centre convention, no offset between them
    np.testing.assert_allclose(np.median(fast[close, 2] / full[idx[close], 2]), 1.0, atol=0.05)  # same scales
    # Descriptors of the same keypoints agree (both from the image itself, octave 0 and up).
    diff = np.linalg.norm(fast_desc[close].astype(float) - full_desc[idx[close]].astype(float), axis=1)
    norm = np.linalg.norm(full_desc[idx[close]].astype(float), axis=1)
    assert np.median(diff / norm) < 0.25


def test_keypoints_near_the_border_are_biased_inward():
    """The premise of tracks.BORDER_SIZES: the same keypoints found on an image and on crops of it
    whose left edge comes close to them. Same pixels, so any shift is the border's doing: within 1.5
    keypoint sizes of the edge they move inward by ~0.15 px; from 2 sizes on they stay in place."""
    from alignkit.core.features import sift_features_no_doubling
    from alignkit.core.tracks import BORDER_SIZES

    gray = cv2.cvtColor(make_texture(np.random.default_rng(1), (480, 640)), cv2.COLOR_BGR2GRAY)
    whole, _, _ = sift_features_no_doubling(gray, 8000, 0.02)
    tree = cKDTree(whole[:, :2])
    gaps, shifts = [], []
    for cut in range(20, 100, 6):
        kp, _, _ = sift_features_no_doubling(np.ascontiguousarray(gray[:, cut:]), 8000, 0.02)
        kp[:, 0] += cut
        dist, idx = tree.query(kp[:, :2])
        same = (dist < 1.0) & (np.abs(kp[:, 2] / whole[idx, 2] - 1) < 0.1)
        gaps.append(((kp[:, 0] - cut + 0.5) / kp[:, 2])[same])
        shifts.append((kp[:, 0] - whole[idx, 0])[same])
    gap, inward = np.concatenate(gaps), np.concatenate(shifts)
    near, far = gap < BORDER_SIZES, (gap >= 2) & (gap < 4)
    assert near.sum() >= 20 and far.sum() >= 200
    assert inward[near].mean() > 0.07
    assert abs(inward[far].mean()) < 0.02


def test_budget_keeps_coarse_octaves_first():
    """Over budget, the finest-scale features go first (COLMAP's rule), not the weakest of all scales."""
    from alignkit.core.features import sift_features

    gray = cv2.cvtColor(_texture(5, 800, 600), cv2.COLOR_BGR2GRAY)
    everything, _, _ = sift_features(gray, 100_000, 0.02)
    kept, _, _ = sift_features(gray, 1000, 0.02)
    assert len(everything) > 3000 and len(kept) == 1000
    # The kept set is the 1000 largest-scale features (octave order), up to ties within one octave.
    threshold = np.sort(everything[:, 2])[::-1][1000]
    assert np.mean(kept[:, 2] >= threshold * 0.5) > 0.99
    assert np.median(kept[:, 2]) > 2 * np.median(everything[:, 2])


def test_store_arrays_and_colours(rotated_pair, tmp_path):
    paths, img = rotated_pair
    store = extract_features(paths, tmp_path / "ws", _config(max_features=500), SerialExecutor())
    assert len(store) == 2
    for i in range(2):
        n = store.count(i)
        assert 100 < n <= 500
        kp, desc, rgb = store.keypoints(i), store.descriptors(i), store.colors(i)
        assert kp.shape == (n, 2) and kp.dtype == np.float64 and kp.flags.c_contiguous
        assert desc.shape == (n, 128) and desc.dtype == np.uint8
        assert isinstance(desc, np.memmap)  # read lazily from the workspace
        assert rgb.shape == (n, 3) and rgb.dtype == np.uint8
        assert store.scales(i).min() > 0
        assert np.all((kp >= -0.5) & (kp <= np.array(store.image_size(i)) - 0.5))
    # Colours are the original image's RGB at the keypoint (the file is BGR).
    kp = store.keypoints(0)
    cols, rows = np.rint(kp[:, 0]).astype(int), np.rint(kp[:, 1]).astype(int)
    np.testing.assert_array_equal(store.colors(0), img[rows, cols, ::-1])


def test_rerun_skips_completed_images_and_redoes_changed_ones(rotated_pair, tmp_path):
    paths, _ = rotated_pair
    ws = tmp_path / "ws"
    first = extract_features(paths, ws, _config(), SerialExecutor())
    assert not any(e["skipped"] for e in first.images)
    before = os.stat(ws / "features" / "00000.desc.npy").st_mtime_ns
    second = extract_features(paths, ws, _config(), SerialExecutor())
    assert all(e["skipped"] for e in second.images)
    assert os.stat(ws / "features" / "00000.desc.npy").st_mtime_ns == before
    cv2.imwrite(str(paths[1]), _texture(2))  # a changed photo is extracted again
    third = extract_features(paths, ws, _config(), SerialExecutor())
    assert [e["skipped"] for e in third.images] == [True, False]
    # A different feature budget invalidates every image.
    fourth = extract_features(paths, ws, _config(max_features=700), SerialExecutor())
    assert not any(e["skipped"] for e in fourth.images)
    assert max(fourth.count(0), fourth.count(1)) <= 700


def test_corrupt_image_is_reported_and_others_extracted(rotated_pair, tmp_path):
    paths, _ = rotated_pair
    bad = paths[0].parent / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    store = extract_features([paths[0], bad], tmp_path / "ws", _config(), SerialExecutor())
    assert store.count(0) > 100
    assert store.count(1) == 0 and store.descriptors(1).shape == (0, 128)
    assert "bad.jpg" in store.errors[1] and "decode" in store.errors[1]


@pytest.mark.slow
def test_process_pool_gives_identical_features(rotated_pair, tmp_path):
    paths, _ = rotated_pair
    serial = extract_features(paths, tmp_path / "a", _config(), SerialExecutor())
    with ProcessExecutor(2) as executor:
        pooled = extract_features(paths, tmp_path / "b", _config(workers=2), executor)
    for i in range(2):
        np.testing.assert_array_equal(serial.keypoints(i), pooled.keypoints(i))
        np.testing.assert_array_equal(serial.descriptors(i), pooled.descriptors(i))


@pytest.mark.slow
def test_process_pool_cancel_does_not_wait_for_running_items():
    start = time.monotonic()
    deadline = start + 1.0
    with ProcessExecutor(2) as executor:
        with pytest.raises(Canceled):
            # time.sleep is importable in a spawned worker; each item would take 30 s.
            for _ in executor.map(time.sleep, [30, 30, 30], is_canceled=lambda: time.monotonic() > deadline):
                pass
    # The cancel itself takes a poll (0.1 s) and the workers' reaping; the bound is generous for a loaded
    # machine and still far below the 30 s the running items would have taken.
    assert time.monotonic() - deadline < 15.0


def test_serial_executor_reports_progress_and_cancels():
    seen = []
    out = list(SerialExecutor().map(abs, [-1, -2, -3], progress=lambda f, m: seen.append(f)))
    assert out == [1, 2, 3] and seen == pytest.approx([1 / 3, 2 / 3, 1.0])
    with pytest.raises(Canceled):
        list(SerialExecutor().map(abs, [1, 2], is_canceled=lambda: True))


def test_store_without_index_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="extract_features"):
        FeatureStore(tmp_path)


# ----------------------------------------------------------------------------- huge images (issue 15.4)
def write_flat_png(path, width, height, value=0, rows_per_chunk=32, pixels=True):
    """An 8-bit grey PNG of any size, every pixel `value`, written in well under a second: one deflate
    block of `rows_per_chunk` rows after a full flush (so it refers to nothing before it) is repeated,
    with the Adler-32 of the whole stream. pixels=False: a header and a stub of pixel data (a size only)."""
    import struct
    import zlib

    def chunk(f, kind, data):
        f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        if pixels:
            assert height % rows_per_chunk == 0
            rows = (b"\x00" + bytes([value]) * width) * rows_per_chunk
            co = zlib.compressobj(9)
            first = co.compress(rows) + co.flush(zlib.Z_FULL_FLUSH)
            block = co.compress(rows) + co.flush(zlib.Z_FULL_FLUSH)
            adler = 1
            for _ in range(height // rows_per_chunk):
                adler = zlib.adler32(rows, adler)
            # b"\x03\x00": an empty final block, then the zlib trailer.
            chunk(f, b"IDAT", first + block * (height // rows_per_chunk - 1) + b"\x03\x00" + struct.pack(">I", adler))
        else:
            chunk(f, b"IDAT", zlib.compress(b"\x00" * 64))
        chunk(f, b"IEND", b"")
    return path


def test_a_photo_beyond_the_pixel_limit_is_refused_from_its_header(tmp_path):
    from alignkit.core.camera import read_prior

    huge = write_flat_png(tmp_path / "huge.png", 50000, 50000, pixels=False)  # 2,500 Mpx in 90 bytes
    assert huge.stat().st_size < 200
    prior = read_prior(huge)
    assert prior.status == "unusable" and (prior.width, prior.height) == (50000, 50000)
    assert any("50000x50000 is 2500 Mpx, beyond the 1074 Mpx limit" in p for p in prior.problems)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _texture(3))
    store = extract_features([huge, good], tmp_path / "ws", _config(), SerialExecutor())
    assert "huge.png" in store.errors[0] and "beyond the 1074 Mpx limit" in store.errors[0]
    assert 1 not in store.errors and store.count(1) > 100


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_reduced_decode_keeps_the_pixel_centre_convention(tmp_path, monkeypatch, suffix):
    """As test_keypoints_follow_pixel_centre_convention_after_scaling, with the photos decoded at 1/4
    of their size (odd sizes, so the partial last blocks are dropped): the geometry must not move."""
    from alignkit.core import features

    monkeypatch.setattr(features, "REDUCED_DECODE_ABOVE_PIXELS", 0)
    img = _texture(5, width=1603, height=1203)
    height, width = img.shape[:2]
    paths = [tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"]
    cv2.imwrite(str(paths[0]), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
    cv2.imwrite(str(paths[1]), np.ascontiguousarray(img[::-1, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 98])
    store = extract_features(paths, tmp_path / "ws", _config(), SerialExecutor())
    assert [features.workspace.read_json(tmp_path / "ws" / "features" / f"0000{i}.json")["decode_reduction"]
            for i in (0, 1)] == [4, 4]
    assert store.image_size(0) == (width, height)
    a, b = store.keypoints(0), store.keypoints(1)
    b_back = np.column_stack([width - 1 - b[:, 0], height - 1 - b[:, 1]])
    dist, idx = cKDTree(b_back).query(a)
    close = dist < 2.0  # a working pixel is 4 original pixels here
    assert close.sum() > 300
    assert np.all(np.abs(np.median(a[close] - b_back[idx[close]], axis=0)) < 0.1)
    # Colours are read from the reduced image at the keypoints: they agree with the full image's there.
    cols, rows = np.rint(a[:, 0]).astype(int), np.rint(a[:, 1]).astype(int)
    expected = cv2.blur(img, (4, 4))[rows, cols, ::-1].astype(int)
    assert np.median(np.abs(store.colors(0).astype(int) - expected)) < 12


# The peak is this process's own (VmHWM, kB): ru_maxrss keeps the high-water mark of the process it was
# spawned from across exec, so after a test that ran a 240-photo block in pytest's process it said 1,162 MB
# for a decode that peaks at 741 MB.
MEMORY_SCRIPT = """
import sys
from alignkit.core.config import AlignConfig
from alignkit.core.executor import SerialExecutor
from alignkit.core.features import extract_features
store = extract_features([sys.argv[1]], sys.argv[2], AlignConfig(), SerialExecutor())
with open("/proc/self/status") as f:
    peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(store.errors.get(0), store.images[0]["working_size"], peak_kb)
"""


@pytest.mark.slow
def test_a_32000_pixel_png_is_decoded_reduced_within_1_gb(tmp_path):
    import subprocess
    import sys

    big = write_flat_png(tmp_path / "big.png", 32000, 32000, value=128)  # 1,024 Mpx, 1 MB on disk
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(big), str(tmp_path / "ws")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    error, max_rss_kb = out.stdout.split()[0], int(out.stdout.split()[-1])
    assert error == "None", out.stdout
    assert "[3200, 3200]" in out.stdout  # decoded, at the default working size
    assert max_rss_kb < 1024 * 1024, f"peak memory {max_rss_kb / 1024:.0f} MB"  # the whole worker: SIFT included
