"""core.stack on real stacks: Oxford ground truth (HPatches convention), a focus stack, an exposure bracket."""
import cv2
import numpy as np
import pytest

from alignkit.core import stack
from alignkit.tools.evaluate import hpatches_error, opencv_baseline_homography

pytestmark = pytest.mark.slow


def align_oxford_pair(shared, tmp_path, sequence, n):
    folder = shared(sequence)
    ext = ".png" if sequence == "oxford_graf" else ".pgm"
    images = [folder / f"img1{ext}", folder / f"img{n}{ext}"]
    doc = stack.align_stack(folder, tmp_path / "out", stack.StackConfig(reference=images[0].name), images=images)
    entry = doc["images"][1]
    img1 = cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE)
    img_n = cv2.imread(str(images[1]), cv2.IMREAD_GRAYSCALE)
    truth = np.loadtxt(folder / f"H1to{n}p")
    h, w = img1.shape
    base = hpatches_error(opencv_baseline_homography(img1, img_n), truth, w, h)
    return entry, truth, base, w, h


@pytest.mark.parametrize("sequence,n,target", [
    ("oxford_graf", 2, 1.0), ("oxford_graf", 3, 1.0), ("oxford_graf", 4, 1.0),
    ("oxford_boat", 2, 1.0), ("oxford_boat", 3, 1.0), ("oxford_boat", 4, 1.0),
])
def test_oxford_pair_within_target_and_beats_baseline(shared, tmp_path, sequence, n, target):
    entry, truth, base, w, h = align_oxford_pair(shared, tmp_path, sequence, n)
    assert entry["status"] == "aligned", entry["reason"]
    error = hpatches_error(np.array(entry["matrix"]), truth, w, h)
    assert error <= target, f"{sequence} {n}: {error:.3f} px (baseline {base:.3f})"
    assert error < base, f"{sequence} {n}: {error:.3f} px, baseline {base:.3f}"


@pytest.mark.parametrize("n", [5, 6])
def test_boat_zoom_within_five_percent_of_the_baseline_and_inliers_fit(shared, tmp_path, n):
    """Issue 13's target for boat 5 and 6. The published H1to5p / H1to6p misfit the left third of the scene
    (the matched features sit a median 10.8 px off H1to6p there) while one homography fits every inlier to
    ~1 px, so no absolute target against them is meaningful: within 5 % of the plain baseline's corner
    error computed in the same run, the inliers' RMS residual <= 1 px (the matches within the fit's threshold
    of the final homography, in the coarser view's pixels).
    Measured: boat 5 1.378 px (baseline 1.325, ratio 1.04), RMS 0.94 px; boat 6 9.899 px (baseline 9.913),
    RMS 0.87 px."""
    entry, truth, base, w, h = align_oxford_pair(shared, tmp_path, "oxford_boat", n)
    assert entry["status"] == "aligned", entry["reason"]
    error = hpatches_error(np.array(entry["matrix"]), truth, w, h)
    assert error <= 1.05 * base, f"boat {n}: {error:.3f} px, baseline {base:.3f}"
    assert entry["inlier_rms_px"] <= 1.0


@pytest.mark.parametrize("n", [5, 6])
def test_graf_extreme_viewpoints_align_through_simulated_oblique_views(shared, tmp_path, n):
    """50-60 deg of viewpoint change: plain SIFT finds 8-10 consistent matches and the baseline returns
    these 420 px wrong. Matching simulated oblique views of the moving image (ASIFT), confirmed by
    re-matching it rectified, aligns them: measured 0.87 px (graf 5) and 2.18 px (graf 6)."""
    entry, truth, base, w, h = align_oxford_pair(shared, tmp_path, "oxford_graf", n)
    assert base > 50  # the baseline returns these wrong
    assert entry["status"] == "aligned", entry["reason"]
    assert entry["method"].startswith("oblique-view features")
    assert hpatches_error(np.array(entry["matrix"]), truth, w, h) <= 3.0
    assert (tmp_path / "out" / f"img{n}.png").exists()


def _tiles(shape, size=64):
    return [(y, x) for y in range(0, shape[0] - size + 1, size) for x in range(0, shape[1] - size + 1, size)]


def _grey(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float64)


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def _varlap(a):
    return float(cv2.Laplacian(a, cv2.CV_64F).var())


def test_pcb_focus_stack(shared, tmp_path):
    folder = shared("focus_stack_pcb", "pcb")
    images = sorted(folder.glob("pcb_*.jpg"))
    assert len(images) == 7
    doc = stack.align_stack(folder, tmp_path / "out", stack.StackConfig(fuse="focus"), images=images)
    crop = doc["crop"]
    xs = np.arange(crop["x"], crop["x"] + crop["width"])
    ys = np.arange(crop["y"], crop["y"] + crop["height"])
    border = np.concatenate([np.c_[xs, np.full_like(xs, ys[0])], np.c_[xs, np.full_like(xs, ys[-1])],
                             np.c_[np.full_like(ys, xs[0]), ys], np.c_[np.full_like(ys, xs[-1]), ys]])
    for entry in doc["images"]:
        if entry["status"] == "reference":
            continue
        assert entry["status"] == "aligned", f"{entry['image']}: {entry['reason']}"
        assert entry["metrics"]["after"]["ncc"] > entry["metrics"]["before"]["ncc"]
        # crop strictly inside the warped frame: every border pixel centre samples the source image
        source = stack._apply(np.linalg.inv(np.array(entry["matrix"])), border.astype(np.float64))
        assert source.min() >= 0 and source[:, 0].max() <= 2047 and source[:, 1].max() <= 1535
        written = cv2.imread(str(tmp_path / "out" / entry["image"]))
        assert written.shape == (crop["height"], crop["width"], 3)
        # the frames drift by tens of pixels and scale 0.95-1.0 (PROVENANCE): plausible, not degenerate
        linear = np.array(entry["matrix"])[:2, :2]
        assert 0.9 < np.sqrt(abs(np.linalg.det(linear))) < 1.1
    # no more cut than needed: the crop covers most of the 2048 x 1536 frame
    assert crop["width"] * crop["height"] > 0.8 * 2048 * 1536
    _check_focus_fusion(doc, tmp_path / "out", folder / "expected.jpg", tmp_path / "expected")


def _check_focus_fusion(doc, out, expected, scratch):
    """Issue 13's acceptance: in 64 x 64 tiles the fused image is as sharp as the sharpest aligned frame
    (median variance-of-Laplacian ratio >= 0.9; measured 1.10) and shows the same thing (median tile NCC
    with that frame >= 0.9; measured 0.996); it is close to focus-stack's own result, expected.jpg
    (aligned onto ours: NCC 0.99, median tile NCC 0.98, median sharpness ratio ours / theirs 0.89).
    (Speed is the bench's to measure, not a test's: fusion 2.6 s against 21 s of alignment.)"""
    assert doc["fused"] == "fused_focus.jpg" and len(doc["fused_from"]) == 7
    fused = _grey(out / doc["fused"])
    frames = [_grey(out / name) for name in doc["fused_from"]]
    ratios, nccs = [], []
    for y, x in _tiles(fused.shape):
        tile = fused[y:y + 64, x:x + 64]
        sharpness = [_varlap(f[y:y + 64, x:x + 64]) for f in frames]
        best = int(np.argmax(sharpness))
        ratios.append(_varlap(tile) / max(sharpness[best], 1e-9))
        nccs.append(_ncc(tile, frames[best][y:y + 64, x:x + 64]))
    assert np.median(ratios) >= 0.9 and np.median(nccs) >= 0.9, (np.median(ratios), np.median(nccs))
    (scratch / "in").mkdir(parents=True)
    (scratch / "in" / "a_fused.jpg").write_bytes((out / doc["fused"]).read_bytes())
    (scratch / "in" / "b_expected.jpg").write_bytes(expected.read_bytes())
    pair = stack.align_stack(scratch / "in", scratch / "out", stack.StackConfig(reference="a_fused.jpg"))
    assert pair["images"][1]["status"] == "aligned"
    assert pair["images"][1]["metrics"]["after"]["ncc"] > 0.95


def test_exposure_bracket(shared, tmp_path):
    folder = shared("exposure_house")
    images = sorted(folder.glob("*.jpg"))
    doc = stack.align_stack(folder, tmp_path / "out", stack.StackConfig(fuse="exposure"), images=images)
    for entry in doc["images"]:
        if entry["status"] == "reference":
            continue
        assert entry["status"] == "aligned", f"{entry['image']}: {entry['reason']}"
        matrix = np.array(entry["matrix"])
        # a tripod bracket: no frame may be distorted, at most a pixel or two of drift
        assert stack.overlap_shift(matrix, np.eye(3), (500, 752), (500, 752)) <= 3.0
        if entry.get("already_aligned"):
            assert np.allclose(matrix, np.eye(3)) or stack.overlap_shift(matrix, np.eye(3), (500, 752),
                                                                         (500, 752)) <= 0.5
    assert doc["crop"]["width"] >= 740 and doc["crop"]["height"] >= 490
    # exposure fusion (issue 13): fewer clipped pixels than any frame (measured 9,753 against 37,742-230,755),
    # and in 64 x 64 tiles at least 90 % of the best frame's local contrast, median (measured 0.909)
    out = tmp_path / "out"
    fused = cv2.imread(str(out / doc["fused"]))
    frames = [cv2.imread(str(out / name)) for name in doc["fused_from"]]
    assert len(frames) == 4 and fused.shape == frames[0].shape

    def clipped(image):
        return int(((image <= 2).all(axis=2) | (image >= 253).all(axis=2)).sum())

    assert clipped(fused) < min(clipped(f) for f in frames)
    grey, greys = _grey(out / doc["fused"]), [_grey(out / name) for name in doc["fused_from"]]
    ratios = [grey[y:y + 64, x:x + 64].std() / max(max(g[y:y + 64, x:x + 64].std() for g in greys), 1e-9)
              for y, x in _tiles(grey.shape)]
    assert np.median(ratios) >= 0.9, np.median(ratios)


def test_unrelated_real_image_is_rejected_with_reason(shared, tmp_path):
    pcb = shared("focus_stack_pcb", "pcb")
    graf = shared("oxford_graf", "img1.png")
    images = [pcb / "pcb_003.jpg", pcb / "pcb_004.jpg", pcb / "pcb_005.jpg", graf]
    doc = stack.align_stack(pcb, tmp_path / "out", stack.StackConfig(reference="pcb_004.jpg"), images=images)
    by_name = {e["image"]: e for e in doc["images"]}
    assert by_name["img1.png"]["status"] == "rejected" and by_name["img1.png"]["matrix"] is None
    assert "no consistent matches" in by_name["img1.png"]["reason"]
    assert "simulated oblique views" in by_name["img1.png"]["reason"]  # tried as a strong viewpoint change, refused
    assert by_name["pcb_003.jpg"]["status"] == by_name["pcb_005.jpg"]["status"] == "aligned"
    assert not (tmp_path / "out" / "img1.png").exists()
