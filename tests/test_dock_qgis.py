"""The dock, its background task and the styled layers, driven through pytest-qgis's stub iface."""
import time
from pathlib import Path

import pytest
from osgeo import ogr
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsProject,
    QgsRuleBasedRenderer,
    QgsSettings,
    QgsVectorLayer,
)

from alignkit.tests import result_fixture as fx
from alignkit.ui import layers as layer_loader
from alignkit.ui.dock import AlignKitDock, default_output_for, is_inside

pytestmark = pytest.mark.qgis


def wait_for(condition, timeout=120.0):
    """Process Qt events until `condition()` holds (task signals and finished() need the event loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QgsApplication.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def dock(qgis_iface, qgis_new_project):
    QgsSettings().remove("alignkit/last_folder")
    QgsSettings().remove("alignkit/preset")
    d = AlignKitDock(qgis_iface)
    yield d
    d.shutdown()
    wait_for(lambda: QgsApplication.taskManager().countActiveTasks() == 0, 60)
    d.deleteLater()
    # A remembered folder brings its own preset and options: later tests (other files) start clean.
    QgsSettings().remove("alignkit/last_folder")
    QgsSettings().remove("alignkit/options")


# ----------------------------------------------------------------------------- layers and styles
def test_result_layers_load_into_a_group_styled_and_stored_in_the_geopackage(tmp_path, qgis_new_project):
    gpkg = fx.write_result(tmp_path / "photos_alignkit.gpkg", image_folder=str(tmp_path / "photos"))
    group, layers = layer_loader.load_geopackage(gpkg, "photos", layer_loader.RESULT_STYLES, str(tmp_path / "photos"))
    root = QgsProject.instance().layerTreeRoot()
    assert root.findGroup("photos") is group and root.children()[0] is group
    assert [n.name() for n in group.findLayers()] == ["cameras", "sparse_points", "pairs", "footprints"]
    expected_counts = {"cameras": 6, "sparse_points": fx.N_POINTS, "pairs": 4, "footprints": 5}
    for name, layer in layers.items():
        assert layer.crs().authid() == "EPSG:32633"
        assert layer.featureCount() == expected_counts[name]
        assert layer.source().startswith(str(gpkg))  # from the file: survives saving the project
    # Pairs start hidden, the rest visible.
    visible = {n.name(): n.isVisible() for n in group.findLayers()}
    assert visible == {"cameras": True, "sparse_points": True, "pairs": False, "footprints": True}

    cameras = layers["cameras"]
    renderer = cameras.renderer()
    assert isinstance(renderer, QgsRuleBasedRenderer)
    labels = [r.label() for r in renderer.rootRule().children()]
    assert labels[-1] == "Not registered" and len(labels) == 5
    # Each registered camera falls in exactly the class its RMSE says; the unregistered one in the last.
    ctx_counts = _rule_counts(cameras)
    assert ctx_counts == {"RMSE < 0.5 px": 2, "RMSE 0.5 - 1 px": 1,
                          "RMSE 1 - 2 px": 1, "RMSE >= 2 px": 1, "Not registered": 1}
    assert layers["footprints"].renderer().symbol().color().alpha() < 100  # semi-transparent
    points_symbol = layers["sparse_points"].renderer().symbol()
    assert "color_rgb" in points_symbol.symbolLayer(0).dataDefinedProperties().property(
        points_symbol.symbolLayer(0).PropertyFillColor).expressionString()

    # Photo map tip and action from the cameras' `path` field.
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils

    ctx = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(cameras))
    ctx.setFeature(next(f for f in cameras.getFeatures() if f["image"] == "IMG_0005.JPG"))
    tip = QgsExpression.replaceExpressionText(cameras.mapTipTemplate(), ctx)
    assert f'<img src="file://{tmp_path}/photos/IMG_0005.JPG"' in tip
    assert "registered: no" in tip and "2024-05-01T10:00:05" in tip
    assert "problem: not enough verified matches" in tip
    assert [a.name() for a in cameras.actions().actions()] == ["Open photo"]

    # Styles stored in the GeoPackage as the default: a fresh layer (as in another project) is styled.
    ds = ogr.Open(str(gpkg))
    styles = ds.ExecuteSQL("SELECT f_table_name, useAsDefault FROM layer_styles")
    stored = {f.GetField(0): f.GetField(1) for f in styles}
    ds.ReleaseResultSet(styles)
    assert stored == {name: 1 for name in expected_counts}
    fresh = QgsVectorLayer(f"{gpkg}|layername=cameras", "cameras", "ogr")
    assert isinstance(fresh.renderer(), QgsRuleBasedRenderer)
    assert "<img" in fresh.mapTipTemplate()


def _rule_counts(layer):
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils

    counts = {}
    for rule in layer.renderer().rootRule().children():
        expr = QgsExpression(rule.filterExpression())
        ctx = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
        n = 0
        for f in layer.getFeatures():
            ctx.setFeature(f)
            n += bool(expr.evaluate(ctx))
        counts[rule.label()] = n
    return counts


def test_result_layers_survive_saving_and_reopening_the_project(tmp_path, qgis_new_project):
    gpkg = fx.write_result(tmp_path / "photos_alignkit.gpkg")
    layer_loader.load_geopackage(gpkg, "photos")
    project_file = tmp_path / "survey.qgz"
    assert QgsProject.instance().write(str(project_file))
    QgsProject.instance().clear()
    assert QgsProject.instance().mapLayers() == {}
    assert QgsProject.instance().read(str(project_file))
    group = QgsProject.instance().layerTreeRoot().findGroup("photos")
    layers = {n.name(): n.layer() for n in group.findLayers()}
    assert all(layer.isValid() for layer in layers.values())
    assert layers["sparse_points"].featureCount() == fx.N_POINTS
    assert isinstance(layers["cameras"].renderer(), QgsRuleBasedRenderer)
    assert not group.findLayer(layers["pairs"].id()).isVisible()


def test_loading_again_replaces_the_group_and_a_bad_file_loads_nothing(tmp_path, qgis_new_project):
    gpkg = fx.write_result(tmp_path / "a.gpkg")
    layer_loader.load_geopackage(gpkg, "photos", store_styles=False)
    layer_loader.load_geopackage(gpkg, "photos", store_styles=False)
    root = QgsProject.instance().layerTreeRoot()
    assert [g.name() for g in root.findGroups()] == ["photos"]
    assert len(QgsProject.instance().mapLayers()) == 4
    # A GeoPackage missing a layer: a clear error, and the project keeps what it had.
    from alignkit.core.gpkg import Layer, write_geopackage

    partial = tmp_path / "partial.gpkg"
    write_geopackage(partial, fx.CRS, [Layer("cameras", "PointZ", fx.CAMERA_FIELDS, [])])
    with pytest.raises(ValueError, match="partial.gpkg.*'sparse_points' is missing"):
        layer_loader.load_geopackage(partial, "other")
    assert root.findGroup("other") is None and len(QgsProject.instance().mapLayers()) == 4


def test_reproject_geopackage_to_the_project_crs(tmp_path):
    gpkg = fx.write_result(tmp_path / "a.gpkg")
    out = layer_loader.reproject_geopackage(gpkg, tmp_path / "a_EPSG4326.gpkg", "EPSG:4326")
    layer = QgsVectorLayer(f"{out}|layername=cameras", "c", "ogr")
    assert layer.crs().authid() == "EPSG:4326" and layer.featureCount() == 6
    # UTM 33N, easting 500000 is the central meridian 15 E; 5000 km north is about 45.1 N.
    point = next(f for f in layer.getFeatures() if f["image"] == "IMG_0000.JPG").geometry().constGet()
    assert point.x() == pytest.approx(15.0, abs=1e-6)
    assert point.y() == pytest.approx(45.1, abs=0.1)
    assert point.z() == pytest.approx(120.0)


# ----------------------------------------------------------------------------- dock state
def test_default_output_is_never_inside_the_image_folder(tmp_path):
    photos = tmp_path / "survey" / "photos"
    # named after the survey (the parent of a folder called photos), not "photos"
    assert default_output_for(photos) == str(tmp_path / "survey" / "survey_alignkit.gpkg")
    assert default_output_for(photos, str(tmp_path / "project")) == str(tmp_path / "project" / "survey_alignkit.gpkg")
    # A project saved inside the image folder must not pull the output in there.
    assert not is_inside(default_output_for(photos, str(photos / "sub")), photos)


def test_dock_remembers_the_folder_and_maps_presets(dock, qgis_iface, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    dock.set_folder(photos)
    assert dock.output_path() == str(tmp_path / f"{tmp_path.name}_alignkit.gpkg")  # the survey: photos' parent
    assert QgsSettings().value("alignkit/last_folder") == str(photos)
    again = AlignKitDock(qgis_iface)
    try:
        assert again.folder() == str(photos)
    finally:
        again.shutdown()
        again.deleteLater()
    from alignkit.core.config import PRESETS

    for name, values in PRESETS.items():
        dock.preset_combo.setCurrentText(name)
        config = dock.current_config()
        assert (config.max_image_size, config.max_features) == (values["max_image_size"], values["max_features"])
    assert dock.current_config().focal_px == 0.0 and dock.focal_spin.text() == "from EXIF"
    dock.focal_spin.setValue(2222.2)
    assert dock.current_config().focal_px == 2222.2
    QgsSettings().setValue("alignkit/preset", "accurate")
    again = AlignKitDock(qgis_iface)
    try:
        assert again.preset_combo.currentText() == "accurate"
        assert again.size_spin.value() == PRESETS["accurate"]["max_image_size"]
    finally:
        again.shutdown()
        again.deleteLater()
        QgsSettings().remove("alignkit/preset")
    dock.set_output(photos / "inside.gpkg")
    with pytest.raises(ValueError, match="inside the image folder"):
        dock.current_config()


def test_target_crs_defaults_to_a_projected_project_crs(qgis_iface, qgis_new_project):
    QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:32633"))
    d = AlignKitDock(qgis_iface)
    try:
        assert d.target_crs() == "EPSG:32633"
        assert d.export_check.isHidden()  # same CRS: nothing to export
        d.set_target_crs("EPSG:32632")
        assert not d.export_check.isHidden() and "EPSG:32633" in d.export_check.text()
        d.export_check.setChecked(True)
        assert d.export_crs() == "EPSG:32633"
    finally:
        d.shutdown()
        d.deleteLater()
    QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    d = AlignKitDock(qgis_iface)
    try:
        assert d.target_crs() == ""  # geographic project: automatic UTM of the photos
    finally:
        d.shutdown()
        d.deleteLater()


# ----------------------------------------------------------------------------- background runs
@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Six generated photos (2 flight lines x 3) with exact EXIF GPS, and their ground truth."""
    import json

    from alignkit.core.synthetic import SurveySpec, generate_survey

    out = generate_survey(tmp_path_factory.mktemp("survey"), SurveySpec(rows=2, cols=3, width=480, height=360))
    truth = json.loads((out / "ground_truth.json").read_text())
    return out / "images", truth


def _listing(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir())


def test_preview_reports_the_photos_and_loads_the_priors(dock, survey, tmp_path, qgis_iface):
    images, truth = survey
    before = _listing(images)
    dock.set_folder(images)
    dock.set_output(tmp_path / "out" / "survey.gpkg")
    (tmp_path / "out").mkdir()
    assert dock.preview() is not None
    assert dock.is_running() and not dock.align_button.isEnabled()
    assert wait_for(lambda: not dock.is_running(), 120)
    info = dock.last_preview
    assert (info["images"], info["with_gps"], info["unusable"]) == (6, 6, 0)
    focal_true = truth["cameras"][0]["K"][0][0]
    assert "AlignKit SynthCam 480x360" in dock.preview_label.text()
    assert f"focal {focal_true:.0f} px" in dock.preview_label.text()
    # lon 6.6 E is UTM zone 32; the new project's CRS is geographic, so the photos' zone is proposed.
    assert info["suggested_crs"] == "EPSG:32632" and dock.target_crs() == "EPSG:32632"
    group = QgsProject.instance().layerTreeRoot().findGroup(f"{images.parent.name} priors")
    layers = {n.name(): n.layer() for n in group.findLayers()}
    assert layers["cameras"].featureCount() == 6 and layers["footprints"].featureCount() == 6
    assert layers["cameras"].crs().authid() == "EPSG:32632"
    assert isinstance(layers["cameras"].renderer(), QgsRuleBasedRenderer)
    assert _listing(images) == before  # the input folder is never written to
    assert qgis_iface.messageBar().get_messages(2) == []  # no Critical message


def _pipeline_available():
    try:
        from alignkit.core import pipeline  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the alignment pipeline is not importable yet: {exc}")


def _start_alignment(dock, images, output):
    _pipeline_available()
    dock.set_folder(images)
    dock.set_output(output)
    dock.preset_combo.setCurrentText("fast")
    dock.workers_spin.setValue(1)  # the test machine is shared; one worker keeps it predictable
    task = dock.align()
    assert task is not None
    return task


@pytest.mark.slow
def test_align_loads_the_four_styled_layers_in_the_target_crs(dock, survey, tmp_path, qgis_iface):
    images, truth = survey
    dock.set_target_crs("EPSG:32632")
    _start_alignment(dock, images, tmp_path / "survey_alignkit.gpkg")
    assert wait_for(lambda: not dock.is_running(), 600)
    assert qgis_iface.messageBar().get_messages(2) == [], dock.log.toPlainText()
    group = QgsProject.instance().layerTreeRoot().findGroup(images.parent.name)
    assert group is not None, dock.log.toPlainText()
    layers = {n.name(): n.layer() for n in group.findLayers()}
    assert set(layers) == {"cameras", "footprints", "sparse_points", "pairs"}
    assert all(layer.crs().authid() == "EPSG:32632" for layer in layers.values())
    summary = dock.last_result["summary"]
    cameras = layers["cameras"]
    assert cameras.featureCount() == 6
    registered = [f for f in cameras.getFeatures() if f["registered"]]
    assert len(registered) == summary["registered"] >= 5
    assert layers["footprints"].featureCount() == len(registered)
    assert layers["sparse_points"].featureCount() == summary["points"] > 100
    assert layers["pairs"].featureCount() == summary["pairs_verified"]
    assert isinstance(cameras.renderer(), QgsRuleBasedRenderer)
    dot = layers["sparse_points"].renderer().symbol().symbolLayer(0)
    assert "color_rgb" in dot.dataDefinedProperties().property(dot.PropertyFillColor).expressionString()
    # Camera positions against the true ones, in the same CRS.
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    true_xy = {c["image"]: to_utm.transform(c["lon"], c["lat"]) for c in truth["cameras"]}
    for f in registered:
        p = f.geometry().constGet()
        tx, ty = true_xy[f["image"]]
        assert abs(p.x() - tx) < 3.0 and abs(p.y() - ty) < 3.0, f["image"]
    # The report beside the GeoPackage, linked from the message bar.
    report = Path(dock.last_result["report"])
    assert report.exists() and report.parent == tmp_path
    items = qgis_iface.messageBar().items()
    assert any("Open report" in [b.text() for b in item.findChildren(type(dock.align_button))] for item in items)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dock", "task manager"])
def test_cancel_mid_run_loads_nothing_and_keeps_the_workspace(dock, survey, tmp_path, qgis_iface, how):
    images, _ = survey
    output = tmp_path / "survey_alignkit.gpkg"
    task = _start_alignment(dock, images, output)
    assert wait_for(lambda: task.progress() > 0 or not dock.is_running(), 120)
    assert dock.is_running(), "the run ended before it could be cancelled"
    if how == "dock":
        dock.cancel()
    else:
        QgsApplication.taskManager().cancelAll()
    assert wait_for(lambda: not dock.is_running(), 300)
    assert QgsProject.instance().layerTreeRoot().findGroup(images.parent.name) is None
    assert QgsProject.instance().mapLayers() == {}
    assert not output.exists()
    assert (tmp_path / "survey_alignkit_workspace").is_dir()  # kept for a resume
    assert "cancelled" in dock.log.toPlainText()
    assert dock.align_button.isEnabled() and not dock.cancel_button.isEnabled()


# ----------------------------------------------------------------------------- image stack tab
@pytest.fixture
def provider(qgis_app):
    from alignkit.processing.provider import AlignKitProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("alignkit") is None:
        p = AlignKitProvider()
        registry.addProvider(p)
        yield p
        registry.removeProvider(p)
    else:
        yield registry.providerById("alignkit")


def _shifted_stack(folder, shifts):
    """Copies of one seeded texture, each translated by a known (dx, dy) in pixels."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (300, 400)).astype(np.float32), (0, 0), 2.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    folder.mkdir()
    for k, (dx, dy) in enumerate(shifts):
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        img = cv2.warpAffine(base, m, (400, 300), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(folder / f"frame_{k}.png"), np.clip(img, 0, 255).astype(np.uint8))


def test_image_stack_tab_runs_alignstack_in_a_task(dock, provider, tmp_path, qgis_iface):
    import json

    shifts = [(-6.0, 4.0), (0.0, 0.0), (5.5, -3.0)]
    _shifted_stack(tmp_path / "stack", shifts)
    dock.tabs.setCurrentIndex(1)
    dock.stack_folder_widget.setFilePath(str(tmp_path / "stack"))
    assert dock.stack_output_widget.filePath() == str(tmp_path / "stack_aligned")  # beside, not inside
    dock.reference_combo.setCurrentText("frame_1.png")
    dock.model_combo.setCurrentText("translation")
    task = dock.align_stack()
    assert task is not None and dock.is_running()
    assert wait_for(lambda: not dock.is_running(), 300), dock.log.toPlainText()
    assert qgis_iface.messageBar().get_messages(2) == [], dock.log.toPlainText()
    result = json.loads((tmp_path / "stack_aligned" / "transforms.json").read_text())
    assert result["reference"] == "frame_1.png" and result["model"] == "translation"
    by_name = {img["image"]: img for img in result["images"]}
    for k, (dx, dy) in enumerate(shifts):
        img = by_name[f"frame_{k}.png"]
        assert img["status"] == ("reference" if k == 1 else "aligned")
        # A pixel of frame k maps to the reference (shift 0) by minus its own shift.
        assert img["matrix"][0][2] == pytest.approx(-dx, abs=0.3)
        assert img["matrix"][1][2] == pytest.approx(-dy, abs=0.3)
    assert "2 images aligned to frame_1.png" in dock.stack_label.text()


def test_a_rejected_stack_frame_is_a_warning_with_its_reason_in_the_log(dock, provider, tmp_path, qgis_iface):
    import cv2
    import numpy as np

    _shifted_stack(tmp_path / "stack", [(0.0, 0.0), (4.0, -2.5)])
    other = cv2.GaussianBlur(np.random.default_rng(99).uniform(0, 255, (300, 400)).astype(np.float32), (0, 0), 2.0)
    cv2.imwrite(str(tmp_path / "stack" / "unrelated.png"), cv2.normalize(other, None, 0, 255, cv2.NORM_MINMAX))
    dock.tabs.setCurrentIndex(1)
    dock.stack_folder_widget.setFilePath(str(tmp_path / "stack"))
    dock.reference_combo.setCurrentText("frame_0.png")
    assert dock.align_stack() is not None
    assert wait_for(lambda: not dock.is_running(), 300), dock.log.toPlainText()
    log = dock.log.toPlainText()
    assert "warning: unrelated.png rejected: no consistent matches" in log, log
    warnings = qgis_iface.messageBar().get_messages(1)  # Qgis.Warning, not a success
    assert any("1 images aligned" in w and "1 rejected" in w and "AlignKit log" in w for w in warnings), warnings
    assert qgis_iface.messageBar().get_messages(2) == [] and qgis_iface.messageBar().get_messages(3) == []


@pytest.mark.slow
def test_align_can_write_a_copy_in_the_project_crs(dock, survey, tmp_path, qgis_new_project):
    images, _ = survey
    QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    dock.set_target_crs("EPSG:32632")
    assert not dock.export_check.isHidden()
    dock.export_check.setChecked(True)
    _start_alignment(dock, images, tmp_path / "survey_alignkit.gpkg")
    assert wait_for(lambda: not dock.is_running(), 600), dock.log.toPlainText()
    copy = tmp_path / "survey_alignkit_EPSG3857.gpkg"
    assert copy.exists() and dock.last_result["gpkg"] == str(copy)
    original = QgsVectorLayer(f"{tmp_path / 'survey_alignkit.gpkg'}|layername=cameras", "c", "ogr")
    assert original.crs().authid() == "EPSG:32632"
    group = QgsProject.instance().layerTreeRoot().findGroup(images.parent.name)
    layers = {n.name(): n.layer() for n in group.findLayers()}
    assert all(layer.crs().authid() == "EPSG:3857" for layer in layers.values())
    assert all(layer.source().startswith(str(copy)) for layer in layers.values())
    assert layers["cameras"].featureCount() == original.featureCount()


def test_warnings_of_a_finished_run_reach_the_log_and_the_message_bar(dock, tmp_path, qgis_iface):
    """A run that succeeds with warnings (e.g. not georeferenced, focal held at EXIF) must not look clean."""
    from types import SimpleNamespace

    from alignkit.ui.task import CoreTask

    gpkg = fx.write_result(tmp_path / "photos_alignkit.gpkg", image_folder=str(tmp_path / "photos"))
    warning = "FC300S: the photos do not determine the focal length; it is held at the EXIF value"
    summary = {"registered": 5, "images": 6, "points": fx.N_POINTS, "mean_reproj_px": 0.5, "warnings": [warning]}
    task = CoreTask("AlignKit: fake run", lambda progress, is_canceled: {
        "gpkg": str(gpkg), "summary": summary, "report": "", "output": str(gpkg)}, dock._align_done)
    task.config = SimpleNamespace(images=str(tmp_path / "photos"), output=str(gpkg), workspace="")
    assert dock._start(task)
    assert wait_for(lambda: not dock.is_running(), 60)
    assert warning in dock.log.toPlainText()
    warnings = qgis_iface.messageBar().get_messages(1)  # Qgis.Warning
    assert len(warnings) == 1 and "5 of 6 photos registered" in warnings[0] and "1 warning" in warnings[0]
    assert qgis_iface.messageBar().get_messages(2) == [] and qgis_iface.messageBar().get_messages(3) == []


def test_a_failing_run_reports_the_error_and_loads_nothing(dock, tmp_path, qgis_iface):
    _pipeline_available()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("not a photo")
    dock.set_folder(photos)
    assert dock.align() is not None
    assert wait_for(lambda: not dock.is_running(), 120)
    errors = qgis_iface.messageBar().get_messages(2)
    assert len(errors) == 1 and "Alignment failed" in errors[0] and str(photos) in errors[0]
    assert QgsProject.instance().mapLayers() == {}
    assert dock.align_button.isEnabled()


# ----------------------------------------------------------------------------- altitude reference, executor
def test_advanced_offers_the_altitude_reference_and_the_executor(dock, tmp_path):
    from alignkit.core.config import AlignConfig
    from alignkit.core.geo import ALTITUDE_REFERENCES

    defaults = AlignConfig()
    combo = dock.altitude_combo
    assert [combo.itemText(i) for i in range(combo.count())] == list(ALTITUDE_REFERENCES)
    assert combo.currentText() == defaults.altitude_reference == "egm96"
    tips = [combo.itemData(i, 3) for i in range(combo.count())]  # 3: Qt.ToolTipRole
    assert all(tip and len(tip) > 30 for tip in tips) and len(set(tips)) == len(tips)
    assert "mean sea level" in tips[0] and "DJI" in tips[0] and "ellipsoid" in tips[1]
    assert not dock.offset_spin.isEnabled() and dock.offset_spin.value() == defaults.altitude_offset_m
    combo.setCurrentText("offset")
    assert dock.offset_spin.isEnabled()
    combo.setCurrentText("ellipsoidal")
    assert not dock.offset_spin.isEnabled()
    assert dock.executor_edit.text() == defaults.executor == ""
    assert dock.executor_edit.placeholderText() == "local processes"
    assert "tcp://host:8786" in dock.executor_edit.toolTip() and "shared storage" in dock.executor_edit.toolTip()
    dock.executor_edit.setText("tcp://10.0.0.5:8786")
    assert not dock.workers_spin.isEnabled()  # the cluster's workers do the work

    photos = tmp_path / "photos"
    photos.mkdir()
    dock.set_folder(photos)
    combo.setCurrentText("offset")
    dock.offset_spin.setValue(31.25)
    config = dock.current_config()
    assert (config.altitude_reference, config.altitude_offset_m) == ("offset", 31.25)
    assert config.executor == "tcp://10.0.0.5:8786"
    combo.setCurrentText("egm2008")  # the offset only means something with "offset"
    assert (dock.current_config().altitude_reference, dock.current_config().altitude_offset_m) == ("egm2008", 0.0)
    dock.executor_edit.setText("http://10.0.0.5/dask")
    with pytest.raises(ValueError, match="not a Dask scheduler address"):
        dock.current_config()


def test_the_run_gets_the_options_and_each_folder_keeps_its_own(dock, qgis_iface, tmp_path, monkeypatch):
    import alignkit.ui.dock as dock_module

    gpkg = fx.write_result(tmp_path / "result.gpkg", image_folder=str(tmp_path / "photos"))
    runs = []

    def fake_align(config, export_crs, progress, is_canceled):  # what the task runs, without the pipeline
        runs.append(config)
        return {"gpkg": str(gpkg), "summary": {}, "report": "", "output": str(gpkg)}

    monkeypatch.setattr(dock_module, "align_photos", fake_align)
    flight_a, flight_b = tmp_path / "a" / "images", tmp_path / "b" / "images"
    for folder in (flight_a, flight_b):
        folder.mkdir(parents=True)

    def align(folder):
        dock.set_folder(folder)
        dock.set_output(folder.parent / "out.gpkg")
        assert dock.align() is not None
        assert wait_for(lambda: not dock.is_running(), 60), dock.log.toPlainText()
        return runs[-1]

    dock.set_folder(flight_a)
    dock.preset_combo.setCurrentText("fast")
    dock.altitude_combo.setCurrentText("ellipsoidal")
    dock.executor_edit.setText("tcp://cluster:8786")
    dock.focal_spin.setValue(3666.7)
    config = align(flight_a)
    assert (config.altitude_reference, config.executor, config.focal_px) == ("ellipsoidal", "tcp://cluster:8786",
                                                                             3666.7)
    assert config.max_image_size == 1600  # the preset's
    dock.set_folder(flight_b)  # never aligned: keeps what is set
    assert dock.altitude_combo.currentText() == "ellipsoidal"
    dock.preset_combo.setCurrentText("accurate")
    dock.altitude_combo.setCurrentText("offset")
    dock.offset_spin.setValue(-12.5)
    dock.executor_edit.setText("")
    dock.focal_spin.setValue(0.0)
    config = align(flight_b)
    assert (config.altitude_reference, config.altitude_offset_m, config.executor) == ("offset", -12.5, "")

    dock.set_folder(flight_a)
    assert dock.preset_combo.currentText() == "fast" and dock.size_spin.value() == 1600
    assert dock.altitude_combo.currentText() == "ellipsoidal" and not dock.offset_spin.isEnabled()
    assert dock.executor_edit.text() == "tcp://cluster:8786" and dock.focal_spin.value() == 3666.7
    dock.set_folder(flight_b)
    assert dock.altitude_combo.currentText() == "offset" and dock.offset_spin.isEnabled()
    assert dock.offset_spin.value() == -12.5 and dock.executor_edit.text() == "" and dock.workers_spin.isEnabled()
    QgsSettings().setValue("alignkit/preset", "fast")  # the global preset yields to the folder's own
    again = AlignKitDock(qgis_iface)
    try:
        assert again.folder() == str(flight_b)
        assert again.preset_combo.currentText() == "accurate" and again.size_spin.value() == 3200
        assert again.current_config().altitude_reference == "offset"
        assert again.current_config().altitude_offset_m == -12.5
    finally:
        again.shutdown()
        again.deleteLater()
        QgsSettings().remove("alignkit/preset")


def test_an_unreachable_executor_is_a_readable_error_not_a_traceback(dock, survey, tmp_path, qgis_iface,
                                                                       monkeypatch):
    images, _ = survey
    pushed = []
    bar = qgis_iface.messageBar()
    original = bar.pushMessage
    monkeypatch.setattr(bar, "pushMessage", lambda *args, **kw: (pushed.append(args), original(*args, **kw)))
    dock.executor_edit.setText("tcp://127.0.0.1:1")  # nothing listens on port 1
    _start_alignment(dock, images, tmp_path / "survey_alignkit.gpkg")
    assert wait_for(lambda: not dock.is_running(), 120)
    [error] = bar.get_messages(2)
    assert "Alignment failed: EXECUTOR tcp://127.0.0.1:1:" in error, error
    # The scheduler out of reach, or (without Dask installed) what to install: either says what to do.
    assert "cannot reach the Dask scheduler" in error or "needs the 'distributed' package" in error, error
    assert "or leave EXECUTOR empty" in error
    assert pushed and not any("Traceback" in str(arg) for args in pushed for arg in args)  # no details button
    assert "Traceback" not in dock.log.toPlainText()
    assert QgsProject.instance().mapLayers() == {} and not (tmp_path / "survey_alignkit.gpkg").exists()
    assert dock.align_button.isEnabled()
