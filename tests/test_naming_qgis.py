"""Outputs and layer groups are named after the survey and keyed by the output path (issue 14, item 5)."""
import json

import pytest
from qgis.core import QgsProject, QgsSettings

from alignkit.tests import result_fixture as fx
from alignkit.ui import layers as layer_loader
from alignkit.ui.dock import AlignKitDock
from alignkit.ui.naming import (
    GROUP_OUTPUT_KEY,
    default_output_for,
    group_name_for,
    load_result_group,
    survey_name,
)

pytestmark = pytest.mark.qgis


def test_survey_name_is_the_parent_of_an_images_folder(tmp_path):
    assert survey_name("/a/flight2/images") == "flight2"
    assert survey_name("/a/flight2/Photos/") == "flight2"
    assert survey_name("/a/brighton_beach") == "brighton_beach"
    assert survey_name(tmp_path / "site" / "DCIM") == "site"


def _result(folder, images):
    """A finished result in `folder` made from the photos in `images` (GeoPackage and summary)."""
    folder.mkdir(parents=True, exist_ok=True)
    gpkg = fx.write_result(folder / f"{survey_name(images)}_alignkit.gpkg", image_folder=str(images))
    summary = folder / f"{survey_name(images)}_alignkit_summary.json"
    data = json.loads(summary.read_text())
    data["config"]["images"] = str(images)
    summary.write_text(json.dumps(data))
    return gpkg


# Storing styles into a GeoPackage that QGIS has opened before blocks (QGIS's OGR connection pool
# keeps it open; issue 14 item 1, the layer loader's): these tests are about names, not styles.
KEEP = {"store_styles": False}


def test_two_flights_named_alike_keep_both_results(tmp_path, qgis_new_project):
    a, b = tmp_path / "a" / "site" / "images", tmp_path / "b" / "site" / "images"
    gpkg_a = _result(a.parent, a)
    gpkg_b = _result(b.parent, b)
    assert gpkg_a != gpkg_b
    group_a, _ = load_result_group(gpkg_a, gpkg_a, survey_name(a), layer_loader.RESULT_STYLES, str(a), **KEEP)
    group_b, _ = load_result_group(gpkg_b, gpkg_b, survey_name(b), layer_loader.RESULT_STYLES, str(b), **KEEP)
    root = QgsProject.instance().layerTreeRoot()
    assert [g.name() for g in root.findGroups()] == ["site (2)", "site"]
    assert len(QgsProject.instance().mapLayers()) == 8  # both results' four layers
    assert group_a.customProperty(GROUP_OUTPUT_KEY) == str(gpkg_a)
    # Aligning the first flight again replaces its own group, and only it.
    again, _ = load_result_group(gpkg_a, gpkg_a, survey_name(a), layer_loader.RESULT_STYLES, str(a), **KEEP)
    assert again.name() == "site" and sorted(g.name() for g in root.findGroups()) == ["site", "site (2)"]
    assert len(QgsProject.instance().mapLayers()) == 8
    assert root.findGroup("site (2)").customProperty(GROUP_OUTPUT_KEY) == str(gpkg_b)
    # a group of the user's with the survey's name is never taken over
    root.addGroup("mine")
    assert group_name_for(tmp_path / "c.gpkg", "mine") == "mine (2)"
    assert group_b.name() == "site (2)"


def test_flights_in_one_project_home_get_their_own_output(tmp_path):
    home = tmp_path / "project"
    a, b = tmp_path / "a" / "site" / "images", tmp_path / "b" / "site" / "images"
    for folder in (a, b):
        folder.mkdir(parents=True)
    first = default_output_for(a, str(home))
    assert first == str(home / "site_alignkit.gpkg")
    home.mkdir()
    fx.write_result(home / "site_alignkit.gpkg", image_folder=str(a))
    summary = home / "site_alignkit_summary.json"
    data = json.loads(summary.read_text())
    data["config"]["images"] = str(a)
    summary.write_text(json.dumps(data))
    assert default_output_for(a, str(home)) == first  # the same flight again: its own output, resumable
    assert default_output_for(b, str(home)) == str(home / "site_2_alignkit.gpkg")  # never overwrites a


def test_the_dock_remembers_each_folders_output(qgis_iface, qgis_new_project, tmp_path):
    import time

    from qgis.core import QgsApplication

    a, b = tmp_path / "f1" / "images", tmp_path / "f2" / "images"
    for folder in (a, b):
        folder.mkdir(parents=True)
    chosen = tmp_path / "elsewhere" / "mine.gpkg"
    QgsSettings().remove("alignkit/last_folder")
    dock = AlignKitDock(qgis_iface)
    try:
        dock.set_folder(a)
        assert dock.output_path() == str(tmp_path / "f1" / "f1_alignkit.gpkg")
        dock.set_output(chosen)
        assert dock.align() is not None  # an empty folder: the run fails at once, the choice is kept
        deadline = time.monotonic() + 60
        while dock.is_running() and time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.02)
    finally:
        dock.shutdown()
        dock.deleteLater()
    dock = AlignKitDock(qgis_iface)  # a later session
    try:
        dock.set_folder(b)
        assert dock.output_path() == str(tmp_path / "f2" / "f2_alignkit.gpkg")
        dock.set_folder(a)
        assert dock.output_path() == str(chosen)
        dock.set_folder(b)
        assert dock.output_path() == str(tmp_path / "f2" / "f2_alignkit.gpkg")
    finally:
        dock.shutdown()
        dock.deleteLater()
