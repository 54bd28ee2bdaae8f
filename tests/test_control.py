"""Control input: gcp_list.txt and OpenSfM JSON, roles, CRS transforms, clear errors, the marking API."""
import numpy as np
import pytest
from pyproj import Transformer

from alignkit.core.control import (
    ControlError,
    assign_roles,
    load_measurements,
    parse_crs,
    predict_pixels,
    read_control,
    save_measurements,
    to_local,
    write_gcp_list,
)
from alignkit.core.geo import LocalFrame
from alignkit.core.synthetic import project

SIZES = {"a.jpg": (400, 300), "b.jpg": (400, 300), "c.jpg": (400, 300)}
FRAME = LocalFrame(46.5, 6.6, 400.0)


def _write(tmp_path, text, name="gcp_list.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_crs_lines():
    assert parse_crs("EPSG:32632").to_epsg() == 32632
    assert parse_crs("WGS84 UTM 32N").to_epsg() == 32632
    assert parse_crs("WGS84 UTM 33S").to_epsg() == 32733
    assert parse_crs("+proj=utm +zone=32 +datum=WGS84 +units=m +no_defs").is_projected
    assert parse_crs("WGS84 UTM 61N") is None
    assert parse_crs("Lambert somewhere") is None


def test_named_and_unnamed_rows_grouped(tmp_path):
    p = _write(tmp_path, "WGS84 UTM 32N\n"
               "300000 5150000 400.5 10 20 a.jpg p1\n"
               "300000 5150000 400.5 11.5 21 b.jpg p1 extra stuff\n"
               "\n# a comment\n"
               "300010 5150010 401 30 40 a.jpg\n"
               "300010 5150010 401 31 41 b.jpg\n"
               "300020 5150010 401 32 42 c.jpg\n")
    cs = read_control(p, SIZES, check_points="p1")
    assert cs.crs == "EPSG:32632"
    names = [q.name for q in cs.points]
    assert names == ["p1", "gcp_1", "gcp_2"]
    p1, g1, g2 = cs.points
    assert p1.role == "check" and g1.role == "control"
    assert [(m.image, m.x, m.y, m.line) for m in p1.measurements] == [("a.jpg", 10, 20, 2), ("b.jpg", 11.5, 21, 3)]
    assert g1.images == ["a.jpg", "b.jpg"] and g1.usable
    # A point seen in one photo: kept, flagged, not used.
    assert not g2.usable and "1 photo (c.jpg)" in g2.problems[0]
    assert [q.name for q in cs.with_role("control")] == ["gcp_1"]


@pytest.mark.parametrize("text, expected", [
    ("Lambert 93 please\n1 2 3 4 5 a.jpg\n", "line 1: unknown CRS line 'Lambert 93 please'"),
    ("EPSG:32632\n1 2 3 4 5 missing.jpg p\n", "line 2: photo 'missing.jpg' is not in the image folder"),
    ("EPSG:32632\n1 2 3 4 5 A.JPG p\n", "did you mean 'a.jpg'?"),
    ("EPSG:32632\n1 2 3 400 5 a.jpg p\n", "line 2: pixel (400, 5) is outside photo 'a.jpg' (400 x 300"),
    ("EPSG:32632\n1 2 3 -1 5 a.jpg p\n", "line 2: pixel (-1, 5) is outside"),
    ("EPSG:32632\n1 2 3 4 a.jpg\n", "line 2: 5 values"),
    ("EPSG:32632\n1 2 x 4 5 a.jpg\n", "line 2: the first five values must be numbers"),
    ("EPSG:32632\n1 2 3 4 5 a.jpg p\n1 2 4 4 5 b.jpg p\n", "line 3: point 'p' has coordinates 1 2 4, but 1 2 3 on line 2"),
    ("EPSG:32632\n1 2 3 4 5 a.jpg p\n1 2 3 6 7 a.jpg p\n", "line 3: point 'p' is measured twice in photo 'a.jpg'"),
    ("EPSG:32632\n", "no measurement rows"),
])
def test_bad_input_names_file_line_and_problem(tmp_path, text, expected):
    p = _write(tmp_path, text)
    with pytest.raises(ControlError) as err:
        read_control(p, SIZES)
    assert str(p) in str(err.value) and expected in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    p = _write(tmp_path, "EPSG:32632\n1 2 3 4 5 x.jpg p\n1 2 3 4 5000 a.jpg p\n")
    msg = str(pytest.raises(ControlError, read_control, p, SIZES).value)
    assert "2 problem(s)" in msg and "line 2" in msg and "line 3" in msg


def test_unknown_check_point_name(tmp_path):
    p = _write(tmp_path, "EPSG:32632\n1 2 3 4 5 a.jpg p1\n1 2 3 4 5 b.jpg p1\n")
    with pytest.raises(ControlError, match=r"check point\(s\) 'p9' not in the file \(its points: p1\)"):
        read_control(p, SIZES, check_points="p1, p9")
    cs = read_control(p, SIZES)
    assert assign_roles(cs, ["p1"]).points[0].role == "check"


def test_opensfm_berlin(shared):
    from alignkit.core import camera

    folder = shared("opensfm_berlin")
    sizes = {q.name: (q.width, q.height) for q in camera.read_priors(folder / "images")}
    cs = read_control(folder / "ground_control_points.json", sizes)
    by = cs.by_name()
    assert sorted(by) == ["0", "1", "3"]
    assert by["0"].usable and by["0"].xyz[1] == pytest.approx(52.51926834404209)
    # OpenSfM normalised coordinates: x_n = (x + 0.5 - w/2) / max(w, h) (opensfm/features.py).
    m = by["0"].measurements[0]
    assert m.image == "02.jpg"
    assert (m.x + 0.5 - 3264 / 2) / 3264 == pytest.approx(-0.015689)
    assert (m.y + 0.5 - 2448 / 2) / 3264 == pytest.approx(-0.0625362)
    assert not by["1"].usable and "no surveyed position" in by["1"].problems[0]
    assert not by["3"].usable and "1 photo" in by["3"].problems[0]


def test_opensfm_pixel_convention_and_errors(tmp_path):
    p = _write(tmp_path, '{"points": [{"id": "c", "position": {"latitude": 46.5, "longitude": 6.6, "altitude": 401},'
               ' "observations": [{"shot_id": "a.jpg", "projection": [0, 0]},'
               ' {"shot_id": "b.jpg", "projection": [0.25, -0.125]}]}]}', "gcp.json")
    cs = read_control(p, SIZES)
    a, b = cs.points[0].measurements
    assert (a.x, a.y) == (199.5, 149.5)  # the image centre in pixel-centre coordinates
    assert (b.x, b.y) == (299.5, 99.5)
    to_local(cs, FRAME)
    np.testing.assert_allclose(cs.points[0].enu, [0, 0, 1], atol=1e-6)
    bad = _write(tmp_path, '{"points": [{"id": "c", "observations": [{"shot_id": "z.jpg", "projection": [0, 0]}]}]}',
                 "bad.json")
    with pytest.raises(ControlError, match="point 'c': photo 'z.jpg' is not in the image folder"):
        read_control(bad, SIZES)
    with pytest.raises(ControlError, match="line 1: not valid JSON"):
        read_control(_write(tmp_path, "{oops", "broken.json"), SIZES)


def test_surveyed_crs_differs_from_target_transformed_explicitly(tmp_path):
    """The same ground point given in Swiss LV95 and in UTM 32N lands on the same ENU position."""
    lat, lon, h = 46.5012, 6.6023, 412.25
    e, n = Transformer.from_crs("EPSG:4326", "EPSG:2056", always_xy=True).transform(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(lon, lat)
    swiss = _write(tmp_path, f"EPSG:2056\n{e} {n} {h} 1 1 a.jpg p\n{e} {n} {h} 2 2 b.jpg p\n", "ch.txt")
    utm = _write(tmp_path, f"WGS84 UTM 32N\n{x} {y} {h} 1 1 a.jpg p\n{x} {y} {h} 2 2 b.jpg p\n", "utm.txt")
    truth = FRAME.to_enu(lat, lon, h)[0]
    for path in (swiss, utm):
        cs = to_local(read_control(path, SIZES), FRAME)
        np.testing.assert_allclose(cs.points[0].enu, truth, atol=5e-3)  # CH1903+ datum shift: mm
    assert abs(truth[2] - 12.25) < 0.01  # heights pass through with their meaning


def test_export_and_workspace_round_trip(tmp_path):
    p = _write(tmp_path, "EPSG:32632\n300000.25 5150000.5 400.125 10.25 20.5 a.jpg p1\n"
               "300000.25 5150000.5 400.125 11 21 b.jpg p1\n")
    cs = read_control(p, SIZES)
    out = tmp_path / "out" / "gcp_list.txt"
    write_gcp_list(out, cs)
    again = read_control(out, SIZES)
    np.testing.assert_allclose(again.points[0].xyz, cs.points[0].xyz)
    assert [(m.image, m.x, m.y) for m in again.points[0].measurements] == [("a.jpg", 10.25, 20.5), ("b.jpg", 11, 21)]
    save_measurements(tmp_path / "ws" / "control.json", cs)
    back = load_measurements(tmp_path / "ws" / "control.json")
    assert back.points[0].name == "p1" and back.points[0].images == ["a.jpg", "b.jpg"]


def test_predict_pixels_matches_the_true_projection():
    K = np.array([[500.0, 0, 199.5], [0, 500.0, 149.5], [0, 0, 1]])
    R = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # looking down, image x east, y south
    C = np.array([[0.0, 0, 50], [30.0, 0, 50], [0.0, 0, np.nan]])
    X = np.array([3.0, -2.0, 1.0])
    got = predict_pixels(X, [R, R, R], C, [500] * 3, [0.01] * 3, [0] * 3, [(400, 300)] * 3, names=["a", "b", "c"])
    assert [g[0] for g in got] == ["a"]  # b sees it outside its frame; c has no pose
    np.testing.assert_allclose(got[0][1:], project(K, R, C[0], X, 0.01)[0], atol=1e-9)


def test_control_from_a_point_layer_in_another_crs():
    from alignkit.core.control import control_from_points

    lat, lon, h = 46.5012, 6.6023, 412.25
    e, n = Transformer.from_crs("EPSG:4326", "EPSG:2056", always_xy=True).transform(lon, lat)
    cs = control_from_points([("A", e, n, h), ("B", e + 10, n, None)], "EPSG:2056",
                             {"A": [("a.jpg", 10, 20), ("b.jpg", 30, 40)], "B": [("a.jpg", 1, 1), ("c.jpg", 2, 2)]},
                             image_sizes=SIZES)
    a, b = cs.points
    assert a.usable and [m.source for m in a.measurements] == ["user", "user"]
    assert not b.usable and "no surveyed height" in b.problems[0]
    np.testing.assert_allclose(to_local(cs, FRAME).points[0].enu, FRAME.to_enu(lat, lon, h)[0], atol=5e-3)
    with pytest.raises(ControlError, match="feature 2: the name 'A' is used twice"):
        control_from_points([("A", 0, 0, 0), ("A", 1, 1, 1)], "EPSG:2056")
    with pytest.raises(ControlError, match="measurements for point\\(s\\) not in the layer: Z"):
        control_from_points([("A", 0, 0, 0)], "EPSG:2056", {"Z": [("a.jpg", 1, 1)]})
    with pytest.raises(ControlError, match="point 'A': pixel \\(999, 1\\) is outside photo 'a.jpg'"):
        control_from_points([("A", 0, 0, 0)], "EPSG:2056", {"A": [("a.jpg", 999, 1)]}, image_sizes=SIZES)
