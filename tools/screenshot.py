"""`make screenshot`: real QGIS under Xvfb, the plugin's dock running the demo, PNGs into docs/.

    xvfb-run -a python -m alignkit.tools.screenshot --out docs      (what `make screenshot` runs)

Outside QGIS this generates a small synthetic survey (core.synthetic), prepares a throw-away QGIS
profile with the plugin linked and enabled, and starts the `qgis` application with `--code`.
Inside QGIS, `drive()` opens the dock from the plugin's toolbar action, runs Preview and Align
through the dock (the same buttons and background tasks a user gets), waits for the task, zooms
to the result and saves the main window as PNG. Without a DISPLAY it re-runs itself under xvfb-run.

    python -m alignkit.tools.screenshot --images .../brighton_beach/images --out docs

does the same on real photos (balanced preset, one worker): the dock after Align with its verdict line
and the layers, and the report's first screen (verdict, GSD and coverage, the overlap map).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW_SIZE = (1600, 1000)
# The demo survey: small enough for a couple of minutes on a laptop, big enough to look like a survey.
DEMO_SPEC = {"rows": 3, "cols": 5, "width": 800, "height": 600, "gps_noise_h_m": 0.5, "gps_noise_v_m": 1.0}


# ------------------------------------------------------------------------ launcher (outside QGIS)
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for the PNGs")
    parser.add_argument("--work", default="out/screenshot", help="folder for the survey, profile and results")
    parser.add_argument("--timeout", type=int, default=900, help="seconds before QGIS is stopped")
    parser.add_argument("--images", help="a folder of real photos (e.g. brighton_beach/images): align them with "
                                         "the balanced preset and picture the dock and the report's first screen")
    args = parser.parse_args(argv)

    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            sys.exit("no DISPLAY and no xvfb-run: install xvfb (apt install xvfb xauth)")
        cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {WINDOW_SIZE[0]}x{WINDOW_SIZE[1]}x24",
               sys.executable, "-m", "alignkit.tools.screenshot"] + (argv if argv is not None else sys.argv[1:])
        sys.exit(subprocess.call(cmd))

    from alignkit.core.synthetic import SurveySpec, generate_survey

    work = Path(args.work).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.images:
        images = Path(args.images).resolve()
        if not images.is_dir():
            sys.exit(f"{images}: no such folder of photos")
        stem = images.parent.name if images.name == "images" else images.name
    else:
        survey = work / "survey"
        if not (survey / "ground_truth.json").exists():
            print(f"generating the demo survey in {survey}")
            generate_survey(survey, SurveySpec(**DEMO_SPEC))
        images, stem = survey / "images", "survey"
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob(f"{stem}_alignkit*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()

    profile = Path(tempfile.mkdtemp(prefix="alignkit-qgis-profile-"))
    try:
        _prepare_profile(profile)
        job = {"images": str(images), "output": str(results / f"{stem}_alignkit.gpkg"), "real": bool(args.images),
               "stem": stem, "shots": str(out), "status": str(work / "screenshot_status.json"),
               "timeout": args.timeout}
        job_file = work / "screenshot_job.json"
        job_file.write_text(json.dumps(job, indent=1))
        code = work / "screenshot_code.py"
        code.write_text(_CODE.format(pkg=str(ROOT / ".venv" / "pkg"), job=str(job_file),
                                     status=job["status"], timeout_ms=1000 * (args.timeout + 30)))
        Path(job["status"]).unlink(missing_ok=True)
        env = dict(os.environ)
        env.pop("QT_QPA_PLATFORM", None)
        env.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="alignkit-runtime-"))
        site = ROOT / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
        # Worker processes are spawned with the `python3` found on PATH when QGIS embeds Python:
        # make that the project's interpreter (the one with the pinned packages), not another one.
        env["PATH"] = os.pathsep.join([str(ROOT / ".venv" / "bin"), env.get("PATH", "")])
        cmd = ["qgis", "--nologo", "--noversioncheck", "--profiles-path", str(profile), "--code", str(code)]
        print("starting QGIS:", " ".join(cmd))
        try:
            subprocess.run(cmd, env=env, timeout=args.timeout + 60, check=False)
        except subprocess.TimeoutExpired:
            print("QGIS did not finish in time")
        status = json.loads(Path(job["status"]).read_text()) if Path(job["status"]).exists() else {"ok": False}
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    for shot in status.get("shots", []):
        print("wrote", shot)
    if not status.get("ok"):
        sys.exit(f"screenshot run failed: {status.get('error', 'QGIS exited without a status')}")


# Run by QGIS (--code). A watchdog ends QGIS even if a modal dialog blocks the session, and any
# failure lands in the status file instead of a Python error dialog nobody can click under Xvfb.
_CODE = """
import json, sys, traceback
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
QTimer.singleShot({timeout_ms}, lambda: QgsApplication.exit(3))
try:
    sys.path.insert(0, {pkg!r})
    from alignkit.tools.screenshot import drive
    drive({job!r})
except Exception:
    open({status!r}, "w").write(json.dumps({{"ok": False, "error": traceback.format_exc()}}))
    QgsApplication.exit(2)
"""


def _prepare_profile(profile):
    """A fresh QGIS profile with AlignKit linked as a plugin and enabled, and no first-run distractions."""
    default = profile / "profiles" / "default"
    plugins = default / "python" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "alignkit").symlink_to(ROOT)
    (default / "QGIS").mkdir()
    (default / "QGIS" / "QGIS3.ini").write_text(
        "[PythonPlugins]\nalignkit=true\n\n"
        "[qgis]\ncheckVersion=false\nshowTips322=false\nallowVersionCheck=false\n"
        "\n[app]\nprojections\\newProjectCrsBehavior=UseCrsOfFirstLayerAdded\n"
    )


# ------------------------------------------------------------------------ inside QGIS (--code)
def drive(job_file):
    """Run by QGIS at start-up: schedule the scripted session once the main window is up."""
    from qgis.PyQt.QtCore import QTimer

    job = json.loads(Path(job_file).read_text())
    QTimer.singleShot(1500, lambda: _session(job))


def _session(job):
    status = {"ok": False, "shots": []}
    try:
        status["shots"] = _run_real(job) if job.get("real") else _run_demo(job)
        status["ok"] = True
    except Exception as exc:  # noqa: BLE001 (written to the status file for the launcher)
        status["error"] = f"{exc}\n{traceback.format_exc()}"
    Path(job["status"]).write_text(json.dumps(status, indent=1))
    _quit()


def _quit():
    """Leave QGIS the way its File > Exit does: clearing the project at exitQgis() time instead, with
    an active layer set, crashes QGIS 3.22 (its style dock is already gone)."""
    import qgis.utils
    from qgis.core import QgsApplication, QgsProject
    from qgis.PyQt.QtCore import QTimer

    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(5000, lambda: QgsApplication.exit(0))  # in case Exit is refused
    qgis.utils.iface.actionExit().trigger()


def _wait(condition, timeout):
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QgsApplication.processEvents()
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _run_demo(job):
    import qgis.utils
    from qgis.core import QgsCoordinateTransform, QgsProject

    from alignkit.ui.naming import survey_name

    iface = qgis.utils.iface
    window, dock = _open_dock(iface, job)
    dock.preset_combo.setCurrentText("fast")
    shots = []

    dock.preview()
    if not _wait(lambda: not dock.is_running(), 300):
        raise RuntimeError("preview did not finish")
    if dock.last_preview is None:
        raise RuntimeError("preview failed: " + dock.log.toPlainText())
    _zoom_to_group(iface, f"{survey_name(job['images'])} priors", QgsProject, QgsCoordinateTransform)
    shots.append(_grab(window, iface, Path(job["shots"]) / "alignkit_preview.png"))

    dock.align()
    if not _wait(lambda: not dock.is_running(), job["timeout"]):
        dock.cancel()
        raise RuntimeError("alignment did not finish in time")
    if dock.last_result is None:
        raise RuntimeError("alignment failed: " + dock.log.toPlainText())
    root = QgsProject.instance().layerTreeRoot()
    priors = root.findGroup(f"{survey_name(job['images'])} priors")
    if priors is not None:
        priors.setItemVisibilityChecked(False)  # the result is the subject of this picture
        priors.setExpanded(False)
    view = iface.layerTreeView()
    if priors is not None:
        view.setExpanded(view.node2index(priors), False)
    bar = iface.messageBar()
    for item in list(bar.items()):  # QGIS's own "Task complete" note hides AlignKit's report link
        if "Task complete" in (item.title() or ""):
            bar.popWidget(item)
    _zoom_to_group(iface, survey_name(job["images"]), QgsProject, QgsCoordinateTransform)
    shots.append(_grab(window, iface, Path(job["shots"]) / "alignkit_alignment.png"))
    tip = _show_camera_map_tip(iface, result_group=root.findGroup(survey_name(job["images"])))
    shots.append(_grab(window, iface, Path(job["shots"]) / "alignkit_photo_maptip.png"))
    tip.clear(iface.mapCanvas())
    return shots


def _open_dock(iface, job):
    """The main window at its picture size, AlignKit's dock opened from its toolbar action on the job's folder."""
    import qgis.utils
    from qgis.PyQt.QtWidgets import QDockWidget

    window = iface.mainWindow()
    window.showNormal()
    window.resize(*WINDOW_SIZE)
    window.move(0, 0)
    if "alignkit" not in qgis.utils.plugins:  # not auto-started: load it the way the Plugin Manager does
        qgis.utils.loadPlugin("alignkit")
        qgis.utils.startPlugin("alignkit")
    plugin = qgis.utils.plugins["alignkit"]
    for name in ("Browser", "BrowserPanel"):  # more room for the map; Layers stays
        browser = window.findChild(QDockWidget, name)
        if browser is not None:
            browser.hide()
    plugin.action.trigger()
    dock = plugin.dock
    if dock is None:
        raise RuntimeError(f"the AlignKit dock did not open; missing packages: {plugin.missing}")
    dock.setMinimumWidth(430)
    dock.set_folder(job["images"])
    dock.set_output(job["output"])
    return window, dock


def _run_real(job):
    """Real photos: Align with the balanced preset on one worker, then the dock with its verdict line and
    the layers (`<stem>_alignment.png`) and the report's first screen (`<stem>_report.png`)."""
    import qgis.utils
    from qgis.core import QgsCoordinateTransform, QgsProject

    from alignkit.ui.naming import survey_name

    iface = qgis.utils.iface
    window, dock = _open_dock(iface, job)
    dock.preset_combo.setCurrentText("balanced")
    dock.workers_spin.setValue(1)
    dock.align()
    if not _wait(lambda: not dock.is_running(), job["timeout"]):
        dock.cancel()
        raise RuntimeError("alignment did not finish in time")
    if dock.last_result is None:
        raise RuntimeError("alignment failed: " + dock.log.toPlainText())
    bar = iface.messageBar()
    for item in list(bar.items()):  # QGIS's own "Task complete" note hides AlignKit's verdict line
        if "Task complete" in (item.title() or ""):
            bar.popWidget(item)
    _zoom_to_group(iface, survey_name(job["images"]), QgsProject, QgsCoordinateTransform)
    shots = [_grab(window, iface, Path(job["shots"]) / f"alignkit_{job['stem']}_alignment.png")]
    shots.append(_grab_report_first_screen(dock.last_result["output"],
                                           Path(job["shots"]) / f"alignkit_{job['stem']}_report.png"))
    return shots


def _grab_report_first_screen(gpkg, path):
    """The report's verdict, coverage figures and overlap map as Qt's rich text shows them, grabbed to PNG
    (Qt's text engine takes no data: URLs, so the figure goes in as a document resource)."""
    import html as html_mod

    from qgis.PyQt.QtCore import QUrl
    from qgis.PyQt.QtGui import QImage, QTextDocument
    from qgis.PyQt.QtWidgets import QTextBrowser

    from alignkit.core import report

    summary = json.loads(report.summary_path_for(gpkg).read_text(encoding="utf-8"))
    png = Path(path).with_suffix(".coverage.tmp.png")
    report.write_coverage_png(gpkg, png, dpi=90)
    figures = [("Ground sampling distance (median)", f"{report._fmt(summary.get('gsd_cm_median'))} cm/px"),
               ("Area covered by the photos", f"{report._fmt(summary.get('area_covered_m2'), 0)} m²"),
               ("Photos seeing each ground point (median)", report._fmt(summary.get("overlap_median"), 0)),
               ("... under the flight lines (median)", report._fmt(summary.get("overlap_median_flight_area"), 0)),
               ("Covered area seen by fewer than 5 photos", f"{report._fmt(summary.get('area_below_5_photos_percent'), 1)} %")]
    text = (report._HEAD.format(title="AlignKit report")
            + f"<h1>AlignKit alignment report</h1><p class='muted'>{html_mod.escape(Path(gpkg).name)}</p>"
            + report._verdict_html(summary)
            + "<h2>Coverage</h2><table cellspacing='0' cellpadding='3'><tr><td valign='top' style='border: none'>"
            + report._table(["", ""], figures, header=False)
            + "</td><td style='border: none'><img src='coverage.png'/></td></tr></table></body></html>")
    view = QTextBrowser()
    view.document().addResource(QTextDocument.ImageResource, QUrl("coverage.png"), QImage(str(png)))
    view.setHtml(text)
    view.resize(1100, 900)
    view.show()
    _wait(lambda: False, 1.0)
    view.resize(1100, min(1400, int(view.document().size().height()) + 24))
    _wait(lambda: False, 0.5)
    ok = view.grab().save(str(path))
    view.close()
    png.unlink(missing_ok=True)
    if not ok:
        raise RuntimeError(f"could not write {path}")
    return str(path)


def _show_camera_map_tip(iface, result_group):
    """The map tip a user gets by hovering a camera (View > Show Map Tips): name, residuals, photo."""
    from qgis.core import QgsCoordinateTransform, QgsProject
    from qgis.gui import QgsMapTip
    from qgis.PyQt.QtCore import QPoint

    cameras = next(n.layer() for n in result_group.findLayers() if n.name() == "cameras")
    iface.setActiveLayer(cameras)
    canvas = iface.mapCanvas()
    to_canvas = QgsCoordinateTransform(cameras.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance())
    centre = canvas.extent().center()
    # The registered camera nearest the middle of the map: its tip stays inside the window.
    best = min((f for f in cameras.getFeatures() if f["registered"]),
               key=lambda f: to_canvas.transform(f.geometry().asPoint()).distance(centre))
    map_point = to_canvas.transform(best.geometry().asPoint())
    pixel = canvas.getCoordinateTransform().transform(map_point)
    tip = QgsMapTip()
    tip.showMapTip(cameras, map_point, QPoint(int(pixel.x()), int(pixel.y())), canvas)
    return tip


def _zoom_to_group(iface, group_name, QgsProject, QgsCoordinateTransform):  # noqa: N803
    group = QgsProject.instance().layerTreeRoot().findGroup(group_name)
    if group is None:
        raise RuntimeError(f"no layer group {group_name!r} was loaded")
    canvas = iface.mapCanvas()
    extent = None
    for node in group.findLayers():
        layer = node.layer()
        if layer.featureCount() == 0:
            continue
        tr = QgsCoordinateTransform(layer.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance())
        box = tr.transformBoundingBox(layer.extent())
        if extent is None:
            extent = box
        else:
            extent.combineExtentWith(box)
    if extent is not None:
        extent.scale(1.1)
        canvas.setExtent(extent)
    canvas.refresh()


def _grab(window, iface, path):
    canvas = iface.mapCanvas()
    _wait(lambda: False, 1.0)  # let layouts settle and rendering start
    canvas.waitWhileRendering()
    _wait(lambda: False, 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    return str(path)


if __name__ == "__main__":
    main()
