"""The dock's Advanced section: tuning, calibration, the GPS altitude's reference and the executor,
and their memory per photo folder. A mixin of AlignKitDock (like StackTab): the widgets are the
dock's attributes, `advanced_config()` gives their AlignConfig fields."""
import hashlib
import json
import os

from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox

from ..core.config import PRESETS, AlignConfig
from ..core.executor import ExecutorError
from ..core.executor_dask import normalize_address
from ..core.geo import ALTITUDE_REFERENCES

SETTINGS_PREFIX = "alignkit/"

# What each altitude reference means, in a surveyor's words (the combo's per-choice tooltips).
ALTITUDE_TIPS = {
    "egm96": "Above mean sea level (EGM96 geoid), as DJI and most drones write it: the usual case, but an "
             "assumption the result states",
    "ellipsoidal": "Above the WGS 84 ellipsoid, as an RTK/PPK drone or a GNSS receiver's raw log gives it",
    "egm2008": "Above mean sea level on the newer EGM2008 geoid (some RTK set-ups and national height systems)",
    "offset": "GPS altitude plus a known offset is the ellipsoidal height, e.g. altitudes above the take-off "
              "point plus the take-off point's ellipsoidal height",
}
EXECUTOR_TIP = ("A Dask scheduler address, tcp://host:8786, whose workers see the photos and the output "
                "folder at the same paths on shared storage; feature extraction and matching then run on "
                "the cluster. Empty: local processes on this computer. How to start a scheduler and "
                "workers: the README's paragraph on Dask clusters.")


def folder_key(folder, kind):
    """Settings key of something remembered per photo folder (QSettings keys cannot hold a path)."""
    path = os.path.normcase(os.path.abspath(str(folder)))
    return f"{SETTINGS_PREFIX}{kind}/" + hashlib.blake2b(path.encode("utf-8"), digest_size=8).hexdigest()[:16]


def _spin(low, high, value, tip):
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _value(widget):
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QLineEdit):
        return widget.text().strip()
    return widget.value()  # QSpinBox, QDoubleSpinBox


def _restore(widget, value):
    """Set a widget from a remembered value; a value of the wrong kind (an older version's) is skipped."""
    if isinstance(widget, QCheckBox) and isinstance(value, bool):
        widget.setChecked(value)
    elif isinstance(widget, QComboBox) and isinstance(value, str) and widget.findText(value) >= 0:
        widget.setCurrentText(value)
    elif isinstance(widget, QLineEdit) and isinstance(value, str):
        widget.setText(value)
    elif isinstance(widget, QSpinBox) and isinstance(value, int) and not isinstance(value, bool):
        widget.setValue(value)
    elif isinstance(widget, QDoubleSpinBox) and isinstance(value, (int, float)) and not isinstance(value, bool):
        widget.setValue(float(value))


class AdvancedOptions:
    """The Advanced section's widgets, their AlignConfig values and their memory per folder."""

    def _build_advanced(self):
        box = QgsCollapsibleGroupBox("Advanced")
        box.setCollapsed(True)
        adv = QFormLayout(box)
        defaults = AlignConfig()
        self.size_spin = _spin(400, 12000, defaults.max_image_size, "Long side of the working image (px)")
        adv.addRow("Working size (px)", self.size_spin)
        self.features_spin = _spin(500, 100000, defaults.max_features, "SIFT features kept per image")
        adv.addRow("Features per image", self.features_spin)
        self.neighbors_spin = _spin(2, 200, defaults.pair_neighbors, "Nearest GPS neighbours matched per image")
        adv.addRow("Pair neighbours", self.neighbors_spin)
        self.ratio_spin = QDoubleSpinBox()
        self.ratio_spin.setRange(0.5, 0.95)
        self.ratio_spin.setSingleStep(0.05)
        self.ratio_spin.setValue(defaults.lowe_ratio)
        adv.addRow("Lowe ratio", self.ratio_spin)
        self.inliers_spin = _spin(8, 1000, defaults.min_inliers, "Pairs with fewer verified matches are dropped")
        adv.addRow("Min. inliers", self.inliers_spin)
        self.focal_spin = QDoubleSpinBox()
        self.focal_spin.setRange(0.0, 100000.0)
        self.focal_spin.setDecimals(1)
        self.focal_spin.setSpecialValueText("from EXIF")  # shown for 0
        self.focal_spin.setToolTip("A calibrated focal length in pixels of the full-size photos, for every photo. "
                                   "Nadir flights cannot self-calibrate it, and heights above ground scale with it.")
        adv.addRow("Focal length (px)", self.focal_spin)
        self.focal_check = QCheckBox("Refine focal length")
        self.focal_check.setChecked(defaults.refine_focal)
        adv.addRow(self.focal_check)
        self.distortion_check = QCheckBox("Refine radial distortion")
        self.distortion_check.setChecked(defaults.refine_distortion)
        adv.addRow(self.distortion_check)

        self.altitude_combo = QComboBox()
        for i, name in enumerate(ALTITUDE_REFERENCES):
            self.altitude_combo.addItem(name)
            self.altitude_combo.setItemData(i, ALTITUDE_TIPS.get(name, ""), Qt.ToolTipRole)
        self.altitude_combo.currentTextChanged.connect(self._altitude_reference_changed)
        adv.addRow("Altitude reference", self.altitude_combo)
        self.offset_spin = QDoubleSpinBox()
        self.offset_spin.setRange(-10000.0, 10000.0)
        self.offset_spin.setDecimals(3)
        self.offset_spin.setValue(defaults.altitude_offset_m)
        self.offset_spin.setToolTip("Ellipsoidal height minus the photos' GPS altitude, in metres "
                                    "(with the altitude reference \"offset\")")
        adv.addRow("Offset (m)", self.offset_spin)
        self.altitude_combo.setCurrentText(defaults.altitude_reference)
        self._altitude_reference_changed(self.altitude_combo.currentText())

        self.workers_spin = _spin(0, 256, defaults.workers, "Worker processes; 0 = number of CPU cores")
        adv.addRow("Workers (0 = all cores)", self.workers_spin)
        self.executor_edit = QLineEdit(defaults.executor)
        self.executor_edit.setPlaceholderText("local processes")
        self.executor_edit.setToolTip(EXECUTOR_TIP)
        self.executor_edit.textChanged.connect(lambda text: self.workers_spin.setEnabled(not text.strip()))
        adv.addRow("Executor", self.executor_edit)
        return box

    def _altitude_reference_changed(self, name):
        self.offset_spin.setEnabled(name == "offset")
        self.altitude_combo.setToolTip(ALTITUDE_TIPS.get(name, ""))

    def _apply_preset(self, name):
        preset = PRESETS.get(name)
        if preset:
            self.size_spin.setValue(preset["max_image_size"])
            self.features_spin.setValue(preset["max_features"])

    def _option_widgets(self):
        """AlignConfig field -> the widget that sets it."""
        return {
            "max_image_size": self.size_spin, "max_features": self.features_spin,
            "pair_neighbors": self.neighbors_spin, "lowe_ratio": self.ratio_spin, "min_inliers": self.inliers_spin,
            "focal_px": self.focal_spin, "refine_focal": self.focal_check,
            "refine_distortion": self.distortion_check, "altitude_reference": self.altitude_combo,
            "altitude_offset_m": self.offset_spin, "workers": self.workers_spin, "executor": self.executor_edit,
        }

    def advanced_config(self):
        """The Advanced section's AlignConfig fields; ValueError for an executor that is no address."""
        values = {name: _value(widget) for name, widget in self._option_widgets().items()}
        values["lowe_ratio"] = round(values["lowe_ratio"], 3)
        values["focal_px"] = round(values["focal_px"], 1)
        values["altitude_offset_m"] = (round(values["altitude_offset_m"], 3)
                                       if values["altitude_reference"] == "offset" else 0.0)
        if values["executor"]:
            try:
                normalize_address(values["executor"])
            except ExecutorError as exc:
                raise ValueError(str(exc)) from None
        return values

    def remember_options(self, folder):
        """Keep the preset and the Advanced section's values for this photo folder."""
        values = {name: _value(widget) for name, widget in self._option_widgets().items()}
        values["preset"] = self.preset_combo.currentText()
        self.settings.setValue(folder_key(folder, "options"), json.dumps(values, sort_keys=True))

    def restore_options(self, folder):
        """The preset and values last used for this folder, if any (a folder never aligned keeps the current)."""
        text = self.settings.value(folder_key(folder, "options"), "", type=str)
        try:
            values = json.loads(text) if text else {}
        except ValueError:
            values = {}
        if not isinstance(values, dict) or not values:
            return False
        _restore(self.preset_combo, values.get("preset"))  # first: the preset sets size and features
        for name, widget in self._option_widgets().items():
            if name in values:
                _restore(widget, values[name])
        return True
