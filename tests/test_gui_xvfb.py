"""The GUI application under a real X server (Xvfb), with cv2 imported BEFORE qgis.

Offscreen tests hide Qt conflicts: a non-headless OpenCV wheel ships its own Qt and xcb plugins,
which break QGIS's GUI only when a real display is used. This starts the plugin's dock in a GUI
QgsApplication in a subprocess under `xvfb-run` and checks it exits cleanly.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    import cv2  # first, on purpose: the order that breaks when OpenCV brings its own Qt
    from qgis.core import QgsApplication
    from qgis.PyQt.QtWidgets import QMainWindow
    from qgis.PyQt.QtGui import QGuiApplication

    app = QgsApplication([], True)  # GUI enabled
    app.initQgis()
    assert QGuiApplication.platformName() == "xcb", QGuiApplication.platformName()
    from alignkit.ui.dock import AlignKitDock

    class Iface:  # the dock only needs a main window and a message bar here
        def __init__(self, window):
            self.window = window
        def mainWindow(self):
            return self.window
        def messageBar(self):
            return None

    window = QMainWindow()
    window.resize(900, 600)
    dock = AlignKitDock(Iface(window))
    window.addDockWidget(2, dock)
    window.show()
    for _ in range(20):
        app.processEvents()
    assert window.isVisible() and dock.isVisible()
    image = window.grab().toImage()
    assert image.width() >= 900 and not image.isNull()
    print("cv2", cv2.__version__, "platform", QGuiApplication.platformName(), "ok")
    dock.shutdown()
    window.close()
    app.exitQgis()
    """
)


def test_gui_application_with_cv2_first_under_xvfb(tmp_path):
    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run is not installed (apt install xvfb xauth)")
    script = tmp_path / "gui_check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)  # the real X server, not offscreen
    env.pop("DISPLAY", None)
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "runtime")
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / ".venv" / "pkg"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, str(script)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "platform xcb ok" in proc.stdout
