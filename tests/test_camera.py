"""Camera priors checked against what the files themselves say (read independently with GDAL), against
manufacturer figures, against OpenSfM's own reading of its Berlin photos, and against the exact poses
of a generated survey; plus every bad-input case of issue 3."""
import hashlib
import json
import math
import os
import re
import shutil

import cv2
import numpy as np
import pytest
from osgeo import gdal

from alignkit.core import camera, synthetic
from alignkit.core.camera import focal_from_35mm, read_prior, read_priors, rotation_from_gimbal
from alignkit.core.geo import LocalFrame

gdal.UseExceptions()


def gdal_exif_latlon(path):
    """Latitude/longitude as GDAL's own EXIF reader prints them (an independent parser)."""
    md = gdal.Open(str(path)).GetMetadata()

    def dms(key):
        d, m, s = (float(x.strip("()")) for x in md[f"EXIF_{key}"].split())
        sign = -1.0 if md[f"EXIF_{key}Ref"].strip() in ("S", "W") else 1.0
        return sign * (d + m / 60 + s / 3600)

    return dms("GPSLatitude"), dms("GPSLongitude")


def rotation_angle_deg(Ra, Rb):
    c = (np.trace(np.asarray(Ra).T @ np.asarray(Rb)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


# --------------------------------------------------------------------------- brighton_beach (DJI FC300S)


def _brighton(shared):
    return read_priors(shared("brighton_beach", "images"))


def test_brighton_focal_from_lens_and_sensor_width(shared):
    priors = _brighton(shared)
    assert len(priors) == 18
    for p in priors:
        assert p.status == "ok", p.problems
        assert (p.make, p.model, p.width, p.height) == ("DJI", "FC300S", 4000, 2250)
        # DJI's spec: 3.61 mm lens on a 1/2.3" sensor 6.17 mm wide; the 16:9 photo spans its full width.
        assert p.focal_mm == pytest.approx(3.61)
        assert p.focal_35mm == 20
        assert p.focal_source == "focal_and_sensor_width"
        assert p.focal_px == pytest.approx(3.61 / 6.17 * 4000, rel=1e-9)  # 2,340.4 px
        K = p.K()
        assert K[0, 0] == K[1, 1] == pytest.approx(2340.36, abs=0.01)
        assert (K[0, 2], K[1, 2]) == (1999.5, 1124.5)
        assert p.problems == []
    assert len({p.camera_key for p in priors}) == 1


def test_35mm_equivalent_conversions_of_the_fc300s():
    problems = []
    # Diagonal definition on the full 4:3 sensor the 16:9 photo is cropped from (the 2,311 px).
    assert focal_from_35mm(20, 4000, 2250, problems) == pytest.approx(20 / 43.2666 * 5000, rel=1e-4)
    assert round(focal_from_35mm(20, 4000, 2250, [])) == 2311
    assert any("4:3 sensor" in s for s in problems)
    # A 4:3 photo needs no assumption; a 3:2 photo is its own full sensor.
    problems = []
    assert focal_from_35mm(35, 3264, 2448, problems) == pytest.approx(35 / 43.2666 * 4080, rel=1e-4)
    assert problems == []
    assert focal_from_35mm(24, 5472, 3648, []) == pytest.approx(24 / 43.2666 * math.hypot(5472, 3648), rel=1e-4)


def test_brighton_gps_xmp_and_positions_inside_the_reference_cloud(shared):
    laspy = pytest.importorskip("laspy")
    priors = _brighton(shared)
    header = laspy.open(shared("brighton_beach", "model.laz")).header
    assert header.parse_crs().to_epsg() == 32615
    frame = LocalFrame(46.84, -91.99, 0.0)
    xyz = frame.to_crs(frame.to_enu([p.lat for p in priors], [p.lon for p in priors], [p.gps_alt for p in priors]),
                       "EPSG:32615")
    # ODM crops its cloud close to the photos: DJI_0023 sits 1.4 m north of the cloud's box.
    margin = 2.0
    assert np.all(xyz[:, 0] > header.mins[0] - margin) and np.all(xyz[:, 0] < header.maxs[0] + margin)
    assert np.all(xyz[:, 1] > header.mins[1] - margin) and np.all(xyz[:, 1] < header.maxs[1] + margin)
    for p in priors:
        assert (p.lat, p.lon) == pytest.approx(gdal_exif_latlon(p.path), abs=1e-7)
        assert 39.5 < p.rel_alt < 40.5  # ~40 m flights
        # Flat ground RelativeAltitude below the camera lands inside the cloud's height range.
        assert header.mins[2] < p.gps_alt - p.rel_alt < header.maxs[2]
        assert p.abs_alt == pytest.approx(p.gps_alt, abs=0.01)  # XMP AbsoluteAltitude = EXIF GPSAltitude
        assert -90.01 <= p.gimbal_pitch <= -89.89
    first = priors[0]  # values as printed by any XMP viewer for DJI_0018.JPG
    assert (first.rel_alt, first.gimbal_yaw, first.gimbal_pitch, first.gimbal_roll) == (39.8, 45.0, -89.9, 0.0)
    assert (first.flight_yaw, first.flight_pitch, first.flight_roll) == (46.0, 1.8, 3.0)
    assert first.capture_time == "2016-06-23T16:31:59"
    # Two flight lines in opposite directions: the gimbal yaw follows the heading.
    yaws = {p.name: p.gimbal_yaw for p in priors}
    assert 40 < yaws["DJI_0020.JPG"] < 50 and -145 < yaws["DJI_0026.JPG"] < -125


# --------------------------------------------------------------------------- webodm_fixtures


def test_webodm_tiny_canon_images(shared):
    folder = shared("webodm_fixtures")
    for name in ("tiny_drone_image.jpg", "tiny_drone_image_2.jpg"):
        p = read_prior(folder / name)
        assert p.status == "ok"
        ds = gdal.Open(str(folder / name))
        assert (p.width, p.height) == (ds.RasterXSize, ds.RasterYSize) == (48, 36)
        assert (p.make, p.model) == ("Canon", "Canon PowerShot S110")
        assert (p.lat, p.lon) == pytest.approx(gdal_exif_latlon(folder / name), abs=1e-7)
        assert p.gps_alt == pytest.approx(float(ds.GetMetadataItem("EXIF_GPSAltitude").strip("()")), abs=1e-3)
        # The EXIF focal plane resolution (13651.9 px/inch) was written for the camera's 4000 px
        # output; GIMP shrank the photo to 48 px. Scaling the camera's own focal in pixels by
        # 48/4000 must agree with focal / sensor width.
        assert any("resized" in s for s in p.problems)
        own_focal_px = 5.2 * 13651.877192982456 / 25.4 * 48 / 4000
        assert p.focal_px == pytest.approx(own_focal_px, rel=2e-3)
        assert p.focal_source == "focal_and_sensor_width"
        assert any("RelativeAltitude" in s for s in p.problems)
        assert any("yaw" in s for s in p.problems)


def test_webodm_multispectral_tiff_falls_back_to_gdal(shared):
    p = read_prior(shared("webodm_fixtures", "tiny_drone_image_multispec.tif"))
    assert p.metadata_source == "gdal"  # the exif package cannot read TIFF
    assert (p.width, p.height) == (48, 36)
    # GPSLatitude 50 58 53.0242 N, GPSLongitude 21 25 48.0317 E, GPSAltitude 294.816 (tiffinfo/gdalinfo)
    assert p.lat == pytest.approx(50 + 58 / 60 + 53.0242 / 3600, abs=1e-7)
    assert p.lon == pytest.approx(21 + 25 / 60 + 48.0317 / 3600, abs=1e-7)
    assert p.gps_alt == pytest.approx(294.816, abs=1e-3)
    assert p.capture_time == "2018-08-22T12:11:40"
    assert p.focal_mm == pytest.approx(5.5)
    # 266.667 px/mm on a 48 px image would be a 0.18 mm sensor (it was 1280 px): rejected, and without
    # make/model the focal is an explicit guess.
    assert any("resized" in s for s in p.problems)
    assert p.focal_source == "fallback_guess"
    assert any("guessed" in s for s in p.problems)


def test_webodm_orthophoto_is_read_but_has_no_camera_metadata(shared):
    path = shared("webodm_fixtures", "orthophoto.tif")
    p = read_prior(path)
    ds = gdal.Open(str(path))
    assert (p.width, p.height) == (ds.RasterXSize, ds.RasterYSize)
    assert p.status == "no_gps"
    assert "no EXIF metadata" in p.problems and "no GPS position in EXIF" in p.problems


# --------------------------------------------------------------------------- opensfm_berlin (iPhone 4S)


def test_opensfm_berlin_phone_photos(shared):
    folder = shared("opensfm_berlin")
    priors = read_priors(folder / "images")
    assert [p.name for p in priors] == ["01.jpg", "02.jpg", "03.jpg"]
    recon = json.loads((folder / "reconstruction_example.json").read_text())[0]
    ref = recon["reference_lla"]
    frame = LocalFrame(ref["latitude"], ref["longitude"], ref["altitude"])
    (opensfm_camera,) = recon["cameras"].values()
    for p in priors:
        assert p.status == "ok"
        assert (p.width, p.height) == (3264, 2448)
        # OpenSfM's own reading of the same GPS tags, in its topocentric frame at reference_lla.
        enu = frame.to_enu([p.lat], [p.lon], [p.gps_alt])[0]
        assert enu == pytest.approx(recon["shots"][p.name]["gps_position"], abs=0.01)
        # No make/model in these files: the 35 mm equivalent (35) by the diagonal definition.
        assert p.focal_source == "35mm_equivalent"
        assert p.focal_px == pytest.approx(35 / 43.2666 * 4080, rel=1e-4)
        # OpenSfM's bundle-adjusted focal for these photos is 0.870 x 3264 = 2,839 px: the prior is
        # within the 20 % a focal prior must be good to.
        assert abs(p.focal_px / (opensfm_camera["focal"] * 3264) - 1) < 0.2
        assert any("make/model" in s for s in p.problems)


# --------------------------------------------------------------------------- generated survey (exact truth)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    spec = synthetic.SurveySpec(rows=2, cols=2, width=200, height=150, gps_noise_h_m=0.0, gps_noise_v_m=0.0)
    synthetic.generate_survey(out, spec)
    return out, json.loads((out / "ground_truth.json").read_text())


def test_generated_survey_priors_match_the_true_cameras(survey):
    out, gt = survey
    frame = LocalFrame(**gt["origin"])
    priors = read_priors(out / "images")
    assert len(priors) == len(gt["cameras"]) == 4
    for p, cam in zip(priors, gt["cameras"]):
        assert p.name == cam["image"] and p.status == "ok"
        # Not in the sensor table: the integer 35 mm equivalent costs < 0.05 %.
        assert p.focal_source == "35mm_equivalent"
        assert p.K() == pytest.approx(np.array(cam["K"]), rel=5e-4)
        # XMP gimbal angles (2 decimals) give the true rotation within 0.02 degrees.
        R = rotation_from_gimbal(p.gimbal_yaw, p.gimbal_pitch, p.gimbal_roll)
        assert rotation_angle_deg(R, cam["R"]) < 0.02
        assert frame.to_enu([p.lat], [p.lon], [p.gps_alt])[0] == pytest.approx(cam["gps_enu"], abs=0.01)
        assert p.rel_alt == pytest.approx(cam["center_enu"][2], abs=0.01)


def test_rotation_from_gimbal_axes():
    # Nadir, yaw 0: the camera looks down, image top (-y) points north, image right (+x) east.
    R = rotation_from_gimbal(0.0, -90.0, 0.0)
    assert R.T @ [0, 0, 1] == pytest.approx([0, 0, -1], abs=1e-12)
    assert R.T @ [0, -1, 0] == pytest.approx([0, 1, 0], abs=1e-12)
    assert R.T @ [1, 0, 0] == pytest.approx([1, 0, 0], abs=1e-12)
    # Yaw 90 (heading east): image top points east.
    assert rotation_from_gimbal(90.0, -90.0, 0.0).T @ [0, -1, 0] == pytest.approx([1, 0, 0], abs=1e-12)
    # Pitch 0, yaw 0: looking horizontally north.
    assert rotation_from_gimbal(0.0, 0.0, 0.0).T @ [0, 0, 1] == pytest.approx([0, 1, 0], abs=1e-12)
    # Pitch -60: 30 degrees off nadir toward the heading.
    forward = rotation_from_gimbal(0.0, -60.0, 0.0).T @ [0, 0, 1]
    assert forward == pytest.approx([0, math.cos(math.radians(60)), -math.sin(math.radians(60))], abs=1e-12)
    # Positive roll: the image right side tips down.
    right = rotation_from_gimbal(0.0, 0.0, 10.0).T @ [1, 0, 0]
    assert right[2] == pytest.approx(-math.sin(math.radians(10)))
    for angles in [(45.0, -89.9, 0.0), (200.0, -60.0, -10.0), (33.0, -88.0, 1.5), (0.0, -90.0, 0.0)]:
        R = rotation_from_gimbal(*angles)
        assert R @ R.T == pytest.approx(np.eye(3), abs=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
        assert camera.angles_from_rotation(R) == pytest.approx(angles, abs=1e-9)


# --------------------------------------------------------------------------- bad input


def folder_state(folder):
    """Names, sizes, mtimes and content hashes of everything under `folder`."""
    state = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            st = os.stat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else None
            state.append((os.path.relpath(p, folder), st.st_size, st.st_mtime_ns, digest))
    return sorted(state)


@pytest.fixture
def bad_folder(tmp_path, survey):
    out, _ = survey
    good = (out / "images" / "img_0001.jpg").read_bytes()
    folder = tmp_path / "bad input"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a photo")
    (folder / "fake.jpg").write_text("this is text, not a JPEG")
    (folder / "truncated.jpg").write_bytes(good[: int(len(good) * 0.6)])
    (folder / "header_only.jpg").write_bytes(good[:300])
    pixels = cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(folder / "no_exif.jpg"), pixels)
    cv2.imwrite(str(folder / "plain.png"), pixels)
    (folder / "cut.png").write_bytes((folder / "plain.png").read_bytes()[:-30])
    exif = pytest.importorskip("exif")
    tagged = exif.Image(good)
    for tag in ("gps_latitude", "gps_longitude", "gps_latitude_ref", "gps_longitude_ref", "gps_altitude"):
        tagged.delete(tag)
    (folder / "no_gps.jpg").write_bytes(tagged.get_file())
    (folder / "Überflug Straße 7 ä.jpg").write_bytes(good)
    (folder / "sub folder").mkdir()
    (folder / "empty.jpeg").write_bytes(b"")
    return folder


def test_bad_input_gets_a_status_per_file_and_the_folder_is_untouched(bad_folder):
    before = folder_state(bad_folder)
    images, skipped = camera.list_images(bad_folder)
    assert {p.name for p, _ in skipped} == {"notes.txt", "sub folder"}
    assert all(reason for _, reason in skipped)
    priors = {p.name: p for p in read_priors(bad_folder)}
    assert set(priors) == {p.name for p in images}
    status = {name: p.status for name, p in priors.items()}
    assert status == {
        "fake.jpg": "unusable", "truncated.jpg": "unusable", "header_only.jpg": "unusable",
        "empty.jpeg": "unusable", "cut.png": "unusable", "no_exif.jpg": "no_gps", "plain.png": "no_gps", "no_gps.jpg": "no_gps",
        "Überflug Straße 7 ä.jpg": "ok",
    }
    assert "not a JPEG" in priors["fake.jpg"].problems[0]
    assert "truncated JPEG" in priors["truncated.jpg"].problems[0]
    assert "truncated JPEG" in priors["header_only.jpg"].problems[0]
    assert "empty file" in priors["empty.jpeg"].problems[0]
    assert "truncated PNG" in priors["cut.png"].problems[0]
    for name in ("no_exif.jpg", "plain.png"):
        p = priors[name]
        assert (p.width, p.height) == (200, 150)
        assert "no EXIF metadata" in p.problems and "no GPS position in EXIF" in p.problems
        # No focal of its own: borrowed from the EXIF photos of the same size in the folder (not the
        # 1.2 x 200 = 240 px guess), and said so.
        assert p.focal_source == "borrowed" and p.focal_px == priors["no_gps.jpg"].focal_px
        assert any(q.startswith("focal length unknown: borrowed") and "from no_gps.jpg" in q for q in p.problems)
    no_gps = priors["no_gps.jpg"]
    assert no_gps.problems[0] == "no GPS position in EXIF"
    assert no_gps.rel_alt is not None and no_gps.focal_source == "35mm_equivalent"  # the rest is still read
    assert priors["Überflug Straße 7 ä.jpg"].problems == ["sensor width unknown (camera not in the sensor table, "
                                                          "no EXIF focal plane resolution): focal from the 35 mm "
                                                          "equivalent"]
    for name in ("fake.jpg", "truncated.jpg"):
        with pytest.raises(ValueError, match=name):
            priors[name].K()
    assert folder_state(bad_folder) == before


def test_empty_and_missing_folders_raise_naming_the_folder(tmp_path):
    empty = tmp_path / "empty folder"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images .* in folder .*empty folder.*readme.md"):
        read_priors(empty)
    missing = tmp_path / "does not exist"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_priors(missing)
    assert not missing.exists()


def test_implausible_values_are_reported(tmp_path, survey):
    out, _ = survey
    exif = pytest.importorskip("exif")
    tagged = exif.Image((out / "images" / "img_0001.jpg").read_bytes())
    tagged.gps_altitude = 0.0
    tagged.focal_length = 0.01
    # Same-length edit of the XMP value, so the JPEG segment lengths stay valid: +60.05 -> +00.00.
    data = re.sub(rb'RelativeAltitude="\+([0-9.]+)"', lambda m: re.sub(rb"[0-9]", b"0", m.group(0)), tagged.get_file())
    path = tmp_path / "odd.jpg"
    path.write_bytes(data)
    p = read_prior(path)
    assert p.status == "ok"
    assert any("GPS altitude is exactly 0" in s for s in p.problems)
    assert any("implausible EXIF FocalLength" in s for s in p.problems)
    assert any("implausible RelativeAltitude 0" in s for s in p.problems)


def test_copy_keeps_working_outside_the_data_folder(tmp_path, shared):
    # A copied DJI photo under a non-ASCII name reads the same as the original.
    src = shared("brighton_beach", "images", "DJI_0018.JPG")
    dst = tmp_path / "Küste Süd" / "vue aérienne 18.JPG"
    dst.parent.mkdir()
    shutil.copyfile(src, dst)
    a, b = read_prior(src), read_prior(dst)
    assert (b.lat, b.lon, b.focal_px, b.rel_alt, b.gimbal_yaw) == (a.lat, a.lon, a.focal_px, a.rel_alt, a.gimbal_yaw)


def test_progress_and_cancel(survey):
    out, _ = survey
    seen = []
    read_priors(out / "images", progress=lambda f, msg: seen.append((f, msg)))
    assert seen == [(0.25, "img_0001.jpg"), (0.5, "img_0002.jpg"), (0.75, "img_0003.jpg"), (1.0, "img_0004.jpg")]
    from alignkit.core.cancel import Canceled

    with pytest.raises(Canceled):
        read_priors(out / "images", is_canceled=lambda: True)


def test_dji_xmp_attribute_and_element_forms():
    attributes = ('<x:xmpmeta><rdf:RDF><rdf:Description drone-dji:RelativeAltitude="+39.80" '
                  "drone-dji:GimbalYawDegree='-132.5' drone-dji:RtkStdLon=\"0.012\" tiff:Model=\"FC6310R\"/>"
                  "</rdf:RDF></x:xmpmeta>")
    elements = ("<x:xmpmeta><rdf:RDF><rdf:Description>\n <drone-dji:RelativeAltitude> 39.80 </drone-dji:RelativeAltitude>"
                "\n <drone-dji:GimbalYawDegree>-132.5</drone-dji:GimbalYawDegree>\n"
                " <drone-dji:RtkStdLon>0.012</drone-dji:RtkStdLon><tiff:Model>FC6310R</tiff:Model>"
                "</rdf:Description></rdf:RDF></x:xmpmeta>")
    for text in (attributes, elements):
        prior = camera.CameraPrior(path="x.jpg", name="x.jpg")
        values = camera._dji_xmp(text)
        assert values["Model"] == "FC6310R"
        camera._fill_xmp(prior, values)
        assert (prior.rel_alt, prior.gimbal_yaw, prior.rtk_std_lon) == (39.8, -132.5, 0.012)
        assert prior.flight_yaw is None and prior.rtk_std_lat is None
        assert prior.problems == []  # gimbal yaw present, plausible height: nothing to report


def test_sensor_table_agrees_with_the_manufacturers_35mm_figures():
    from alignkit.core import sensors

    # 35 mm-equivalent focal lengths in the makers' spec sheets (the table's sources).
    spec_35mm = {"dji fc300s": 20, "dji fc300x": 20, "dji fc300c": 20, "dji fc330": 20, "dji fc6310": 24,
                 "dji fc6310s": 24, "dji fc6310r": 24, "dji fc6510": 24, "hasselblad l1d-20c": 28}
    for key, spec in sensors.SENSORS.items():
        assert spec.source and 1.0 < spec.height_mm < spec.width_mm < 60.0, key
        if spec.focal_mm is not None:
            diagonal_35mm = spec.focal_mm * math.hypot(36, 24) / math.hypot(spec.width_mm, spec.height_mm)
            assert diagonal_35mm == pytest.approx(spec_35mm[key], abs=0.6), key
    assert sensors.lookup_sensor("DJI", "FC300S").width_mm == 6.17
    assert sensors.lookup_sensor("Canon", "Canon PowerShot S110").width_mm == 7.44
    assert sensors.lookup_sensor("Hasselblad", "L1D-20c").focal_mm == 10.26
    assert sensors.lookup_sensor("AlignKit", "SynthCam") is None and sensors.lookup_sensor(None, None) is None


def test_a_guessed_focal_borrows_from_an_identical_camera_and_stays_a_guess_otherwise():
    from alignkit.core.camera import CameraPrior, borrow_focals

    def prior(name, size=(4000, 3000), make=None, model=None, focal=None, source="fallback_guess"):
        p = CameraPrior(path=f"/p/{name}", name=name, status="ok", width=size[0], height=size[1],
                        make=make, model=model)
        p.focal_px, p.focal_source = (focal, source) if focal else (1.2 * max(size), "fallback_guess")
        if source == "fallback_guess":
            p.problems.append(f"focal length unknown: guessed 1.2 x the long side = {p.focal_px:.0f} px")
        return p

    donor = prior("a.jpg", make="DJI", model="FC6310", focal=3666.7, source="focal_and_sensor_width")
    stripped = prior("b.jpg")  # no EXIF at all: the same size is enough
    named = prior("c.jpg", make="DJI", model="FC6310")  # EXIF names the camera, no focal
    other_model = prior("d.jpg", make="Sony", model="ILCE-7RM4")
    other_size = prior("e.jpg", size=(3000, 4000))
    borrow_focals([donor, stripped, named, other_model, other_size])
    for p in (stripped, named):
        assert (p.focal_px, p.focal_source) == (3666.7, "borrowed")
        assert p.problems == ["focal length unknown: borrowed 3667 px (focal_and_sensor_width) from a.jpg, "
                              "a DJI FC6310 photo of the same size"]
    for p in (other_model, other_size):
        assert p.focal_source == "fallback_guess" and p.focal_px == 4800.0

    # Two focals at that size (a zoom lens): nothing borrowed, said so.
    zoom = prior("f.jpg", make="DJI", model="FC6310", focal=2500.0, source="35mm_equivalent")
    guess = prior("g.jpg")
    borrow_focals([donor, zoom, guess])
    assert guess.focal_source == "fallback_guess" and "2 different focal lengths (2500, 3667 px)" in guess.problems[-1]
