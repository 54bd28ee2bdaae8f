"""The plugin entry: initGui registers the provider, action and dock; unload leaves nothing behind,
even while a background task is running."""
import time

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QAction

from alignkit.ui.dock import AlignKitDock

pytestmark = pytest.mark.qgis


def _settle(seconds=0.3):
    """Run queued signals and deferred deletions, as QGIS's event loop would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        time.sleep(0.01)


def _wait(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not condition():
        QgsApplication.processEvents()
        time.sleep(0.02)
    return condition()


@pytest.fixture
def photos(tmp_path):
    from alignkit.core.synthetic import SurveySpec, generate_survey

    return generate_survey(tmp_path / "survey", SurveySpec(rows=2, cols=3, width=320, height=240)) / "images"


def test_unload_removes_actions_dock_provider_and_task(qgis_iface, qgis_new_project, photos, tmp_path):
    pytest.importorskip("alignkit.processing.alg_alignstack", reason="alignstack algorithm not written yet")
    from alignkit.plugin import AlignKitPlugin

    registry = QgsApplication.processingRegistry()
    main = qgis_iface.mainWindow()
    plugin = AlignKitPlugin(qgis_iface)
    plugin.initGui()
    provider = registry.providerById("alignkit")
    assert provider is not None
    assert {"alignkit:photopriors", "alignkit:alignphotos", "alignkit:alignstack"} <= {
        a.id() for a in provider.algorithms()
    }
    assert len(main.findChildren(QAction, "alignkitDockAction")) == 1

    plugin.action.trigger()  # the toolbar button opens the dock
    dock = plugin.dock
    assert isinstance(dock, AlignKitDock) and main.findChildren(AlignKitDock)
    dock.set_folder(photos)
    dock.set_output(tmp_path / "photos_alignkit.gpkg")
    task = dock.align()
    assert task is not None
    assert _wait(lambda: task.progress() > 0)  # the alignment is under way
    assert dock.is_running()

    started = time.monotonic()
    plugin.unload()  # while the alignment runs: the dock cancels the task and waits for it
    assert time.monotonic() - started < 20  # cancellation is honoured promptly
    _settle()
    assert registry.providerById("alignkit") is None
    assert registry.algorithmById("alignkit:alignphotos") is None
    assert plugin.dock is None and plugin.action is None
    assert main.findChildren(AlignKitDock) == []
    assert main.findChildren(QAction, "alignkitDockAction") == []
    assert QgsApplication.taskManager().countActiveTasks() == 0
    # Nothing was loaded after the dock went away (finished() no longer calls back into it).
    from qgis.core import QgsProject

    assert QgsProject.instance().mapLayers() == {}
    assert not (tmp_path / "photos_alignkit.gpkg").exists()


def test_initprocessing_alone_registers_the_provider_without_gui(qgis_app):
    """qgis_process calls initProcessing with iface None: no action, no dock, provider present."""
    pytest.importorskip("alignkit.processing.alg_alignstack", reason="alignstack algorithm not written yet")
    from alignkit.plugin import AlignKitPlugin

    plugin = AlignKitPlugin(None)
    plugin.initGui()
    try:
        assert QgsApplication.processingRegistry().providerById("alignkit") is not None
        assert plugin.action is None and plugin.dock is None
    finally:
        plugin.unload()
    assert QgsApplication.processingRegistry().providerById("alignkit") is None
