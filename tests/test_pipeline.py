"""The whole alignment job (core.pipeline.run) on generated surveys with known poses, and on bad input."""
import hashlib
import json
import os
import shutil
import time

import cv2
import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import pipeline
from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.cancel import Canceled
from alignkit.core.config import AlignConfig
from alignkit.core.geo import LocalFrame
from alignkit.core.reconstruction import umeyama
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth, terrain_height
from alignkit.tools.evaluate import rotation_angle_deg

pytestmark = pytest.mark.slow

SMALL = dict(rows=3, cols=4, width=960, height=720)  # 12 photos: enough geometry, quick to align
FAST = dict(max_features=4000, workers=2)


def folder_fingerprint(folder):
    h = hashlib.sha1()
    for p in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, p))
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(open(os.path.join(folder, p), "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    generate_survey(out, SurveySpec(**SMALL, gps_noise_h_m=1.0, gps_noise_v_m=2.0, seed=11))
    return out


def _coordinates(geometry):
    """Points of a point or line; the outer ring's points of a polygon; None for no geometry."""
    if geometry is None:
        return None
    if geometry.GetGeometryCount():
        return geometry.GetGeometryRef(0).GetPoints()
    return geometry.GetPoints()


def layer_rows(gpkg, name):
    ds = ogr.Open(str(gpkg))
    lyr = ds.GetLayerByName(name)
    srs = lyr.GetSpatialRef()
    fields = [lyr.GetLayerDefn().GetFieldDefn(k).GetName() for k in range(lyr.GetLayerDefn().GetFieldCount())]
    rows = [(f.items(), _coordinates(f.GetGeometryRef())) for f in lyr]
    crs = "local" if srs is None or srs.IsLocal() else f"{srs.GetAuthorityName(None)}:{srs.GetAuthorityCode(None)}"
    return rows, fields, crs


def test_alignment_matches_ground_truth_and_the_contract(survey, tmp_path):
    images = survey / "images"
    before = folder_fingerprint(images)
    out = tmp_path / "result.gpkg"
    seen = []
    summary = pipeline.run(AlignConfig(images=str(images), output=str(out), **FAST),
                           progress=lambda f, m: seen.append(f))
    assert folder_fingerprint(images) == before  # the input folder is never written to
    assert seen == sorted(seen) and seen[-1] == 1.0  # progress only moves forward

    gt = load_ground_truth(survey)
    assert summary["registered"] == summary["images"] == len(gt["cameras"])
    assert summary["components"] == 1 and summary["points"] > 2000
    assert summary["crs"] == "EPSG:32632" and summary["mean_reproj_px"] < 0.5
    for key in ("extract_s", "match_s", "reconstruct_s", "total_s", "gps_fit_rmse_m", "config"):
        assert key in summary
    on_disk = json.loads((tmp_path / "result_summary.json").read_text())
    assert on_disk["registered"] == summary["registered"] and on_disk["config"]["max_features"] == 4000
    assert (tmp_path / "result_sparse.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")
    assert on_disk["outputs"]["report"] == str(tmp_path / "result_report.html")
    assert (tmp_path / "result_report.html").read_text().lstrip().lower().startswith("<!doctype html")

    cams, fields, crs = layer_rows(out, "cameras")
    assert crs == "EPSG:32632"
    ds = ogr.Open(str(out))  # kept alive while its layers are read (OGR)
    for name in ("cameras", "sparse_points", "footprints"):  # every layer states its heights' reference
        description = ds.GetLayerByName(name).GetMetadataItem("DESCRIPTION")
        assert summary["height_reference"] in description and "EGM96" in description
    for field in ("image", "registered", "yaw", "pitch", "roll", "focal_px", "n_observations",
                  "reproj_rmse_px", "gps_dx", "gps_dy", "gps_dz", "component"):
        assert field in fields
    # Camera centres against the truth. Georeferencing through noisy GPS (1 m / 2 m) can place the
    # block only as well as the GPS errors average out: the block's offset from the truth must be
    # that mean GPS error (within 0.3 m), and its shape (after a similarity) must be tight.
    frame = LocalFrame(**gt["origin"])
    by_name = {a["image"]: (a, g[0]) for a, g in cams}
    rows = [by_name[c["image"]][0] for c in gt["cameras"]]
    est = frame.from_crs(np.array([by_name[c["image"]][1] for c in gt["cameras"]]), "EPSG:32632")
    block_offset = est.mean(axis=0) - gt["C"].mean(axis=0)
    assert np.linalg.norm(block_offset - (gt["gps"] - gt["C"]).mean(axis=0)) < 0.3
    scale, R, t = umeyama(est, gt["C"])
    fitted = scale * est @ R.T + t
    altitude = gt["spec"]["altitude_m"]
    assert np.abs(fitted - gt["C"]).max() < 0.002 * altitude
    # Focal within 1%: 12 photos of a nadir block with 2 m vertical GPS noise leave focal and flying
    # height weakly separated; the 0.5% on its larger surveys is tested in test_reconstruction.
    focal = np.array([a["focal_px"] for a in rows])
    assert np.abs(focal / gt["camera_model"]["focal_px"] - 1).max() < 0.01
    # The summary states the calibration: one camera model, self-calibrated (no focal warning), and
    # the cameras' height above the ground the points describe (the survey's flying height).
    [model] = summary["camera_models"]
    assert model["images"] == len(rows) and not model["focal_held"] and model["focal_self_calibrated_px"] is None
    assert model["focal_px"] == pytest.approx(focal[0]) and model["focal_source"]
    assert model["focal_change_percent"] == pytest.approx(100 * (focal[0] / model["focal_prior_px"] - 1))
    assert not any("focal" in w for w in summary["warnings"]) and summary["log"]
    terrain = terrain_height(gt, gt["C"][:, 0], gt["C"][:, 1])
    assert summary["height_above_ground_m"] == pytest.approx(np.median(gt["C"][:, 2] - terrain), rel=0.05)
    # yaw/pitch/roll (DJI convention, ENU) give each camera's rotation. The block as a whole may be
    # tilted by the GPS noise (the similarity from 12 near-coplanar centres pins that tilt to ~0.1°);
    # relative to each other, cameras are within 0.1° of the truth.
    R_est = np.array([rotation_from_gimbal(a["yaw"], a["pitch"], a["roll"]) for a in rows])
    offsets = np.einsum("kji,kjl->kil", gt["R"], R_est)  # R_true^T R_est per camera
    u, _, vt = np.linalg.svd(offsets.sum(axis=0))
    common = u @ vt  # the mean block rotation (chordal L2)
    for k in range(len(rows)):
        assert rotation_angle_deg(R_est[k] @ R.T, gt["R"][k]) < 0.2
        assert rotation_angle_deg(R_est[k] @ common.T, gt["R"][k]) < 0.1

    points, pfields, _ = layer_rows(out, "sparse_points")
    assert {"point_id", "track_length", "reproj_px", "red", "green", "blue"} <= set(pfields)
    assert len(points) == summary["points"]
    pairs, pair_fields, _ = layer_rows(out, "pairs")
    assert {"image_a", "image_b", "inliers", "model"} <= set(pair_fields) and len(pairs) >= 11
    footprints, _, _ = layer_rows(out, "footprints")
    assert len(footprints) == len(gt["cameras"])


SLOW_FSYNC = """
import os, time
_fsync = os.fsync


def fsync(fd):  # a slow disk, in every process (this file is the workers' sitecustomize)
    time.sleep(float(os.environ["ALIGNKIT_TEST_FSYNC_DELAY_S"]))
    _fsync(fd)


os.fsync = fsync
"""


@pytest.fixture
def slow_fsync(tmp_path_factory, monkeypatch):
    """Every fsync (the last step of each atomic write) sleeps, in this process and in the spawned
    workers (through a sitecustomize on their PYTHONPATH): a cancel then lands mid-write more often."""
    site = tmp_path_factory.mktemp("slow_fsync_site")
    (site / "sitecustomize.py").write_text(SLOW_FSYNC)
    monkeypatch.setenv("ALIGNKIT_TEST_FSYNC_DELAY_S", "0.03")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    real = os.fsync

    def slow(fd):
        time.sleep(float(os.environ["ALIGNKIT_TEST_FSYNC_DELAY_S"]))
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)


def test_cancel_leaves_no_output_and_rerun_resumes(survey, tmp_path, slow_fsync):
    out = tmp_path / "r.gpkg"
    config = AlignConfig(images=str(survey / "images"), output=str(out), **FAST)
    state = {"cancel": False}

    def progress(fraction, message):
        if fraction > 0.3:  # part way through feature extraction
            state["cancel"] = True

    with pytest.raises(Canceled):
        pipeline.run(config, progress=progress, is_canceled=lambda: state["cancel"])
    assert not out.exists() and not (tmp_path / "r_summary.json").exists()
    features_dir = tmp_path / "r_workspace" / "features"
    # Complete images: their .json marker (written last) is there. The others may be redone.
    complete = [p.stem for p in features_dir.glob("[0-9][0-9][0-9][0-9][0-9].json")]  # not .tmp-* ones
    assert complete, "the cancelled run kept no completed image"
    done = {p.name: p.stat().st_mtime_ns for stem in complete for p in features_dir.glob(f"{stem}.*")}
    # What a killed write leaves (the cancel's terminate() is one): removed by the next run.
    (features_dir / ".tmp-00011.kp.npy.x1y2z3.npy").write_bytes(b"partial")
    (tmp_path / ".tmp-r.gpkg.99999.gpkg").write_bytes(b"partial")
    os.environ["ALIGNKIT_TEST_FSYNC_DELAY_S"] = "0"  # the rerun's new workers: a normal disk again
    summary = pipeline.run(config)
    assert summary["registered"] == 12
    for name, mtime in done.items():  # completed products were reused, not redone
        assert (features_dir / name).stat().st_mtime_ns == mtime, name
    leftovers = [p for p in tmp_path.rglob(".tmp-*")]
    assert leftovers == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r")) == [
        "r.gpkg", "r_bundle", "r_cameras.csv", "r_colmap", "r_report.html", "r_sparse.ply", "r_summary.json",
        "r_workspace"]


def strip_metadata(src_dir, dst_dir, names=None):
    """Re-encode photos without EXIF (as a camera without GPS would write them)."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in names or sorted(os.listdir(src_dir)):
        img = cv2.imread(str(src_dir / name))
        cv2.imwrite(str(dst_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def test_photos_without_gps_align_in_a_local_frame_without_crs(survey, tmp_path):
    images = tmp_path / "nogps"
    strip_metadata(survey / "images", images)
    out = tmp_path / "local.gpkg"
    summary = pipeline.run(AlignConfig(images=str(images), output=str(out), **FAST))
    assert summary["registered"] == 12 and summary["georeferenced"] is False and summary["crs"] is None
    assert any("NOT georeferenced" in w for w in summary["warnings"])
    _, _, crs = layer_rows(out, "cameras")
    assert crs == "local"  # the GeoPackage's "Undefined Cartesian SRS", not a geographic one
    # Without EXIF the focal is a guess (1.2 x 960 = 1152 px, the truth 638 px): free to move, never held,
    # and reported as a guess.
    (model,) = summary["camera_models"]
    truth = SurveySpec(**SMALL).focal_px
    assert model["focal_source"] == "fallback_guess" and model["focal_prior_px"] == pytest.approx(1152)
    assert model["focal_held"] is False
    assert abs(model["focal_px"] - truth) < 0.5 * abs(1152 - truth), (model["focal_px"], truth)
    assert any("the focal was a guess (1152 px" in w for w in summary["warnings"])
    assert not any("EXIF focal" in w for w in summary["warnings"])


def test_photos_left_out_are_warned_with_their_reasons_and_a_rerun_reuses_everything(survey, tmp_path):
    """A truncated photo, a 50000 x 50000 PNG (header only), an exact copy of a photo and a photo of
    another subject among 12 good ones (one without EXIF): the 12 align; each of the others is named in
    the summary's warnings with its reason; the photo without EXIF borrows the others' focal.
    Rerun: every product comes from the workspace, and the log says so."""
    from alignkit.tests.test_features import _texture, write_flat_png

    images = tmp_path / "withbad"
    shutil.copytree(survey / "images", images)
    data = (images / "img_0001.jpg").read_bytes()
    (images / "broken photo é.jpg").write_bytes(data[: len(data) // 3])
    write_flat_png(images / "huge.png", 50000, 50000, pixels=False)
    shutil.copy(images / "img_0002.jpg", images / "img_0002 copy.jpg")
    cv2.imwrite(str(images / "other subject.jpg"), _texture(9, 960, 720))
    strip_metadata(survey / "images", images, ["img_0003.jpg"])  # no EXIF: borrows the others' focal
    out = tmp_path / "r.gpkg"
    config = AlignConfig(images=str(images), output=str(out), **FAST)
    summary = pipeline.run(config)
    assert summary["images"] == 16 and summary["registered"] == 12
    cams, _, _ = layer_rows(out, "cameras")
    bad = [a for a, _ in cams if a["image"] == "broken photo é.jpg"][0]
    assert bad["registered"] == 0 and "truncated" in (bad["problem"] or "").lower()
    warnings = "\n".join(summary["warnings"])
    assert "broken photo é.jpg: not used: truncated JPEG" in warnings
    assert "huge.png: not used: 50000x50000 is 2500 Mpx, beyond the 1074 Mpx limit" in warnings
    assert "img_0002 copy.jpg: not used: exact duplicate of img_0002.jpg" in warnings
    assert "1 photo(s) not registered (not connected to the block" in warnings and "other subject.jpg" in warnings
    assert summary["reused"] == {"features": [], "pairs": 0, "reconstruction": False}
    truth = SurveySpec(**SMALL).focal_px
    borrowed = [m for m in summary["camera_models"] if m["focal_source"] == "borrowed"]
    assert len(borrowed) == 1 and borrowed[0]["focal_prior_px"] == pytest.approx(truth, rel=0.01)
    assert any(w.startswith(f"{borrowed[0]['camera']}: focal length unknown: borrowed ") and " from img_" in w
               and "a AlignKit" in w for w in summary["warnings"])

    messages = []
    again = pipeline.run(config, progress=lambda fraction, message: messages.append(message))
    assert again["registered"] == 12
    assert sorted(again["reused"]["features"]) == sorted(p.name for p in images.iterdir()
                                                         if p.name not in ("broken photo é.jpg", "huge.png",
                                                                           "img_0002 copy.jpg"))
    assert again["reused"]["pairs"] == again["pairs_candidate"] and again["reused"]["reconstruction"] is True
    assert "features: reused 13 of 13 photos from the workspace" in messages
    assert f"matching: reused {again['pairs_candidate']} of {again['pairs_candidate']} pairs from the workspace" \
        in messages
    assert "Reusing the SIFT features of all 13 photos from the workspace" in messages
    assert not any(m.startswith("Extracting SIFT features") for m in messages)


def test_fewer_than_two_usable_photos_is_a_clear_error_and_writes_nothing(survey, tmp_path):
    images = tmp_path / "one"
    images.mkdir()
    shutil.copy(survey / "images" / "img_0001.jpg", images)
    (images / "notes.txt").write_text("not a photo")
    out = tmp_path / "r.gpkg"
    with pytest.raises(pipeline.AlignmentError, match="1 usable photo"):
        pipeline.run(AlignConfig(images=str(images), output=str(out), **FAST))
    assert not out.exists()
    with pytest.raises(pipeline.AlignmentError, match="does not exist"):
        pipeline.run(AlignConfig(images=str(tmp_path / "missing"), output=str(out)))
    with pytest.raises(pipeline.AlignmentError, match="inside the image folder"):
        pipeline.run(AlignConfig(images=str(images), output=str(images / "r.gpkg")))


def test_a_negative_focal_is_a_clear_error_before_anything_is_written(survey, tmp_path):
    out = tmp_path / "result.gpkg"
    with pytest.raises(pipeline.AlignmentError, match="focal_px must be positive"):
        pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out), focal_px=-2000.0))
    assert list(tmp_path.iterdir()) == []


def test_a_given_focal_for_photos_of_two_cameras_is_a_clear_error(survey, tmp_path):
    images = tmp_path / "mixed"
    shutil.copytree(survey / "images", images)
    other = cv2.imread(str(images / "img_0001.jpg"))
    cv2.imwrite(str(images / "other camera.jpg"), cv2.resize(other, (640, 480)))
    out = tmp_path / "r.gpkg"
    with pytest.raises(pipeline.AlignmentError, match="applies to every photo, but these come from 2 cameras"):
        pipeline.run(AlignConfig(images=str(images), output=str(out), focal_px=800.0, **FAST))
    assert not out.exists()


def test_two_unrelated_photo_sets_become_two_components(tmp_path):
    a = generate_survey(tmp_path / "a", SurveySpec(rows=2, cols=4, width=960, height=720, seed=21))
    b = generate_survey(tmp_path / "b", SurveySpec(rows=2, cols=4, width=960, height=720, seed=22,
                                                   lat0=46.52, lon0=6.65))
    images = tmp_path / "both"
    images.mkdir()
    for src, prefix in ((a, "a_"), (b, "b_")):
        for p in sorted((src / "images").iterdir()):
            shutil.copy(p, images / (prefix + p.name))
    out = tmp_path / "r.gpkg"
    summary = pipeline.run(AlignConfig(images=str(images), output=str(out), **FAST))
    assert summary["registered"] == 16 and summary["components"] == 2
    cams, _, _ = layer_rows(out, "cameras")
    comp = {a["image"][0]: set() for a, _ in cams}
    for attrs, _ in cams:
        comp[attrs["image"][0]].add(attrs["component"])
    assert len(comp["a"]) == 1 and len(comp["b"]) == 1 and comp["a"] != comp["b"]
