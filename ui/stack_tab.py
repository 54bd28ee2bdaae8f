"""The dock's image-stack tab: alignkit:alignstack run as a QgsProcessingAlgRunnerTask.

A mixin of AlignKitDock (it uses the dock's log, message bar, progress bar and busy state)."""
import os
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .jobs import stack_summary
from .naming import is_inside

STACK_MODELS = ("homography", "affine", "similarity", "euclidean", "translation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class _StackFeedback(QgsProcessingFeedback):
    """Processing feedback that forwards the algorithm's messages to the dock's log (queued)."""

    class _Relay(QObject):
        text = pyqtSignal(str)

    def __init__(self):
        super().__init__()
        self.relay = self._Relay()

    def pushInfo(self, info):  # noqa: N802
        super().pushInfo(info)
        self.relay.text.emit(info)

    def pushWarning(self, warning):  # noqa: N802
        super().pushWarning(warning)  # e.g. a rejected frame and why
        self.relay.text.emit(f"warning: {warning}")

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        super().reportError(error, fatalError)
        self.relay.text.emit(f"error: {error}")


class StackTab:
    """The image-stack tab's widgets and job (mixed into AlignKitDock)."""

    def _build_stack_tab(self):
        tab = QWidget()
        form = QFormLayout()
        self.stack_folder_widget = QgsFileWidget()
        self.stack_folder_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.stack_folder_widget.setDialogTitle("Folder of images to register")
        self.stack_folder_widget.fileChanged.connect(self._stack_folder_changed)
        form.addRow("Images", self.stack_folder_widget)
        self.reference_combo = QComboBox()
        form.addRow("Reference", self.reference_combo)
        self.model_combo = QComboBox()
        self.model_combo.addItems(list(STACK_MODELS))
        form.addRow("Model", self.model_combo)
        self.crop_check = QCheckBox("Crop to the area common to all images")
        self.crop_check.setChecked(True)
        form.addRow("", self.crop_check)
        self.fuse_combo = QComboBox()  # FUSE of alignkit:alignstack: also fuse the aligned frames into one image
        self.fuse_combo.addItems(["none", "focus", "exposure"])
        form.addRow("Fuse", self.fuse_combo)
        self.stack_output_widget = QgsFileWidget()
        self.stack_output_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.stack_output_widget.setDialogTitle("Output folder for the aligned images")
        form.addRow("Output folder", self.stack_output_widget)
        buttons = QHBoxLayout()
        self.stack_run_button = QPushButton("Align stack")
        self.stack_run_button.clicked.connect(self.align_stack)
        self.stack_cancel_button = QPushButton("Cancel")
        self.stack_cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.stack_run_button)
        buttons.addWidget(self.stack_cancel_button)
        self.stack_label = QLabel("Registers every image of a folder onto a reference image.")
        self.stack_label.setWordWrap(True)
        self.stack_label.setTextFormat(Qt.PlainText)
        layout = QVBoxLayout(tab)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.stack_label)
        layout.addStretch(1)
        return tab

    def _stack_folder_changed(self, path):
        self.reference_combo.clear()
        if not path or not os.path.isdir(path):
            return
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        self.reference_combo.addItem("(middle image)", "")
        for n in names:
            self.reference_combo.addItem(n, n)
        if not self.stack_output_widget.filePath():
            folder = Path(path)
            self.stack_output_widget.setFilePath(str(folder.parent / f"{folder.name}_aligned"))

    def align_stack(self):
        folder = self.stack_folder_widget.filePath().strip()
        output = self.stack_output_widget.filePath().strip()
        problem = None
        if not folder or not os.path.isdir(folder):
            problem = f"{folder or 'no folder'}: choose an existing folder of images"
        elif not output:
            problem = "choose an output folder"
        elif is_inside(output, folder):
            problem = f"{output}: the output folder must not be inside the input folder"
        alg = QgsApplication.processingRegistry().algorithmById("alignkit:alignstack")
        if problem is None and alg is None:
            problem = "the alignkit:alignstack algorithm is not available (is the Processing provider loaded?)"
        if problem:
            self._notify(problem, Qgis.Warning)
            self.log_message(problem, Qgis.Warning)
            return None
        if self.is_running():
            self._notify("a job is already running; cancel it first", Qgis.Warning)
            return None
        model = self.model_combo.currentText()
        params = {
            "INPUT": folder,
            "REFERENCE": self.reference_combo.currentData() or "",
            "MODEL": model,
            "CROP": self.crop_check.isChecked(),
            "FUSE": self.fuse_combo.currentText(),
            "OUTPUT_FOLDER": output,
        }
        model_param = alg.parameterDefinition("MODEL")
        if model_param is not None and model_param.type() == "enum" and not model_param.usesStaticStrings():
            params["MODEL"] = list(model_param.options()).index(model)  # an index-valued enum
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        feedback = _StackFeedback()
        feedback.relay.text.connect(self.log_message)
        task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
        task.executed.connect(lambda ok, results: self._stack_done(task, ok, results))
        task.progressChanged.connect(self._set_progress)
        self._stack_run = (task, context, feedback)
        self._set_busy(True)
        self.progress.setValue(0)
        self.log_message(f"registering the images of {folder} -> {output}")
        QgsApplication.taskManager().addTask(task)
        return task

    def _stack_done(self, task, ok, results):
        if self._stack_run is None or self._stack_run[0] is not task:
            return
        feedback = self._stack_run[2]
        self._stack_run = None
        self._set_busy(False)
        if feedback.isCanceled():
            self.log_message("image stack registration cancelled")
            return
        if not ok:
            text = "Image stack registration failed; see the AlignKit log for details"
            self.log_message(text, Qgis.Critical)
            self._notify(text, Qgis.Critical)
            return
        output = results.get("OUTPUT_FOLDER", self.stack_output_widget.filePath())
        text = stack_summary(output)
        self.stack_label.setText(text)
        rejected = int(results.get("REJECTED") or 0)
        if rejected:
            text += " (the reasons are in the AlignKit log)"
        self.log_message(text, Qgis.Warning if rejected else Qgis.Info)
        self._notify(text, Qgis.Warning if rejected else Qgis.Success)

