"""The marking session without QGIS: cameras read back from an alignment GeoPackage in another CRS,
control from plain rows, measurements placed, refused, carried over and exported."""
import numpy as np
import pytest
from osgeo import gdal

from alignkit.core.camera import angles_from_rotation
from alignkit.core.control import ControlError, control_from_points, load_measurements, read_control
from alignkit.core.geo import LocalFrame
from alignkit.core.gpkg import Layer, write_geopackage
from alignkit.core.marking import (
    MEASUREMENTS_FILE,
    MarkingSession,
    cameras_from_alignment,
)
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth, project
from alignkit.core.workspace import write_json

SPEC = SurveySpec(rows=2, cols=3, width=400, height=300, gps_noise_h_m=2.0, gps_noise_v_m=3.0, seed=8)
CRS = "EPSG:32633"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A 6-photo survey and its true cameras as an alignment result, the last photo not registered,
    the GeoPackage reprojected to Web Mercator (as the dock's 'export in the project CRS' writes it)."""
    root = tmp_path_factory.mktemp("marking_core")
    out = generate_survey(root / "survey", SPEC)
    gt = load_ground_truth(out)
    frame = LocalFrame(**gt["origin"])
    crs = f"EPSG:{32600 + int((frame.lon0 + 180) // 6) + 1}"
    xyz = frame.to_crs(gt["C"], crs)
    feats = []
    for i, cam in enumerate(gt["cameras"]):
        yaw, pitch, roll = angles_from_rotation(gt["R"][i])
        reg = i < len(gt["cameras"]) - 1
        feats.append((tuple(xyz[i]) if reg else None,
                      {"image": cam["image"], "path": str(out / "images" / cam["image"]), "registered": reg,
                       "yaw": yaw if reg else None, "pitch": pitch, "roll": roll, "focal_px": gt["K"][i, 0, 0]}))
    fields = [("image", "str"), ("path", "str"), ("registered", "bool"), ("yaw", "real"), ("pitch", "real"),
              ("roll", "real"), ("focal_px", "real")]
    utm = root / "res" / "survey_alignkit.gpkg"
    write_geopackage(utm, crs, [Layer("cameras", "PointZ", fields, feats)])
    write_json(root / "res" / "survey_alignkit_summary.json", {"crs": crs, "frame": frame.to_dict(),
                                                              "height_above_ground_m": SPEC.altitude_m})
    merc = root / "res" / "survey_alignkit_EPSG3857.gpkg"
    gdal.VectorTranslate(str(merc), str(utm), options=gdal.VectorTranslateOptions(format="GPKG", dstSRS="EPSG:3857"))
    return out, gt, utm, merc, crs


def test_cameras_come_back_from_a_reprojected_geopackage(result):
    out, gt, utm, merc, _ = result
    cams = cameras_from_alignment(merc, summary_path=utm.with_name("survey_alignkit_summary.json"))
    assert cams.names == [c["image"] for c in gt["cameras"][:-1]]  # the unregistered photo has no pose
    np.testing.assert_allclose(cams.C, gt["C"][:-1], atol=1e-4)  # Web Mercator round trip: 0.1 mm
    np.testing.assert_allclose(cams.R, gt["R"][:-1], atol=1e-9)
    assert gt["cameras"][-1]["image"] in cams.image_sizes()  # a control file may still name it
    with pytest.raises(ControlError, match="no alignment summary"):
        cameras_from_alignment(merc)


def test_session_places_refuses_carries_over_and_exports(result, tmp_path):
    out, gt, utm, _, crs = result
    cams = cameras_from_alignment(utm)
    frame = LocalFrame(**gt["origin"])
    X = np.array([[3.0, -2.0, 0.5], [-8.0, 5.0, 0.0]])
    xyz = frame.to_crs(X, crs)
    cs = control_from_points([("A", *xyz[0]), ("B", xyz[1, 0], xyz[1, 1], None)], crs, source="test rows")
    assert cs.points[1].problems and "no surveyed height" in cs.points[1].problems[0]
    s = MarkingSession(cams, cs, tmp_path / MEASUREMENTS_FILE)
    preds = s.predictions("A")
    assert len(preds) >= 2
    for image, x, y in preds:
        i = [c["image"] for c in gt["cameras"]].index(image)
        (tx, ty), = project(gt["K"][i], gt["R"][i], gt["C"][i], X[:1])
        assert abs(x - tx) < 1e-3 and abs(y - ty) < 1e-3
    # B has no surveyed height: predicted on the ground (the summary's height above ground), not lost.
    assert s.predictions("B")
    img, x, y = preds[0]
    s.set_measurement("A", img, x + 1.0, y)
    assert s.counts("A") == (1, len(preds)) and "needs two" in s.point("A").problems[-1]
    s.set_measurement("A", img, x + 2.0, y)  # moved, not added
    s.set_measurement("A", preds[1][0], preds[1][1], preds[1][2])
    assert s.counts("A")[0] == 2 and not s.point("A").problems
    with pytest.raises(ValueError, match="outside photo"):
        s.set_measurement("A", img, SPEC.width + 3.0, 10.0)
    assert s.remove_measurement("A", preds[1][0]) and s.counts("A")[0] == 1
    s.set_measurement("A", preds[1][0], preds[1][1], preds[1][2])
    s.set_role("A", "check")
    s.save()
    back = load_measurements(tmp_path / MEASUREMENTS_FILE).by_name()["A"]
    assert back.role == "check" and [(m.image, m.x, m.y) for m in back.measurements] == [
        (m.image, m.x, m.y) for m in s.point("A").measurements]
    # Export, read back through core.control with the folder's photo sizes.
    path = s.export(tmp_path / "gcp_list.txt")
    again = read_control(path, cams.image_sizes()).by_name()
    np.testing.assert_allclose(again["A"].xyz, s.point("A").xyz, atol=5e-4)
    assert [(m.image, round(m.x, 2), round(m.y, 2)) for m in again["A"].measurements] == [
        (m.image, round(m.x, 2), round(m.y, 2)) for m in s.point("A").measurements]
    # Reopening from that file carries the saved session's role over; measurements are not doubled.
    cams.workspace = tmp_path
    reopened = MarkingSession.open(cams, path)
    assert reopened.point("A").role == "check" and len(reopened.point("A").measurements) == 2


def test_bad_rows_are_named():
    with pytest.raises(ControlError) as err:
        control_from_points([("A", 1.0, 2.0, 3.0), ("A", 4.0, 5.0, 6.0), (None, 1.0, 1.0, 1.0), ("C", None, None, None)],
                            "EPSG:32633", source="layer gcps")
    text = str(err.value)
    assert "layer gcps" in text and "feature 2: the name 'A' is used twice (also feature 1)" in text and "feature 3: no name" in text
    assert "feature 4 ('C'): no position" in text
