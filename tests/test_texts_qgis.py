"""Texts QGIS shows as rich text render whole (`<name>`, `<4.11` are not tags); PRESET by name or index."""
import pytest
from qgis.core import Qgis, QgsProcessingContext
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtGui import QTextDocument
from qgis.PyQt.QtWidgets import QTextBrowser

from alignkit.core.config import DEFAULT_PRESET, PRESETS
from alignkit.core.dependencies import REQUIRED, install_command, install_hint
from alignkit.plugin import missing_message

pytestmark = pytest.mark.qgis


def rendered(rich_text):
    doc = QTextDocument()
    doc.setHtml(rich_text)
    return doc.toPlainText()


def test_the_missing_packages_message_shows_every_package_and_the_command(qgis_app):
    missing = list(REQUIRED.values())
    hint = install_hint(missing, platform="linux", python="/usr/bin/python3", pep668=True)
    bar = QgsMessageBar()  # what QGIS shows: the title in bold, then the text as rich text
    bar.pushMessage("AlignKit", missing_message(missing), level=Qgis.Warning, duration=0)
    shown = bar.currentItem().findChild(QTextBrowser).toPlainText()
    bar.clearWidgets()
    # the escaped text renders as the plain hint, none of it swallowed as a tag
    text = install_hint(missing)
    assert shown.replace("\n", " ").endswith(text) and "opencv-python-headless<4.11" in shown
    assert 'install --user' in shown and '"numpy<2" "opencv-python-headless<4.11" "scipy" "pyproj" "exif"' in shown
    assert rendered(missing_message(missing)) == text
    # Debian 12's QGIS Python is externally managed (PEP 668): a plain --user install is refused there
    assert ('/usr/bin/python3 -m pip install --user --break-system-packages "numpy<2" '
            '"opencv-python-headless<4.11"') in hint
    assert "break-system" not in install_command(missing, platform="darwin", python="/x/python3", pep668=False)
    windows = install_hint(missing, platform="win32")
    assert "OSGeo4W Shell" in windows and 'python -m pip install --user "numpy<2"' in windows


@pytest.mark.parametrize("alg_id", ["photopriors", "alignphotos", "alignstack"])
def test_processing_help_renders_completely_with_defaults(alignkit_provider, alg_id):
    alg = alignkit_provider.algorithm(alg_id)
    help_text = rendered(alg.shortHelpString())
    assert help_text.strip()
    for p in alg.parameterDefinitions():
        if alg_id != "alignstack":  # the stack's help is not ours to list its parameters
            assert p.name() in help_text and p.description() in help_text
    if alg_id == "alignphotos":
        for name in ("<name>_summary.json", "<name>_report.html", "<name>_sparse.ply", "<name>_cameras.csv",
                     "<name>_bundle/", "<name>_colmap/"):
            assert name in help_text
        assert f"PRESET: Quality preset (one of fast, balanced, accurate; default {DEFAULT_PRESET})" in help_text
        assert "PAIR_NEIGHBORS: GPS neighbours matched per photo (default 8)" in help_text
        assert "REPORT: Quality report (HTML)" in help_text and "PLY: Sparse point cloud (PLY)" in help_text


def test_preset_takes_names_and_indices_with_one_default(alignkit_provider, tmp_path):
    alg = alignkit_provider.algorithm("alignphotos")
    context = QgsProcessingContext()
    base = {"IMAGES": str(tmp_path), "OUTPUT": str(tmp_path / "r.gpkg")}
    names = list(PRESETS)
    for value, expected in [("balanced", "balanced"), ("FAST", "fast"), (2, "accurate"), ("0", "fast"),
                            (None, DEFAULT_PRESET)]:
        params = dict(base, PRESET=value) if value is not None else dict(base)
        ok, message = alg.checkParameterValues(params, context)
        assert ok, (value, message)
        config = alg.config_from_parameters(params, context)
        assert (config.max_image_size, config.max_features) == tuple(PRESETS[expected].values()), value
    ok, message = alg.checkParameterValues(dict(base, PRESET="best"), context)
    assert not ok and "'best' is not a quality preset" in message and ", ".join(names) in message
    assert alg.parameterDefinition("PRESET").defaultValue() == names.index(DEFAULT_PRESET)
    outputs = {o.name() for o in alg.outputDefinitions()}
    assert {"SUMMARY", "REPORT", "PLY", "CAMERAS_CSV", "BUNDLE", "COLMAP", "REGISTERED"} <= outputs


def test_the_dock_defaults_to_the_same_preset(qgis_iface):
    from qgis.core import QgsSettings

    from alignkit.ui.dock import AlignKitDock

    for key in ("alignkit/preset", "alignkit/last_folder", "alignkit/options"):  # a first start: nothing remembered
        QgsSettings().remove(key)
    dock = AlignKitDock(qgis_iface)
    try:
        assert dock.preset_combo.currentText() == DEFAULT_PRESET
        assert dock.size_spin.value() == PRESETS[DEFAULT_PRESET]["max_image_size"]
    finally:
        dock.shutdown()
        dock.deleteLater()


def test_dock_messages_are_escaped_and_the_result_is_the_verdict_line(qgis_iface):
    from alignkit.ui.dock import AlignKitDock, result_message

    dock = AlignKitDock(qgis_iface)
    try:
        text = "install opencv-python-headless<4.11 and read <name>_summary.json"
        dock._notify(text, Qgis.Warning)
        [shown] = qgis_iface.messageBar().get_messages(Qgis.Warning)[-1:]
        assert rendered(shown).endswith(text) and "<4.11" not in shown  # escaped, renders whole
    finally:
        dock.shutdown()
        dock.deleteLater()
    verdict = [{"item": "Images registered", "ok": True}, {"item": "Camera optimisation", "ok": False}]
    line = result_message({"verdict": verdict, "registered": 18, "images": 18, "points": 5376,
                           "mean_reproj_px": 0.676}, 74.8)
    assert line == ("1 of 2 quality checks need attention: camera optimisation: 18 of 18 photos registered, "
                    "5376 points, 0.68 px mean reprojection error, in 75 s")


def test_result_layers_show_field_aliases_with_units(tmp_path, qgis_new_project):
    from alignkit.tests import result_fixture as fx
    from alignkit.ui import layers as layer_loader

    gpkg = fx.write_result(tmp_path / "site_alignkit.gpkg")
    layers = layer_loader.styled_layers(gpkg, layer_loader.RESULT_STYLES, str(tmp_path), store_styles=False)

    def alias(layer, field):
        return layer.attributeAlias(layer.fields().indexOf(field))

    assert alias(layers["cameras"], "gps_dx") == "GPS offset east (m, adjusted minus EXIF)"
    assert alias(layers["cameras"], "pitch") == "Pitch (deg, -90 = nadir)"
    assert alias(layers["sparse_points"], "reproj_px") == "Reprojection error (px)"
    assert alias(layers["footprints"], "ground_z").startswith("Ground height (m")
    assert alias(layers["pairs"], "inliers") == "Verified matches"
    assert layers["cameras"].renderer().type() == "RuleRenderer"  # the symbology still applies


def test_priors_layers_show_field_aliases(tmp_path, qgis_new_project):
    from alignkit.core import priors
    from alignkit.core.gpkg import write_geopackage
    from alignkit.ui import layers as layer_loader

    gpkg = tmp_path / "p.gpkg"
    write_geopackage(gpkg, "EPSG:32633", [priors.Layer("cameras", "PointZ", priors.CAMERA_FIELDS, []),
                                          priors.Layer("footprints", "Polygon", priors.FOOTPRINT_FIELDS, [])])
    layers = layer_loader.styled_layers(gpkg, layer_loader.PRIORS_STYLES, str(tmp_path), store_styles=False)
    cams, fps = layers["cameras"], layers["footprints"]
    assert cams.attributeAlias(cams.fields().indexOf("rel_alt")) == "Height above take-off (m, DJI)"
    assert fps.attributeAlias(fps.fields().indexOf("gsd_cm")) == "Ground sampling distance (cm/px)"
