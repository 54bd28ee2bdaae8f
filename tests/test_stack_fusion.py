"""core.fusion and FUSE on alignkit:alignstack's core: synthetic focus stacks with known sharp regions,
exposure brackets with known scene radiance, bit depth, georeferencing, and bad input (issue 13)."""
import json

import cv2
import numpy as np
import pytest

from alignkit.core import fusion, stack
from alignkit.tests.test_stack_core import HOMOGRAPHY_STACK, frame, make_stack, scene

BANDS = 3  # the scene is cut into horizontal bands; frame k is sharp in band k only


def focus_frames(canvas, blur=3.0):
    """Frame k: the canvas sharp in band k, Gaussian-blurred (sigma `blur`) elsewhere."""
    h = canvas.shape[0]
    blurred = cv2.GaussianBlur(canvas, (0, 0), blur)
    frames = []
    for k in range(BANDS):
        f = blurred.copy()
        f[k * h // BANDS:(k + 1) * h // BANDS] = canvas[k * h // BANDS:(k + 1) * h // BANDS]
        frames.append(f)
    return frames


def ncc(a, b):
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def band_interiors(h, margin=12):
    return [slice(k * h // BANDS + margin, (k + 1) * h // BANDS - margin) for k in range(BANDS)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_focus_fusion_is_sharp_where_each_frame_is(dtype):
    sharp = scene(seed=21, size=(360, 270))
    if dtype == np.uint16:
        sharp = sharp.astype(np.uint16) * 257
    frames = focus_frames(sharp)
    fused, depth = fusion.fuse(frames, "focus")
    assert fused.dtype == dtype and fused.shape == sharp.shape
    for k, rows in enumerate(band_interiors(sharp.shape[0])):
        truth = sharp[rows].astype(np.float64)
        error = np.sqrt(np.mean((fused[rows].astype(np.float64) - truth) ** 2))
        best_frame = min(np.sqrt(np.mean((f[rows].astype(np.float64) - truth) ** 2)) for f in frames)
        assert best_frame == 0.0  # frame k is the truth here ...
        others = min(np.sqrt(np.mean((f[rows].astype(np.float64) - truth) ** 2))
                     for j, f in enumerate(frames) if j != k)
        assert error < 0.1 * others  # ... and the fused image is close to it, far from the blurred ones
        assert ncc(fused[rows], truth) > 0.995
        assert np.mean(depth[rows] == k) > 0.95  # the depth map names the sharp frame


def test_focus_fusion_keeps_edges_without_halo():
    """A step edge sharp in one frame and blurred in the other: no over- or undershoot beside it."""
    step = np.full((64, 128), 40, np.uint8)
    step[:, 64:] = 200
    blurred = cv2.GaussianBlur(step, (0, 0), 4.0)
    for frames in ([step, blurred], [blurred, step]):
        fused, _ = fusion.fuse(frames, "focus")
        assert fused.min() >= 40 - 2 and fused.max() <= 200 + 2
        assert np.abs(fused.astype(int) - step).max() <= 3  # measured 1 (a 16 px coarsest level: 9)


def exposure_frames(radiance, gains, noise_seed=0):
    """8-bit exposures of a linear scene radiance: gain, clip to 255 (over-exposed), round (under-exposed)."""
    rng = np.random.default_rng(noise_seed)
    return [np.clip(np.rint(radiance * g + rng.normal(0, 0.5, radiance.shape)), 0, 255).astype(np.uint8)
            for g in gains]


def test_exposure_fusion_recovers_shadows_and_highlights():
    """A scene from deep shadow to bright highlight (8 stops): each exposure clips or crushes part of it;
    the fused image clips less than any of them and follows the scene at both ends (measured NCC with
    the radiance 0.96 in the shadows, 0.99 in the highlights, where the darkest frame has 0.32 in the
    shadows and the brightest is clipped flat in the highlights)."""
    texture = scene(seed=5, size=(300, 200)).astype(np.float64) / 255.0
    radiance = np.geomspace(8.0, 2000.0, 300)[None, :, None] * (0.6 + 0.8 * texture)
    frames = exposure_frames(radiance, (0.08, 0.6, 5.0))

    def clipped(img):
        return int(((img <= 2).all(axis=2) | (img >= 253).all(axis=2)).sum())

    fused = fusion.fuse(frames, "exposure")[0]
    assert fused.dtype == np.uint8
    assert clipped(fused) < min(clipped(f) for f in frames)
    for columns in (slice(0, 40), slice(260, 300)):  # shadows, highlights
        assert ncc(fused[:, columns, 1], radiance[:, columns, 1]) > 0.9
    assert ncc(frames[0][:, :40, 1], radiance[:, :40, 1]) < 0.5 and frames[2][:, 260:].min() == 255
    wide = [f.astype(np.uint16) * 257 for f in frames]
    fused16 = fusion.fuse(wide, "exposure")[0]
    assert fused16.dtype == np.uint16 and fused16.max() > 255 * 100
    assert np.abs(fused16.astype(np.float64) / 257 - fused).max() < 3  # the same fusion on the 16-bit scale


def test_fusion_bad_input():
    a = np.zeros((40, 50), np.uint8)
    with pytest.raises(stack.StackError, match="at least two"):
        fusion.fuse([a], "focus")
    with pytest.raises(stack.StackError, match="b.png"):
        fusion.fuse([a, np.zeros((41, 50), np.uint8)], "focus", names=["a.png", "b.png"])
    with pytest.raises(stack.StackError, match="b.png"):
        fusion.fuse([a, a.astype(np.uint16)], "exposure", names=["a.png", "b.png"])
    with pytest.raises(stack.StackError, match="unknown fusion"):
        fusion.fuse([a, a], "hdr")


def test_fuse_on_a_single_image_is_a_clear_error(tmp_path):
    make_stack(tmp_path / "in", HOMOGRAPHY_STACK[:1], names=["only.png"])
    with pytest.raises(stack.StackError, match="only.png"):
        stack.align_stack(tmp_path / "in", tmp_path / "out", stack.StackConfig(fuse="focus"))


def test_align_stack_fuses_the_aligned_frames(tmp_path):
    """FUSE=focus through the stack job: frames of one scene, each sharp in its own band and moved by a
    known homography, are aligned, cropped, and fused into an image sharp in every band."""
    canvas = scene(seed=8)
    canvases = focus_frames(canvas, blur=2.5)
    inp = tmp_path / "in"
    inp.mkdir()
    for k, (g, c) in enumerate(zip(HOMOGRAPHY_STACK[:3], canvases)):
        cv2.imwrite(str(inp / f"f{k}.png"), frame(c, g, (400, 300)))
    cv2.imwrite(str(inp / "f3_other.png"), frame(scene(seed=99), HOMOGRAPHY_STACK[0], (400, 300)))
    doc = stack.align_stack(inp, tmp_path / "out", stack.StackConfig(fuse="focus", reference="f1.png"))
    assert doc["fused"] == "fused_focus.png" and doc["fuse"] == "focus"
    assert doc["fused_from"] == ["f0.png", "f1.png", "f2.png"]
    assert doc["fused_without"] == ["f3_other.png"] and "f3_other.png" in doc["fused_note"]
    assert json.loads((tmp_path / "out" / "transforms.json").read_text())["fused"] == "fused_focus.png"
    fused = cv2.imread(str(tmp_path / "out" / "fused_focus.png"), cv2.IMREAD_UNCHANGED)
    crop = doc["crop"]
    assert fused.shape == (crop["height"], crop["width"], 3) and fused.dtype == np.uint8
    # truth: the all-sharp scene seen by the reference, cropped
    truth = frame(canvas, HOMOGRAPHY_STACK[1], (400, 300))[crop["y"]:crop["y"] + crop["height"],
                                                            crop["x"]:crop["x"] + crop["width"]]
    aligned = [cv2.imread(str(tmp_path / "out" / n)) for n in doc["fused_from"]]
    for rows in band_interiors(fused.shape[0], margin=25):
        fused_ncc = ncc(fused[rows], truth[rows])
        assert fused_ncc > 0.97
        assert fused_ncc >= max(ncc(a[rows], truth[rows]) for a in aligned) - 0.01
    assert (tmp_path / "out" / doc["fused_depth"]).exists()
    assert doc["timings"]["fuse_s"] >= 0


def test_fusion_with_one_aligned_frame_says_so_and_a_rerun_drops_the_old_fused_image(tmp_path):
    inp = tmp_path / "in"
    names = make_stack(inp, HOMOGRAPHY_STACK[:2], names=["a.png", "b.png"])
    doc = stack.align_stack(inp, tmp_path / "out", stack.StackConfig(fuse="exposure", reference="a.png"))
    assert doc["fused"] == "fused_exposure.png" and (tmp_path / "out" / "fused_exposure.png").exists()
    cv2.imwrite(str(inp / names[1]), frame(scene(seed=99), HOMOGRAPHY_STACK[0], (400, 300)))  # now unrelated
    doc = stack.align_stack(inp, tmp_path / "out", stack.StackConfig(fuse="exposure", reference="a.png"))
    assert doc["fused"] is None and "nothing fused" in doc["fused_note"]
    assert "fused_exposure.png" in doc["removed_earlier_outputs"]
    assert not (tmp_path / "out" / "fused_exposure.png").exists()
    with pytest.raises(stack.StackError, match="unknown fusion"):
        stack.align_stack(inp, tmp_path / "out", stack.StackConfig(fuse="median"))


def test_sixteen_bit_geotiff_stack_fuses_into_a_georeferenced_sixteen_bit_image(tmp_path):
    from osgeo import gdal, osr

    def to16(image):
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257 + 3

    inp = tmp_path / "in"
    names = make_stack(inp, HOMOGRAPHY_STACK[:3], ext=".tif", convert=to16)
    ref = gdal.Open(str(inp / names[1]), gdal.GA_Update)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ref.SetGeoTransform((500000.0, 0.5, 0.0, 4000000.0, 0.0, -0.5))
    ref.SetProjection(srs.ExportToWkt())
    ref = None
    doc = stack.align_stack(inp, tmp_path / "out", stack.StackConfig(fuse="focus"))
    out = gdal.Open(str(tmp_path / "out" / doc["fused"]))
    assert doc["fused"].endswith(".tif")
    band = out.GetRasterBand(1).ReadAsArray()
    assert band.dtype == np.uint16 and band.max() > 255 * 100
    crop = doc["crop"]
    assert out.GetGeoTransform() == pytest.approx((500000.0 + 0.5 * crop["x"], 0.5, 0.0,
                                                   4000000.0 - 0.5 * crop["y"], 0.0, -0.5))
    assert osr.SpatialReference(wkt=out.GetProjection()).GetAuthorityCode(None) == "32633"
    depth = gdal.Open(str(tmp_path / "out" / doc["fused_depth"]))
    assert doc["fused_depth"] == "fused_depth.tif" and depth.GetGeoTransform() == out.GetGeoTransform()
    assert depth.GetRasterBand(1).ReadAsArray().max() <= 2  # an index into fused_from


def test_fuse_files_on_its_own(tmp_path):
    """core.fusion reads aligned frames from files and writes one image, without the stack job."""
    sharp = scene(seed=21, size=(240, 180))
    paths = []
    for k, f in enumerate(focus_frames(sharp)):
        paths.append(tmp_path / f"aligned_{k}.png")
        cv2.imwrite(str(paths[-1]), f)
    out = fusion.fuse_files(paths, "focus", tmp_path / "fused.png")
    fused = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(fused, fusion.fuse([cv2.imread(str(p)) for p in paths], "focus")[0])
    assert ncc(fused, sharp) > 0.99
    with pytest.raises(stack.StackError, match="cannot read image"):
        fusion.fuse_files([paths[0], tmp_path / "missing.png"], "focus", tmp_path / "x.png")
