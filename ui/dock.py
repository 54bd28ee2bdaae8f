"""The AlignKit dock: photo alignment and image-stack registration, run as QGIS background tasks.

`iface` is injected (QGIS's own, or pytest-qgis's stub). Long work runs in a QgsTask registered
with QGIS's task manager, so the status-bar progress, the task manager's cancel button and the
dock's Cancel button all act on the same task. Layers are only loaded from finished(), in the
main thread, and only for a complete run.
"""
import html
import os
import time

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMessageLog,
    QgsProject,
    QgsSettings,
)
from qgis.gui import (
    QgsDockWidget,
    QgsFileWidget,
    QgsLayerTreeView,
    QgsProjectionSelectionWidget,
)
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.config import DEFAULT_PRESET, PRESETS, AlignConfig
from ..core.executor import ExecutorError
from . import layers as layer_loader
from .dock_options import SETTINGS_PREFIX, AdvancedOptions, folder_key
from .jobs import align_photos, preview_photos, stack_summary
from .naming import default_output_for, is_inside, load_result_group, survey_name
from .stack_tab import StackTab
from .task import CoreTask

__all__ = ["AlignKitDock", "align_photos", "default_output_for", "is_inside", "preview_photos", "stack_summary",
           "survey_name"]

LOG_TAG = "AlignKit"
LOG_INTERVAL_S = 1.0  # per-image progress messages would flood the short log


def result_message(summary, seconds):
    """The dock's one-line result: the verdict's summary, then the counts."""
    from ..core.verdict import verdict_line

    verdict = summary.get("verdict")
    head = verdict_line(verdict).capitalize() + ": " if verdict else ""
    return (f"{head}{summary.get('registered', '?')} of {summary.get('images', '?')} photos registered, "
            f"{summary.get('points', '?')} points, {summary.get('mean_reproj_px', float('nan')):.2f} px mean "
            f"reprojection error, in {seconds:.0f} s")


def _folder_key(folder):
    """Settings key of a photo folder's last output."""
    return folder_key(folder, "outputs")


def _is_user_error(error):
    """An error core raises with a complete message for the user (no traceback needed)."""
    try:
        from ..core.pipeline import AlignmentError
    except ImportError:
        return isinstance(error, ExecutorError)
    return isinstance(error, (AlignmentError, ExecutorError))


class AlignKitDock(StackTab, AdvancedOptions, QgsDockWidget):
    def __init__(self, iface, parent=None):
        parent = parent if parent is not None else (iface.mainWindow() if iface is not None else None)
        super().__init__("AlignKit", parent)
        self.setObjectName("AlignKitDock")
        self.iface = iface
        self.settings = QgsSettings()
        self.task = None  # the running task: QGIS does not keep Python task objects alive
        self._stack_run = None  # (task, context, feedback) of a running alignstack job
        self._output_edited = False  # once the user picks an output, folder changes stop overriding it
        self._crs_chosen = False  # once the user picks a CRS, previews stop overriding it
        self.last_result = None  # dict of the last finished alignment (paths, summary), for callers
        self.last_preview = None  # dict of the last preview (counts, camera, suggested CRS)
        self._last_log_time = 0.0  # when the short log last took a progress message

        tabs = QTabWidget()
        tabs.addTab(self._build_photo_tab(), "Photo alignment")
        tabs.addTab(self._build_stack_tab(), "Image stack")
        self.tabs = tabs
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(tabs)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)  # a short log; the full one is QGIS's message log
        self.log.setPlaceholderText("Messages of the current run")
        layout.addWidget(self.log, 1)
        self.setWidget(body)

        QgsProject.instance().crsChanged.connect(self._update_export_option)
        preset = self.settings.value(SETTINGS_PREFIX + "preset", DEFAULT_PRESET, type=str)
        if preset in PRESETS:
            self.preset_combo.setCurrentText(preset)
        self._apply_preset(self.preset_combo.currentText())
        last = self.settings.value(SETTINGS_PREFIX + "last_folder", "", type=str)
        if last and os.path.isdir(last):  # after the preset: the folder's remembered options win
            self.folder_widget.setFilePath(last)
        self._update_default_crs()
        self._set_busy(False)

    # ------------------------------------------------------------------ widgets
    def _build_photo_tab(self):
        tab = QWidget()
        form = QFormLayout()
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder_widget.setDialogTitle("Folder of drone photos")
        self.folder_widget.fileChanged.connect(self._folder_changed)
        form.addRow("Photos", self.folder_widget)

        self.crs_widget = QgsProjectionSelectionWidget()
        self.crs_widget.setOptionVisible(QgsProjectionSelectionWidget.CrsNotSet, True)
        self.crs_widget.setNotSetText("UTM zone of the photos (automatic)")
        self.crs_widget.crsChanged.connect(self._crs_changed)
        form.addRow("Target CRS", self.crs_widget)

        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.output_widget.setFilter("GeoPackage (*.gpkg)")
        self.output_widget.setDialogTitle("Output GeoPackage")
        self.output_widget.fileChanged.connect(self._output_changed)
        form.addRow("Output", self.output_widget)

        self.export_check = QCheckBox()
        self.export_check.setToolTip("Write a second GeoPackage reprojected to the project CRS and load that one")
        form.addRow("", self.export_check)

        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.setCurrentText(DEFAULT_PRESET)
        self.preset_combo.currentTextChanged.connect(self._apply_preset)
        form.addRow("Quality", self.preset_combo)

        self.advanced = self._build_advanced()

        buttons = QHBoxLayout()
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("Read the photos' EXIF/XMP: count, GPS, camera, predicted footprints")
        self.preview_button.clicked.connect(self.preview)
        self.align_button = QPushButton("Align")
        self.align_button.clicked.connect(self.align)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.preview_button, self.align_button, self.cancel_button):
            buttons.addWidget(b)
        self.gcp_button = QPushButton("Mark GCPs…")
        self.gcp_button.setToolTip("Mark ground control points in the photos (after Align; before it, from the priors)")
        self.gcp_button.clicked.connect(self.open_gcp_dialog)
        buttons.addWidget(self.gcp_button)

        self.preview_label = QLabel("Choose a folder of geotagged photos, then Preview or Align.")
        self.preview_label.setWordWrap(True)
        self.preview_label.setTextFormat(Qt.PlainText)  # photo names and problems are not rich text

        layout = QVBoxLayout(tab)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.preview_label)
        layout.addStretch(1)
        self._update_export_option()
        return tab

    # ------------------------------------------------------------------ state
    def folder(self):
        return self.folder_widget.filePath().strip()

    def output_path(self):
        return self.output_widget.filePath().strip()

    def target_crs(self):
        crs = self.crs_widget.crs()
        return crs.authid() if crs.isValid() else ""

    def set_folder(self, folder):
        self.folder_widget.setFilePath(str(folder))

    def set_output(self, path):
        self.output_widget.setFilePath(str(path))
        self._output_edited = True

    def set_target_crs(self, authid):
        self.crs_widget.setCrs(QgsCoordinateReferenceSystem(authid) if authid else QgsCoordinateReferenceSystem())
        self._crs_chosen = True

    def _folder_changed(self, path):
        path = path.strip()
        self.preview_label.setText("Preview reads the photos' EXIF/XMP before anything long starts.")
        self.last_preview = None
        if not path or not os.path.isdir(path):
            return
        self.settings.setValue(SETTINGS_PREFIX + "last_folder", path)
        self.restore_options(path)  # preset and Advanced values last used on this folder
        remembered = self.settings.value(_folder_key(path), "", type=str)  # this folder's last output
        if remembered and not is_inside(remembered, path):
            self.output_widget.blockSignals(True)
            self.output_widget.setFilePath(remembered)
            self.output_widget.blockSignals(False)
            self._output_edited = False
        elif not self._output_edited or is_inside(self.output_path() or path, path):
            self.output_widget.blockSignals(True)
            self.output_widget.setFilePath(default_output_for(path, QgsProject.instance().homePath()))
            self.output_widget.blockSignals(False)

    def _output_changed(self, _path):
        self._output_edited = True

    def _crs_changed(self, _crs):
        self._crs_chosen = True
        self._update_export_option()

    def _update_default_crs(self, suggested=""):
        """Project CRS when projected, else the suggested (UTM of the photos), else 'automatic'."""
        if self._crs_chosen:
            return
        project_crs = QgsProject.instance().crs()
        self.crs_widget.blockSignals(True)
        if project_crs.isValid() and not project_crs.isGeographic():
            self.crs_widget.setCrs(project_crs)
        elif suggested:
            self.crs_widget.setCrs(QgsCoordinateReferenceSystem(suggested))
        else:
            self.crs_widget.setCrs(QgsCoordinateReferenceSystem())
        self.crs_widget.blockSignals(False)
        self._update_export_option()

    def _update_export_option(self, *_):
        project_crs = QgsProject.instance().crs()
        target = self.crs_widget.crs() if hasattr(self, "crs_widget") else QgsCoordinateReferenceSystem()
        differs = project_crs.isValid() and (not target.isValid() or target != project_crs)
        self.export_check.setVisible(differs)
        if differs:
            self.export_check.setText(f"Also write the layers in the project CRS ({project_crs.authid()})")
        else:
            self.export_check.setChecked(False)

    def export_crs(self):
        """The project CRS when the user asked for a copy of the layers in it, else ''."""
        if self.export_check.isHidden() or not self.export_check.isChecked():
            return ""
        project_crs = QgsProject.instance().crs()
        return project_crs.authid() if project_crs.isValid() else ""

    def current_config(self):
        """An AlignConfig from the widgets; ValueError with a clear message when something is wrong."""
        folder = self.folder()
        if not folder:
            raise ValueError("choose the folder of photos first")
        if not os.path.isdir(folder):
            raise ValueError(f"{folder}: the folder does not exist")
        output = self.output_path() or default_output_for(folder, QgsProject.instance().homePath())
        if not output.lower().endswith(".gpkg"):
            output += ".gpkg"
        if is_inside(output, folder):
            raise ValueError(f"{output}: the output must not be inside the image folder (it is never written to)")
        return AlignConfig(
            images=folder,
            output=output,
            target_crs=self.target_crs(),
            **self.advanced_config(),  # tuning, focal, altitude reference, executor
        )

    def is_running(self):
        return self.task is not None or self._stack_run is not None

    def _set_busy(self, busy):
        if not busy:
            self.progress.setFormat("%p%")
        for widget in (self.preview_button, self.align_button, self.stack_run_button):
            widget.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.stack_cancel_button.setEnabled(busy)

    def log_message(self, text, level=Qgis.Info):
        self.log.appendPlainText(text)
        QgsMessageLog.logMessage(text, LOG_TAG, level)

    def _bar(self):
        return self.iface.messageBar() if self.iface is not None else None

    def _notify(self, text, level, details=None):
        """A message-bar item. The bar shows rich text: the text is escaped (`<4.11`, `<name>` stay)."""
        bar = self._bar()
        if bar is None:
            return
        text = html.escape(text, quote=False)
        if details:
            bar.pushMessage(LOG_TAG, text, details, level, 0)
        else:
            bar.pushMessage(LOG_TAG, text, level, 0 if level == Qgis.Critical else 10)

    def _notify_with_link(self, text, level, link_text, path):
        """A message-bar item with a button that opens `path` (the report) in the browser."""
        bar = self._bar()
        if bar is None:
            return
        item = bar.createMessage(LOG_TAG, html.escape(text, quote=False))
        button = QPushButton(link_text, item)
        url = QUrl.fromLocalFile(str(path))
        button.clicked.connect(lambda _checked=False: QDesktopServices.openUrl(url))
        item.layout().addWidget(button)
        bar.pushWidget(item, level, 0)

    # ------------------------------------------------------------------ tasks
    def _start(self, task):
        if self.is_running():
            self._notify("a job is already running; cancel it first", Qgis.Warning)
            return False
        self.task = task
        self._last_log_time = 0.0
        task.message.connect(self._task_message)
        task.progressChanged.connect(self._set_progress)
        self.progress.setValue(0)
        self._set_busy(True)
        QgsApplication.taskManager().addTask(task)
        return True

    def _task_message(self, text):
        """Progress text: always on the bar; in the short log at most about once a second."""
        self.progress.setFormat(f"%p%  {text}")
        now = time.monotonic()
        if now - self._last_log_time >= LOG_INTERVAL_S:
            self._last_log_time = now
            self.log_message(text)

    def _set_progress(self, value):
        self.progress.setValue(int(round(value)))

    def _take_task(self, task):
        """Forget `task` once it has ended; False when it was already handled (or is not ours)."""
        if self.task is not task:
            return False
        self.task = None
        self._set_busy(False)
        return True

    def cancel(self):
        """Cancel the running job: same effect as the cancel button of QGIS's task manager."""
        if self.task is not None:
            self.log_message("cancelling...")
            self.task.cancel()
        if self._stack_run is not None:
            self.log_message("cancelling...")
            self._stack_run[0].cancel()

    def _report_error(self, task, what):
        text = f"{what} failed: {task.error}"
        self.log_message(text, Qgis.Critical)
        if _is_user_error(task.error):  # bad input, a cluster out of reach: the message says it all
            self._notify(text, Qgis.Critical)
            return
        QgsMessageLog.logMessage(task.error_trace, LOG_TAG, Qgis.Critical)
        self._notify(text, Qgis.Critical, details=task.error_trace or str(task.error))

    # --- preview (camera priors) ---
    def preview(self):
        try:
            folder = self.folder()
            if not folder or not os.path.isdir(folder):
                raise ValueError(f"{folder or 'no folder'}: choose an existing folder of photos")
            config = self.current_config()
        except ValueError as exc:
            self._notify(str(exc), Qgis.Warning)
            self.log_message(str(exc), Qgis.Warning)
            return None
        stem = os.path.splitext(config.output)[0]
        priors_gpkg = stem + "_priors.gpkg"
        target_crs = config.target_crs

        def work(progress, is_canceled):
            return preview_photos(folder, priors_gpkg, target_crs, progress, is_canceled)

        task = CoreTask(f"AlignKit: preview {survey_name(folder)}", work, self._preview_done)
        self.log_message(f"reading the photos of {folder}")
        return task if self._start(task) else None

    def _preview_done(self, task):
        if not self._take_task(task):
            return
        if task.canceled:
            self.log_message("preview cancelled")
            return
        if task.error is not None:
            self._report_error(task, "Preview")
            return
        info = task.result
        self.last_preview = info
        self.preview_label.setText(info["text"])
        for line in info.get("problems", [])[:20]:
            self.log_message(line, Qgis.Warning)
        self._update_default_crs(info.get("suggested_crs", ""))
        if info.get("gpkg"):
            try:
                group, _ = load_result_group(info["gpkg"], info["gpkg"], f"{survey_name(info['folder'])} priors",
                                             layer_loader.PRIORS_STYLES, info["folder"])
                self._show_group(group)
            except (ValueError, RuntimeError) as exc:
                self.log_message(f"priors layers not loaded: {exc}", Qgis.Warning)
        self.log_message(info["text"])

    def _show_group(self, group, expanded_layers=("cameras",)):
        """Expand a freshly loaded group in the Layers panel, and the legend of its main layer."""
        view = self.iface.layerTreeView() if self.iface is not None else None
        if not isinstance(view, QgsLayerTreeView):
            return  # a stub iface: nothing to show
        for node in [group] + group.findLayers():
            expand = node is group or node.name() in expanded_layers
            node.setExpanded(expand)
            index = view.node2index(node)
            if index.isValid():
                view.setExpanded(index, expand)

    # --- alignment ---
    def align(self):
        try:
            config = self.current_config()
        except ValueError as exc:
            self._notify(str(exc), Qgis.Warning)
            self.log_message(str(exc), Qgis.Warning)
            return None
        export_crs = self.export_crs()
        self.settings.setValue(SETTINGS_PREFIX + "preset", self.preset_combo.currentText())

        def work(progress, is_canceled):
            return align_photos(config, export_crs, progress, is_canceled)

        self.settings.setValue(_folder_key(config.images), config.output)
        self.remember_options(config.images)
        task = CoreTask(f"AlignKit: align {survey_name(config.images)}", work, self._align_done)
        task.config = config
        self.log_message(f"aligning {config.images} -> {config.output}")
        return task if self._start(task) else None

    def _align_done(self, task):
        if not self._take_task(task):
            return
        config = task.config
        if task.canceled:
            workspace = config.workspace or os.path.splitext(config.output)[0] + "_workspace"
            text = f"Alignment cancelled. Completed stages are kept in {workspace}; Align again resumes from them."
            self.log_message(text)
            self._notify(text, Qgis.Info)
            return
        if task.error is not None:
            self._report_error(task, "Alignment")
            return
        result = task.result
        try:
            group, _ = load_result_group(result["gpkg"], result["output"], survey_name(config.images),
                                         layer_loader.RESULT_STYLES, config.images)
        except (ValueError, RuntimeError) as exc:
            text = f"Alignment finished but its layers could not be loaded: {exc}"
            self.log_message(text, Qgis.Critical)
            self._notify(text, Qgis.Critical)
            return
        self._show_group(group)
        summary = result.get("summary") or {}
        self.last_result = result
        text = result_message(summary, task.seconds)
        self.log_message(text)
        verdict = summary.get("verdict") or []
        for item in verdict:  # the report's first screen, in the short log too
            self.log_message(f"{'ok' if item['ok'] else 'WARNING'}: {item['item']}: {item['text']}",
                             Qgis.Info if item["ok"] else Qgis.Warning)
        warnings = summary.get("warnings") or []
        for warning in warnings:  # e.g. not georeferenced, focal held at EXIF: the user must see them
            self.log_message(warning, Qgis.Warning)
        level = Qgis.Warning if warnings or not all(item["ok"] for item in verdict) else Qgis.Success
        if warnings:
            text += f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''}, see the AlignKit log)"
        self.progress.setValue(100)
        if result.get("report"):
            self._notify_with_link(text, level, "Open report", result["report"])
        else:
            self._notify(text, level)

    def open_gcp_dialog(self):
        """The marking dialog on the last (or the chosen output's) alignment, else on the folder's priors."""
        from .gcp_dialog import GcpDialog

        out = (self.last_result or {}).get("output") or self.output_path()
        done = bool(out) and os.path.isfile(out) and os.path.isfile(os.path.splitext(out)[0] + "_summary.json")
        self.gcp_dialog = GcpDialog(self, self.iface, alignment=out if done else None,
                                    image_folder=None if done else (self.folder() or None))
        self.gcp_dialog.show()
        return self.gcp_dialog

    # ------------------------------------------------------------------ teardown
    def shutdown(self, timeout_ms=30000):
        """Cancel and wait for a running job, then disconnect from the project (plugin unload)."""
        if self.task is not None:
            task, self.task = self.task, None
            task.on_done = None  # the dock is going away: finished() must not call back into it
            try:
                task.message.disconnect(self._task_message)
                task.progressChanged.disconnect(self._set_progress)
                task.cancel()
                task.waitForFinished(timeout_ms)
            except RuntimeError:
                pass  # the C++ task is already deleted: it has ended
        if self._stack_run is not None:
            task, _context, feedback = self._stack_run
            self._stack_run = None
            try:
                feedback.relay.text.disconnect(self.log_message)
                task.cancel()
                task.waitForFinished(timeout_ms)
            except (RuntimeError, TypeError):
                pass
        try:
            QgsProject.instance().crsChanged.disconnect(self._update_export_option)
        except TypeError:
            pass  # already disconnected
