"""QGIS glue: registers the Processing provider, the toolbar action and the dock."""
import os
from html import escape

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .core.dependencies import install_hint, missing_packages

PLUGIN_DIR = os.path.dirname(__file__)
MENU = "&AlignKit"


def missing_message(missing):
    """The missing-packages hint as the message bar's rich text: escaped, so `<4.11` stays text."""
    return escape(install_hint(missing), quote=False)


class AlignKitPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None
        self.dock = None
        self.missing = missing_packages()

    # Called by QGIS and by qgis_process (where iface is None), before initGui.
    def initProcessing(self):  # noqa: N802
        if self.missing or self.provider is not None:
            return  # offer no algorithm that would fail
        from .processing.provider import AlignKitProvider

        self.provider = AlignKitProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        icon = QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.svg"))
        self.action = QAction(icon, "AlignKit", self.iface.mainWindow())
        self.action.setObjectName("alignkitDockAction")
        self.action.setToolTip("Align drone photos and image stacks")
        self.action.setCheckable(True)
        self.action.triggered.connect(self.toggle_dock)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)
        if self.missing:
            self.iface.messageBar().pushMessage("AlignKit", missing_message(self.missing), level=Qgis.Warning, duration=0)

    def toggle_dock(self, checked=True):
        if self.missing:
            self.iface.messageBar().pushMessage("AlignKit", missing_message(self.missing), level=Qgis.Critical, duration=0)
            self.action.setChecked(False)
            return
        if self.dock is None:
            from .ui.dock import AlignKitDock

            self.dock = AlignKitDock(self.iface)
            self.dock.visibilityChanged.connect(self.action.setChecked)
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.setVisible(bool(checked))

    def unload(self):
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
