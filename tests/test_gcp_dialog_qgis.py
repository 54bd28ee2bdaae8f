"""The ground-control marking dialog on a generated survey with painted targets (known truth).

The "alignment result" the dialog opens is the survey's true cameras written in the GeoPackage and
summary format of an alignment (so the photos it lists and the pixels it predicts can be checked
exactly against the truth); the prior-only path is checked against the truth with the GPS error the
survey has. Clicks are real Qt mouse events on the photo views.
"""
import cv2
import numpy as np
import pytest
from qgis.core import QgsFeature, QgsField, QgsGeometry, QgsPoint, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QEvent, QPoint, QPointF, Qt, QVariant
from qgis.PyQt.QtGui import QMouseEvent
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication

from alignkit.core.camera import angles_from_rotation
from alignkit.core.control import load_measurements, read_control
from alignkit.core.geo import LocalFrame
from alignkit.core.gpkg import Layer, write_geopackage
from alignkit.core.marking import MEASUREMENTS_FILE, cameras_from_alignment, cameras_from_priors
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth, project
from alignkit.core.synthetic_targets import SurveyTargets
from alignkit.core.workspace import write_json
from alignkit.ui.gcp_dialog import GcpDialog

pytestmark = pytest.mark.qgis

SPEC = SurveySpec(rows=3, cols=4, width=600, height=450, gps_noise_h_m=2.0, gps_noise_v_m=3.0, seed=5)
KINDS = ["checker", "aruco"] * 3


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("marking")
    out = generate_survey(root / "survey", SPEC, decorate=SurveyTargets(count=6, kinds=KINDS, size_px=32.0))
    gt = load_ground_truth(out)
    gpkg = write_truth_alignment(root / "result" / "survey_alignkit.gpkg", out, gt)
    return out, gt, gpkg


def write_truth_alignment(gpkg, survey, gt):
    """The true cameras as an alignment result: `cameras` layer (UTM) + summary with the ENU frame."""
    frame = LocalFrame(**gt["origin"])
    crs = gt["targets"]["crs"]
    xyz = frame.to_crs(gt["C"], crs)
    feats = []
    for i, cam in enumerate(gt["cameras"]):
        yaw, pitch, roll = angles_from_rotation(gt["R"][i])
        feats.append((tuple(xyz[i]), {"image": cam["image"], "path": str(survey / "images" / cam["image"]),
                                      "registered": True, "yaw": yaw, "pitch": pitch, "roll": roll,
                                      "focal_px": gt["K"][i, 0, 0], "k1": SPEC.k1, "k2": SPEC.k2}))
    fields = [("image", "str"), ("path", "str"), ("registered", "bool"), ("yaw", "real"), ("pitch", "real"),
              ("roll", "real"), ("focal_px", "real"), ("k1", "real"), ("k2", "real")]
    write_geopackage(gpkg, crs, [Layer("cameras", "PointZ", fields, feats)])
    stem = str(gpkg)[: -len(".gpkg")]
    write_json(stem + "_summary.json", {"crs": crs, "frame": frame.to_dict(), "height_above_ground_m": SPEC.altitude_m,
                                        "outputs": {"workspace": stem + "_workspace"},
                                        "config": {"images": str(survey / "images")}})
    return gpkg


def true_views(gt, target):
    """{image: (x, y)} of the photos in whose frame the target's true centre projects."""
    X = np.array(gt["targets"]["points"][target]["enu"])
    out = {}
    for i, cam in enumerate(gt["cameras"]):
        if (gt["R"][i] @ (X - gt["C"][i]))[2] <= 0:
            continue
        (x, y), = project(gt["K"][i], gt["R"][i], gt["C"][i], X[None], SPEC.k1, SPEC.k2)
        if -0.5 <= x <= SPEC.width - 0.5 and -0.5 <= y <= SPEC.height - 0.5:
            out[cam["image"]] = (x, y)
    return out


def target_layer(gt):
    """The targets' surveyed coordinates as a QGIS PointZ layer (UTM), names in a field."""
    layer = QgsVectorLayer(f"PointZ?crs={gt['targets']['crs']}", "surveyed targets", "memory")
    layer.dataProvider().addAttributes([QgsField("label", QVariant.String)])
    layer.updateFields()
    feats = []
    for t in gt["targets"]["points"]:
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry(QgsPoint(*t["crs_xyz"])))
        f["label"] = t["name"]
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    QgsProject.instance().addMapLayer(layer)
    return layer


def click(view, pos, button=Qt.LeftButton):
    """A press and release at a sub-pixel viewport position (as a tablet or a HiDPI mouse gives)."""
    for kind in (QEvent.MouseButtonPress, QEvent.MouseButtonRelease):
        QApplication.sendEvent(view.viewport(), QMouseEvent(kind, QPointF(pos), button, button, Qt.NoModifier))


@pytest.fixture
def dialog(survey, qgis_iface, qgis_new_project):
    out, gt, gpkg = survey
    ws = gpkg.parent / "survey_alignkit_workspace" / MEASUREMENTS_FILE
    ws.unlink(missing_ok=True)
    d = GcpDialog(iface=qgis_iface, alignment=str(gpkg))
    d.use_layer(target_layer(gt), "label", "")
    d.show()
    QApplication.processEvents()
    yield d
    d.close()
    d.deleteLater()


def test_alignment_cameras_reproduce_the_true_projections(survey):
    out, gt, gpkg = survey
    cams = cameras_from_alignment(gpkg)
    assert cams.names == [c["image"] for c in gt["cameras"]]
    np.testing.assert_allclose(cams.C, gt["C"], atol=1e-6)
    np.testing.assert_allclose(cams.R, gt["R"], atol=1e-9)
    np.testing.assert_array_equal(cams.sizes, [[SPEC.width, SPEC.height]] * len(gt["cameras"]))


def test_lists_the_photos_where_the_target_projects_and_predicts_it_there(dialog, survey):
    _, gt, _ = survey
    assert dialog.table.rowCount() == len(gt["targets"]["points"])
    for t, tgt in enumerate(gt["targets"]["points"]):
        dialog.select_point(tgt["name"])
        truth = true_views(gt, t)
        assert len(truth) >= 2
        assert set(dialog.tiles) == set(truth)
        for ph in dialog.session.photos(tgt["name"]):
            np.testing.assert_allclose(ph["predicted"], truth[ph["image"]], atol=1e-3)
            # the cross is drawn at the prediction, in the view's photo-pixel scene coordinates
            cross = dialog.tiles[ph["image"]].view.prediction.pos()
            np.testing.assert_allclose((cross.x(), cross.y()), truth[ph["image"]], atol=1e-3)
        row = dialog._row_of(tgt["name"])
        assert dialog.table.item(row, 3).text() == str(len(truth))  # predicted in
        assert dialog.table.item(row, 2).text() == "0"  # marked in


def test_a_click_stores_the_exact_photo_pixel_under_the_mouse_at_any_zoom(dialog, survey):
    out, gt, gpkg = survey
    name = gt["targets"]["points"][0]["name"]
    dialog.select_point(name)
    image = sorted(dialog.tiles)[0]
    view = dialog.tiles[image].view
    photo = cv2.cvtColor(cv2.imread(str(out / "images" / image)), cv2.COLOR_BGR2RGB)
    (tx, ty), = [xy for n, xy in true_views(gt, 0).items() if n == image]
    compared = 0
    for zoom in (0.8, 3.0, 11.0):
        view.zoom_by(zoom / view.zoom())
        QApplication.processEvents()
        target = (tx + 0.37, ty - 0.21)  # a sub-pixel scene position: a photo pixel coordinate
        view.centerOn(*target)
        pos = view.to_view(*target)
        click(view, pos)
        m = dialog.session.measurement(name, image)
        assert m is not None and m.source == "user"
        np.testing.assert_allclose((m.x, m.y), target, atol=1e-6)
        # Independently of the view's own transform: what the screen shows at an integer mouse position
        # is the photo pixel the click there stores (nearest pixel: centres at integer coordinates).
        # Away from the markers, which are drawn over the photo.
        frame = view.viewport().grab().toImage()
        probe = QPoint(int(pos.x()) + 31, int(pos.y()) - 27)
        QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, probe)
        m = dialog.session.measurement(name, image)
        centre_x, centre_y = view.to_photo(QPointF(probe) + QPointF(0.5, 0.5))
        if min(abs(centre_x - round(centre_x)), abs(centre_y - round(centre_y))) < 0.45:  # not on a pixel edge
            shown = frame.pixelColor(probe)
            assert (shown.red(), shown.green(), shown.blue()) == tuple(photo[int(round(centre_y)), int(round(centre_x))])
            compared += 1
        np.testing.assert_allclose((m.x, m.y), view.to_photo(QPointF(probe)), atol=1e-9)
        assert abs(m.x - target[0] - 31 / zoom) <= 1.5 / zoom and abs(m.y - target[1] + 27 / zoom) <= 1.5 / zoom
    assert compared >= 2


def test_drag_moves_remove_removes_and_roles_and_counts_follow(dialog, survey):
    out, gt, gpkg = survey
    name = gt["targets"]["points"][1]["name"]
    dialog.select_point(name)
    images = sorted(dialog.tiles)
    truth = true_views(gt, 1)
    for image in images[:2]:
        view = dialog.tiles[image].view
        click(view, view.to_view(*truth[image]))
    row = dialog._row_of(name)
    assert dialog.table.item(row, 2).text() == "2" and dialog.table.item(row, 5).text() == "ok"
    assert dialog.table.item(row, 4).text() == "0.0"  # clicked on the truth: the prediction of the true cameras
    # Drag the first measurement 5 px to the right, in screen terms at the current zoom.
    view = dialog.tiles[images[0]].view
    start = view.to_view(*truth[images[0]])
    end = view.to_view(truth[images[0]][0] + 5.0, truth[images[0]][1])
    vp = view.viewport()
    QApplication.sendEvent(vp, QMouseEvent(QEvent.MouseButtonPress, start, Qt.LeftButton, Qt.LeftButton, Qt.NoModifier))
    QApplication.sendEvent(vp, QMouseEvent(QEvent.MouseMove, (start + end) / 2, Qt.NoButton, Qt.LeftButton, Qt.NoModifier))
    QApplication.sendEvent(vp, QMouseEvent(QEvent.MouseMove, end, Qt.NoButton, Qt.LeftButton, Qt.NoModifier))
    QApplication.sendEvent(vp, QMouseEvent(QEvent.MouseButtonRelease, end, Qt.LeftButton, Qt.NoButton, Qt.NoModifier))
    m = dialog.session.measurement(name, images[0])
    np.testing.assert_allclose((m.x, m.y), (truth[images[0]][0] + 5.0, truth[images[0]][1]), atol=1e-6)
    # 5 px off the prediction of adjusted cameras: flagged in the table with the photo's name.
    assert dialog.table.item(row, 4).text() == "5.0" and images[0] in dialog.table.item(row, 5).text()
    # A drag away from the marker pans and places nothing.
    before = len(dialog.session.point(name).measurements)
    far = dialog.tiles[images[2]].view
    p0 = QPointF(20, 20)
    QApplication.sendEvent(far.viewport(), QMouseEvent(QEvent.MouseButtonPress, p0, Qt.LeftButton, Qt.LeftButton, Qt.NoModifier))
    QApplication.sendEvent(far.viewport(), QMouseEvent(QEvent.MouseMove, p0 + QPointF(30, 25), Qt.NoButton, Qt.LeftButton, Qt.NoModifier))
    QApplication.sendEvent(far.viewport(), QMouseEvent(QEvent.MouseButtonRelease, p0 + QPointF(30, 25), Qt.LeftButton, Qt.NoButton, Qt.NoModifier))
    assert len(dialog.session.point(name).measurements) == before
    # Remove, role, and the workspace file follow each edit.
    dialog.tiles[images[1]].remove_button.click()
    assert dialog.session.measurement(name, images[1]) is None
    assert dialog.table.item(row, 2).text() == "1" and "2+" in dialog.table.item(row, 5).text()
    dialog.set_role(name, "check")
    saved = load_measurements(gpkg.parent / "survey_alignkit_workspace" / MEASUREMENTS_FILE).by_name()[name]
    assert saved.role == "check" and [(m.image, m.x, m.y) for m in saved.measurements] == [
        (images[0], m.x, m.y)]


def test_find_target_lands_on_the_truth_and_export_reads_back_equal(dialog, survey, tmp_path):
    out, gt, gpkg = survey
    errors = []
    for t, tgt in enumerate(gt["targets"]["points"]):
        dialog.select_point(tgt["name"])
        dialog.side_spin.setValue(tgt["size_m"])
        truth = true_views(gt, t)
        # Start from a rough user click 6 px off, as on a photo where the prediction is off.
        for image, (x, y) in truth.items():
            dialog.place(image, x + 6.0, y - 4.0)
        dialog.find_all()
        dialog.accept_all()
        for image, (x, y) in truth.items():
            m = dialog.session.measurement(tgt["name"], image)
            inside = gt["targets"]["observations"]  # whole targets only: a cut-off one cannot be found
            if any(o["image"] == image and o["target"] == t for o in inside):
                errors.append(np.hypot(m.x - x, m.y - y) if m.source == "auto" else np.inf)
    errors = np.array(errors)
    print(f"find target: {len(errors)} observations, {100 * np.mean(errors < 0.5):.0f}% within 0.5 px, "
          f"median {np.median(errors):.3f} px")
    assert len(errors) >= 20 and np.mean(errors < 0.5) >= 0.9

    dialog.set_role(gt["targets"]["points"][2]["name"], "check")
    path = dialog.export(tmp_path / "gcp_list.txt")
    sizes = {c["image"]: (SPEC.width, SPEC.height) for c in gt["cameras"]}
    back = read_control(path, sizes).by_name()
    for p in dialog.session.control.points:
        q = back[p.name]
        np.testing.assert_allclose(q.xyz, p.xyz, atol=5e-4)
        assert sorted((m.image, round(m.x, 2), round(m.y, 2)) for m in q.measurements) == sorted(
            (m.image, round(m.x, 2), round(m.y, 2)) for m in p.measurements)
    assert set(back) == {t["name"] for t in gt["targets"]["points"]}


def test_prior_cameras_predict_within_the_gps_error(survey):
    out, gt, _ = survey
    cams = cameras_from_priors(out / "images")
    frame = cams.frame
    X = frame.to_enu(*LocalFrame(**gt["origin"]).to_geodetic(np.array([t["enu"] for t in gt["targets"]["points"]])))
    gsd = SPEC.altitude_m / SPEC.focal_px
    from alignkit.core.control import predict_pixels

    for t in range(len(X)):
        truth = true_views(gt, t)
        pred = {n: (x, y) for n, x, y in predict_pixels(X[t], cams.R, cams.C, cams.focal, cams.k1, cams.k2,
                                                         cams.sizes, names=cams.names)}
        common = set(pred) & set(truth)
        assert len(common) >= len(truth) - 2
        # GPS error 2 m horizontal (1 sigma) on a 0.15 m pixel: tens of pixels, far from hundreds.
        off = [np.hypot(pred[n][0] - truth[n][0], pred[n][1] - truth[n][1]) * gsd for n in common]
        assert max(off) < 4 * np.hypot(SPEC.gps_noise_h_m, SPEC.gps_noise_h_m)


def test_a_geographic_layer_with_a_height_field_predicts_the_same_pixels(survey, qgis_iface, qgis_new_project):
    """Any CRS, transformed explicitly: the targets as lon/lat points (EPSG:4326) with the height in a field."""
    out, gt, gpkg = survey
    layer = QgsVectorLayer("Point?crs=EPSG:4326", "targets lon lat", "memory")
    layer.dataProvider().addAttributes([QgsField("id", QVariant.String), QgsField("h", QVariant.Double)])
    layer.updateFields()
    lat, lon, h = LocalFrame(**gt["origin"]).to_geodetic(np.array([t["enu"] for t in gt["targets"]["points"]]))
    feats = []
    for t, la, lo, hh in zip(gt["targets"]["points"], lat, lon, h):
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry(QgsPoint(float(lo), float(la))))
        f["id"], f["h"] = t["name"], float(hh)
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    d = GcpDialog(iface=qgis_iface, alignment=str(gpkg))
    d.use_layer(layer, "id", "h")
    for t, tgt in enumerate(gt["targets"]["points"]):
        truth = true_views(gt, t)
        got = {ph["image"]: ph["predicted"] for ph in d.session.photos(tgt["name"])}
        assert set(got) == set(truth)
        for image, xy in got.items():
            np.testing.assert_allclose(xy, truth[image], atol=1e-3)
    # A layer without Z and without a height field is refused with the layer's name.
    with pytest.raises(ValueError, match="targets lon lat.*no Z"):
        d.use_layer(layer, "id", "")
    d.deleteLater()


def test_the_dock_opens_the_dialog_on_its_alignment(survey, qgis_iface, qgis_new_project):
    from alignkit.ui.dock import AlignKitDock

    out, gt, gpkg = survey
    dock = AlignKitDock(qgis_iface)
    try:
        dock.set_output(str(gpkg))
        dock.gcp_button.click()
        d = dock.gcp_dialog
        assert d.cameras.source == "alignment" and d.cameras.names == [c["image"] for c in gt["cameras"]]
        d.close()
    finally:
        dock.shutdown()
        dock.deleteLater()


def test_before_aligning_the_priors_predict_and_find_target_lands_on_the_truth(survey, qgis_iface, qgis_new_project):
    """Prior cameras only (GPS 2 m / 3 m noise): predictions tens of pixels off, the targets still found
    near them (the dialog's default search radius for priors) within 0.5 px."""
    out, gt, _ = survey
    d = GcpDialog(iface=qgis_iface, image_folder=str(out / "images"))
    assert d.cameras.source == "priors" and d.radius_spin.value() >= 60
    d.use_layer(target_layer(gt), "label", "")
    errors, offsets = [], []
    for t, tgt in enumerate(gt["targets"]["points"]):
        d.select_point(tgt["name"])
        d.side_spin.setValue(tgt["size_m"])
        d.find_all()
        d.accept_all()
        for o in gt["targets"]["observations"]:
            if o["target"] != t:
                continue
            ph = next((p for p in d.session.photos(tgt["name"]) if p["image"] == o["image"]), None)
            assert ph is not None and ph["predicted"] is not None  # listed from the priors
            offsets.append(np.hypot(ph["predicted"][0] - o["x"], ph["predicted"][1] - o["y"]))
            m = ph["measurement"]
            errors.append(np.hypot(m.x - o["x"], m.y - o["y"]) if m is not None else np.inf)
    errors = np.array(errors)
    print(f"priors: predictions {np.median(offsets):.1f} px off (median, max {max(offsets):.1f}); found "
          f"{100 * np.mean(errors < 0.5):.0f}% of {len(errors)} within 0.5 px")
    assert np.median(offsets) > 5  # the priors really are off: the finder did the work
    assert len(errors) >= 40 and np.mean(errors < 0.5) >= 0.9
    assert "Not saved" in d.status_label.text()  # no alignment workspace: Save as… is the way
    d.deleteLater()
