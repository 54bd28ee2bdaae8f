"""Styles stored in the GeoPackage without ever asking, and layers that draw (issue 14.1, 14.6, 15.1)."""
import os

import pytest
from qgis.core import (
    QgsMapRendererParallelJob,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRuleBasedRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

from alignkit.core.gpkg import Style, read_layer_styles, write_layer_styles
from alignkit.tests import result_fixture as fx
from alignkit.ui import layers as layer_loader

pytestmark = pytest.mark.qgis

COUNTS = {"cameras": 6, "sparse_points": fx.N_POINTS, "pairs": 4, "footprints": 5}
WHITE = QColor(255, 255, 255).rgb()


def drawn_pixels(layers, parallel=False, size=120):
    """How many pixels differ from the white background when `layers` are rendered over their extent."""
    settings = QgsMapSettings()
    settings.setLayers(list(layers))
    settings.setDestinationCrs(layers[0].crs())
    extent = layers[0].extent()
    for layer in layers[1:]:
        extent.combineExtentWith(layer.extent())
    settings.setExtent(extent.buffered(5.0))
    settings.setOutputSize(QSize(size, size))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = (QgsMapRendererParallelJob if parallel else QgsMapRendererSequentialJob)(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    return sum(image.pixel(x, y) != WHITE for x in range(size) for y in range(size))


@pytest.fixture
def never_through_qgis(monkeypatch):
    """saveStyleToDatabase is what asks "overwrite?" in a modal dialog: it must not be called at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("QgsVectorLayer.saveStyleToDatabase was called")

    monkeypatch.setattr(QgsVectorLayer, "saveStyleToDatabase", refuse)


def test_layers_loaded_into_an_empty_project_have_their_features_and_draw(tmp_path, qgis_new_project,
                                                                          never_through_qgis):
    gpkg = fx.write_result(tmp_path / "photos_alignkit.gpkg", image_folder=str(tmp_path / "photos"))
    assert QgsProject.instance().mapLayers() == {}
    group, layers = layer_loader.load_geopackage(gpkg, "photos", store_styles=True)
    for name, layer in layers.items():
        assert layer.featureCount() == COUNTS[name]
        assert len(list(layer.getFeatures())) == COUNTS[name], name  # the attribute table's rows
        assert drawn_pixels([layer]) > 20, f"{name} draws nothing"
        assert drawn_pixels([layer], parallel=True) > 20, f"{name} draws nothing in a parallel render"
    assert drawn_pixels([layers[n] for n in ("cameras", "sparse_points", "footprints")], parallel=True) > 200
    assert {(t, n, d) for t, n, d, _ in read_layer_styles(gpkg)} == {(t, "alignkit", True) for t in COUNTS}
    # The priors' pair of layers, styled and stored the same way, into a second group.
    _, priors = layer_loader.load_geopackage(gpkg, "photos priors", layer_loader.PRIORS_STYLES, store_styles=True)
    for name, layer in priors.items():
        assert len(list(layer.getFeatures())) == COUNTS[name] and drawn_pixels([layer]) > 20


def test_storing_styles_over_a_geopackage_that_holds_them_replaces_them_without_asking(tmp_path, qgis_new_project,
                                                                                      never_through_qgis):
    gpkg = fx.write_result(tmp_path / "r.gpkg", image_folder=str(tmp_path / "photos"))
    # A user's own style, the default so far, and an earlier AlignKit style that must be replaced.
    write_layer_styles(gpkg, [Style("cameras", "<qgis/>", name="mine", description="the user's"),
                              Style("sparse_points", "<qgis/>", name="alignkit", description="stale")])
    for _ in range(2):  # a rerun over a file that already holds every style
        layers = layer_loader.styled_layers(gpkg, layer_loader.RESULT_STYLES, str(tmp_path / "photos"))
        assert all(len(list(layer.getFeatures())) == COUNTS[name] for name, layer in layers.items())
        layers.clear()
    rows = read_layer_styles(gpkg)
    assert sorted((t, n, d) for t, n, d, _ in rows) == sorted(
        [(t, "alignkit", True) for t in COUNTS] + [("cameras", "mine", False)])
    assert all("<!DOCTYPE qgis" in qml for t, n, _, qml in rows if n == "alignkit")
    # What another project (or QGIS after a restart) sees: the stored default, with map tip and action.
    fresh = QgsVectorLayer(f"{gpkg}|layername=cameras", "cameras", "ogr")
    assert isinstance(fresh.renderer(), QgsRuleBasedRenderer) and "<img" in fresh.mapTipTemplate()
    del fresh, layers
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("r.gpkg-")] == []  # no -wal/-shm left


def test_a_read_only_geopackage_still_loads_styled(tmp_path, qgis_new_project, monkeypatch):
    gpkg = fx.write_result(tmp_path / "r.gpkg")

    def read_only(path, styles):
        raise ValueError(f"{path}: attempt to write a readonly database")

    monkeypatch.setattr(layer_loader, "write_layer_styles", read_only)
    _, layers = layer_loader.load_geopackage(gpkg, "photos")
    assert isinstance(layers["cameras"].renderer(), QgsRuleBasedRenderer)
    assert drawn_pixels([layers["footprints"]]) > 20


def test_open_photo_is_offered_on_identify_for_loaded_and_reopened_layers(tmp_path, qgis_new_project):
    photos = tmp_path / "photos"
    gpkg = fx.write_result(tmp_path / "r.gpkg", image_folder=str(photos))
    _, layers = layer_loader.load_geopackage(gpkg, "photos", image_folder=str(photos))
    reopened = QgsVectorLayer(f"{gpkg}|layername=cameras", "cameras", "ogr")  # from the stored style
    for layer in (layers["cameras"], reopened):
        for scope in ("Feature", "Canvas"):  # Identify results / attribute table, and the map tool
            assert [a.name() for a in layer.actions().actions(scope)] == ["Open photo"], scope
        action = layer.actions().actions("Feature")[0]
        assert action.type() == action.OpenUrl and "IMG_0001.JPG" not in action.command()
        assert os.path.basename(str(photos)) in action.command() or '"path"' in action.command()


def test_loading_a_rerun_that_replaced_the_open_geopackage_shows_the_new_file(tmp_path, qgis_new_project):
    """The dock's rerun: the project shows r.gpkg (QGIS holds it, in SQLite's WAL mode) while the
    pipeline replaces the file (atomic rename); loading the new result shows the new file's features."""
    import sqlite3

    from osgeo import ogr

    gpkg = fx.write_result(tmp_path / "r.gpkg")
    _, old = layer_loader.load_geopackage(gpkg, "photos")
    assert len(list(old["sparse_points"].getFeatures())) == fx.N_POINTS
    new = fx.write_result(tmp_path / "new.gpkg", summary=False)
    ds = ogr.Open(str(new), update=1)
    points = ds.GetLayerByName("sparse_points")
    for fid in [f.GetFID() for f in points][:10]:
        points.DeleteFeature(fid)
    ds = points = None
    os.replace(new, gpkg)  # as workspace.atomic_output does
    _, layers = layer_loader.load_geopackage(gpkg, "photos")
    assert len(list(layers["sparse_points"].getFeatures())) == fx.N_POINTS - 10
    assert layers["sparse_points"].featureCount() == fx.N_POINTS - 10
    assert drawn_pixels([layers["sparse_points"]]) > 20
    QgsProject.instance().clear()
    del layers, old
    con = sqlite3.connect(gpkg)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM sparse_points").fetchone() == (fx.N_POINTS - 10,)
    finally:
        con.close()
