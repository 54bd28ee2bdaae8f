"""Marking ground control points in the photos (issue 10, item 2): the dialog.

Cameras: a finished alignment (its GeoPackage and summary; the adjusted cameras) or the photos'
priors (EXIF GPS and gimbal angles). Control: a gcp_list.txt, an OpenSfM ground_control_points.json
or a QGIS point layer with a name field and Z (or a height field), in any CRS (transformed
explicitly into the cameras' local frame by core.control.to_local).

Pick a point: every photo it should appear in (core.control.predict_pixels through the current
cameras) is shown as a zoomable crop centred on the prediction (amber cross). A click places the
measurement (green circle); a second click or a drag moves it; Remove removes it. Find target looks
for a checker or ArUco target near the prediction (core.targets) and proposes it (cyan square) for
the user to Accept. Roles (control / check) are set per point. Every change is saved at once in the
alignment's workspace (control_measurements.json); Export writes a gcp_list.txt for GCP_FILE.

All the logic is core.marking.MarkingSession; this module only draws it and forwards clicks.
"""
import os
from pathlib import Path

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsWkbTypes
from qgis.gui import QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.control import ControlError, control_from_points, load_measurements
from ..core.marking import (
    DEFAULT_TARGET_SIDE_M,
    MEASUREMENTS_FILE,
    SEARCH_RADIUS_ALIGNED_PX,
    SEARCH_RADIUS_PRIORS_PX,
    MarkingSession,
    cameras_from_alignment,
    cameras_from_priors,
    merge_measurements,
    read_crop,
)
from .gcp_photo_view import PhotoTile

TILE_COLUMNS = 3
CROP_HALF_PX = 200  # photo pixels each side of the prediction kept in a tile (zoom out to see them)
VIEW_HALF_ALIGNED_PX = 40  # a tile first shows this many photo pixels each side of the prediction
COLUMNS = ("Point", "Role", "Marked", "In photos", "Off (px)", "Status")
OFF_WARN_PX = 3.0  # a measurement this far from the adjusted cameras' prediction is flagged in the table


class GcpDialog(QDialog):
    """The marking dialog. `cameras`: a core.marking.PhotoCameras, or give `alignment` (a GeoPackage
    path) or `image_folder` (priors); `control`: a control file path (else the saved session)."""

    def __init__(self, parent=None, iface=None, alignment=None, image_folder=None, control=None, cameras=None):
        super().__init__(parent)
        self.setWindowTitle("AlignKit: mark ground control")
        self.setObjectName("AlignKitGcpDialog")
        self.iface = iface
        self.cameras = None
        self.session = None
        self.current = None  # name of the selected point
        self.tiles = {}  # image -> PhotoTile of the current point
        self._crops = {}  # (point, image) -> (rgb, x0, y0)
        self._filling = False
        self._build()
        self.resize(1500, 940)
        try:
            if cameras is not None:
                self.set_cameras(cameras)
            elif alignment:
                self.load_alignment(alignment)
            elif image_folder:
                self.load_priors(image_folder)
            if control:
                self.open_control(control)
        except (ControlError, ValueError, OSError) as exc:
            self._error(str(exc))

    # ------------------------------------------------------------------ widgets
    def _build(self):
        outer = QVBoxLayout(self)
        sources = QGroupBox("Cameras and control")
        grid = QGridLayout(sources)
        self.cameras_label = QLabel("No cameras: open an alignment result or a photo folder")
        self.cameras_label.setWordWrap(True)
        open_alignment = QPushButton("Alignment result…")
        open_alignment.clicked.connect(self._choose_alignment)
        open_priors = QPushButton("Photo priors…")
        open_priors.setToolTip("Predict from the photos' GPS and gimbal angles only (before aligning)")
        open_priors.clicked.connect(self._choose_priors)
        grid.addWidget(QLabel("Cameras:"), 0, 0)
        grid.addWidget(self.cameras_label, 0, 1, 1, 5)
        grid.addWidget(open_alignment, 0, 6)
        grid.addWidget(open_priors, 0, 7)
        self.control_label = QLabel("No control points")
        self.control_label.setWordWrap(True)
        open_file = QPushButton("Control file…")
        open_file.setToolTip("gcp_list.txt (OpenDroneMap) or ground_control_points.json (OpenSfM)")
        open_file.clicked.connect(self._choose_control)
        grid.addWidget(QLabel("Control:"), 1, 0)
        grid.addWidget(self.control_label, 1, 1, 1, 5)
        grid.addWidget(open_file, 1, 6)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.PointLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.layer_combo.setLayer(None)
        self.name_field = QgsFieldComboBox()
        self.height_field = QgsFieldComboBox()
        self.height_field.setAllowEmptyFieldName(True)
        self.height_field.setToolTip("Height field; empty: the geometry's Z")
        self.layer_combo.layerChanged.connect(self.name_field.setLayer)
        self.layer_combo.layerChanged.connect(self.height_field.setLayer)
        use_layer = QPushButton("Use layer")
        use_layer.clicked.connect(lambda: self._try(self.use_layer, self.layer_combo.currentLayer(),
                                                    self.name_field.currentField(), self.height_field.currentField()))
        grid.addWidget(QLabel("or layer:"), 2, 0)
        grid.addWidget(self.layer_combo, 2, 1, 1, 2)
        grid.addWidget(QLabel("name"), 2, 3)
        grid.addWidget(self.name_field, 2, 4)
        grid.addWidget(QLabel("height"), 2, 5)
        grid.addWidget(self.height_field, 2, 6)
        grid.addWidget(use_layer, 2, 7)
        grid.setColumnStretch(1, 1)
        outer.addWidget(sources)

        split = QSplitter(Qt.Horizontal)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        lv.addWidget(self.table, 1)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        lv.addWidget(self.summary_label)
        self.point_label = QLabel("")
        self.point_label.setWordWrap(True)
        self.point_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lv.addWidget(self.point_label)
        legend = QLabel("<span style='color:#d9a800'>&#10010;</span> predicted &nbsp; "
                        "<span style='color:#1a9c3e'>&#9711;</span> marked &nbsp; "
                        "<span style='color:#0090c0'>&#9633;</span> target found<br>"
                        "Click: place or move &middot; drag the circle: move &middot; drag: pan &middot; wheel: zoom")
        legend.setWordWrap(True)
        lv.addWidget(legend)
        split.addWidget(left)

        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.tiles_widget = QWidget()
        self.tiles_layout = QGridLayout(self.tiles_widget)
        self.tiles_layout.setSpacing(6)
        self.scroll.setWidget(self.tiles_widget)
        split.addWidget(self.scroll)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([470, 1030])
        outer.addWidget(split, 1)

        bottom = QHBoxLayout()
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(["auto", "checker", "aruco"])
        self.kind_combo.setToolTip("Target type: auto tries ArUco (which also names the marker), then a 2x2 checker")
        self.side_spin = QDoubleSpinBox()
        self.side_spin.setRange(0.05, 5.0)
        self.side_spin.setDecimals(2)
        self.side_spin.setSingleStep(0.05)
        self.side_spin.setSuffix(" m")
        self.side_spin.setValue(DEFAULT_TARGET_SIDE_M)
        self.side_spin.setToolTip("Side of the printed target")
        self.radius_spin = QDoubleSpinBox()
        self.radius_spin.setRange(3.0, 500.0)
        self.radius_spin.setDecimals(0)
        self.radius_spin.setSuffix(" px")
        self.radius_spin.setValue(SEARCH_RADIUS_ALIGNED_PX)
        self.radius_spin.setToolTip("How far from the prediction to look for the target")
        find_all = QPushButton("Find target in all photos")
        find_all.clicked.connect(self.find_all)
        accept_all = QPushButton("Accept all found")
        accept_all.clicked.connect(self.accept_all)
        self.export_button = QPushButton("Export gcp_list.txt…")
        self.export_button.clicked.connect(self._choose_export)
        self.save_button = QPushButton("Save as…")
        self.save_button.clicked.connect(self._choose_save)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        for w in (QLabel("Target:"), self.kind_combo, QLabel("side"), self.side_spin, QLabel("search"),
                  self.radius_spin, find_all, accept_all):
            bottom.addWidget(w)
        bottom.addStretch(1)
        for w in (self.save_button, self.export_button, close):
            bottom.addWidget(w)
        outer.addLayout(bottom)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        outer.addWidget(self.status_label)

    # ------------------------------------------------------------------ sources
    def _choose_alignment(self):
        path, _ = QFileDialog.getOpenFileName(self, "Alignment result", "", "GeoPackage (*.gpkg)")
        if path:
            self._try(self.load_alignment, path)

    def _choose_priors(self):
        path = QFileDialog.getExistingDirectory(self, "Photo folder")
        if path:
            self._try(self.load_priors, path)

    def _choose_control(self):
        path, _ = QFileDialog.getOpenFileName(self, "Control points", "",
                                              "Control (*.txt *.json);;All files (*)")
        if path:
            self._try(self.open_control, path)

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except (ControlError, ValueError, OSError, KeyError) as exc:
            self._error(str(exc))
            return None

    def load_alignment(self, gpkg, image_folder=None):
        self.set_cameras(cameras_from_alignment(gpkg, image_folder=image_folder))

    def load_priors(self, folder):
        self.set_cameras(cameras_from_priors(folder))

    def set_cameras(self, cameras):
        """New cameras: the control set (if any) is carried over, re-predicted in their frame."""
        self.cameras = cameras
        self.cameras_label.setText(cameras.description)
        self.radius_spin.setValue(SEARCH_RADIUS_ALIGNED_PX if cameras.source == "alignment" else SEARCH_RADIUS_PRIORS_PX)
        self._crops.clear()
        if self.session is not None:  # the same points, re-predicted; saved with the new cameras' result
            path = cameras.workspace / MEASUREMENTS_FILE if cameras.workspace else self.session.path
            self._set_session(MarkingSession(cameras, self.session.control, path))
        elif cameras.workspace is not None and (cameras.workspace / MEASUREMENTS_FILE).is_file():
            self._set_session(MarkingSession.open(cameras))  # resume the saved session
        else:
            self._show_points()

    def _need_cameras(self):
        if self.cameras is None:
            raise ValueError("open an alignment result or a photo folder first: the control points are "
                             "predicted through its cameras")

    def open_control(self, path, check_points=None):
        self._need_cameras()
        self._set_session(MarkingSession.open(self.cameras, path, check_points))
        self.control_label.setText(self._control_text())

    def use_layer(self, layer, name_field, height_field=""):
        """Control points from a QGIS point layer (any CRS): a name field, the height from a field or Z."""
        self._need_cameras()
        if layer is None:
            raise ValueError("choose a point layer")
        if not name_field:
            raise ValueError(f"layer {layer.name()}: choose the field that holds the point names")
        has_z = QgsWkbTypes.hasZ(layer.wkbType())
        if not height_field and not has_z:
            raise ValueError(f"layer {layer.name()}: its points have no Z; choose the field that holds the heights")
        rows = []
        for f in layer.getFeatures():
            g = f.geometry()
            if g.isNull() or g.isEmpty():
                rows.append((f[name_field], None, None, None))
                continue
            pt = g.constGet()
            if QgsWkbTypes.isMultiType(g.wkbType()):
                pt = pt.geometryN(0)
            z = f[height_field] if height_field else (pt.z() if has_z else None)
            rows.append((f[name_field], pt.x(), pt.y(), None if z is None or z == "" else float(z)))
        crs = layer.crs()
        if not crs.isValid():
            raise ValueError(f"layer {layer.name()}: no CRS; set the layer's CRS first")
        crs_text = crs.authid() if crs.authid().split(":")[0] in ("EPSG", "ESRI", "IGNF") else crs.toProj()
        cs = control_from_points(rows, crs_text, source=f"layer {layer.name()}")
        path = self.session.path if self.session else (
            self.cameras.workspace / MEASUREMENTS_FILE if self.cameras.workspace else None)
        if path is not None and Path(path).is_file():
            merge_measurements(cs, load_measurements(path))
        self._set_session(MarkingSession(self.cameras, cs, path))
        self.control_label.setText(self._control_text())

    def _control_text(self):
        cs = self.session.control
        return (f"{os.path.basename(cs.source) if os.path.exists(cs.source) else cs.source}: "
                f"{len(cs.points)} points, CRS {cs.crs if len(cs.crs) < 40 else cs.crs[:37] + '…'}")

    def _set_session(self, session):
        self.session = session
        self._crops.clear()
        self.control_label.setText(self._control_text())
        for w in session.control.warnings:
            self._status(w, warn=True)
        self._show_points()
        if session.control.points:
            self.select_point(self.current if self.current in session.control.by_name() else
                              session.control.points[0].name)

    # ------------------------------------------------------------------ the point table
    def _show_points(self):
        self._filling = True
        points = self.session.control.points if self.session else []
        self.table.setRowCount(len(points))
        for r, p in enumerate(points):
            self.table.setItem(r, 0, QTableWidgetItem(p.name))
            role = QComboBox()
            role.addItems(["control", "check"])
            role.setCurrentText(p.role)
            role.currentTextChanged.connect(lambda text, name=p.name: self.set_role(name, text))
            self.table.setCellWidget(r, 1, role)
            for c in (2, 3, 4, 5):
                self.table.setItem(r, c, QTableWidgetItem(""))
            self._update_row(r, p.name)
        self._filling = False
        self._update_summary()

    def _update_summary(self):
        pts = self.session.control.points if self.session else []
        n_meas = sum(len(p.measurements) for p in pts)
        roles = [p.role for p in pts]
        usable = sum(1 for p in pts if not p.problems)
        path = self.session.path if self.session else None
        in_ws = path is not None and self.cameras is not None and path.parent == self.cameras.workspace
        where = f"<br>Saved in {path.parent.name}/{path.name}{' (the alignment workspace)' if in_ws else ''}" if path else ""
        self.summary_label.setToolTip(str(path) if path else "")
        self.summary_label.setText(
            f"{len(pts)} points: {roles.count('control')} control, {roles.count('check')} check; "
            f"{n_meas} measurements; {usable} of {len(pts)} usable (2+ photos){where}")

    def _row_of(self, name):
        return next(r for r in range(self.table.rowCount()) if self.table.item(r, 0).text() == name)

    def _update_row(self, r, name):
        p = self.session.point(name)
        marked, predicted = self.session.counts(name)
        self.table.item(r, 2).setText(str(marked))
        self.table.item(r, 3).setText(str(predicted))
        off = self.session.offsets(name)
        worst = max(off, key=off.get) if off else None
        item = self.table.item(r, 4)
        item.setText(f"{max(off.values()):.1f}" if off else "")
        item.setToolTip(f"largest distance from the prediction: {worst}" if worst else "")
        far = bool(off) and off[worst] > OFF_WARN_PX and self.cameras.source == "alignment"
        item.setForeground(QColor(200, 110, 0) if far else QColor(60, 60, 60))
        status = "; ".join(p.problems) if p.problems else "ok"
        item = self.table.item(r, 5)
        if p.problems:
            item.setText("needs 2+ photos" if marked < 2 else status)
        elif far:
            item.setText(f"{worst}: {off[worst]:.1f} px off")
            status = f"{worst}: marked {off[worst]:.1f} px from where the adjusted cameras put the point: wrong spot?"
        else:
            item.setText("ok")
        item.setToolTip(status)
        item.setForeground(QColor(30, 140, 60) if item.text() == "ok" else QColor(200, 110, 0))

    def _selection_changed(self):
        if self._filling:
            return
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self._show_point(self.table.item(rows[0].row(), 0).text())

    def select_point(self, name):
        self.table.selectRow(self._row_of(name))
        if self.current != name:  # selecting the selected row emits nothing
            self._show_point(name)

    def set_role(self, name, role):
        self.session.set_role(name, role)
        combo = self.table.cellWidget(self._row_of(name), 1)
        if combo.currentText() != role:
            combo.setCurrentText(role)
        self._changed(name)

    # ------------------------------------------------------------------ the photos of a point
    def _show_point(self, name):
        self.current = name
        self._update_point_label(name)
        while self.tiles_layout.count():
            w = self.tiles_layout.takeAt(0).widget()
            if w is not None:
                w.hide()  # at once: deleteLater waits for the event loop
                w.deleteLater()
        self.tiles = {}
        photos = self.session.photos(name)
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            self._read_crops(name, photos)
            for k, ph in enumerate(photos):
                tile = self._make_tile(name, ph)
                self.tiles[ph["image"]] = tile
                self.tiles_layout.addWidget(tile, k // TILE_COLUMNS, k % TILE_COLUMNS)
        finally:
            QApplication.restoreOverrideCursor()
        if not photos:
            self.tiles_layout.addWidget(QLabel(f"{name} is predicted in none of the photos."), 0, 0)
        n_pred = sum(1 for ph in photos if ph["predicted"])
        self._status(f"{name}: predicted in {n_pred} photos, marked in {len(self.session.point(name).measurements)}")

    def _read_crops(self, name, photos):
        """The crops of a point's photos not read yet, centred on the prediction (else the measurement)."""
        half = int(max(CROP_HALF_PX, 4 * self.radius_spin.value()))  # priors: metres of GPS error around
        todo = [ph for ph in photos if (name, ph["image"]) not in self._crops]
        requests = [(self.cameras.paths[self.cameras.index(ph["image"])],
                     *(ph["predicted"] or (ph["measurement"].x, ph["measurement"].y)), half) for ph in todo]
        for ph, request in zip(todo, requests):  # threads gained nothing on 2 busy cores: kept serial
            self._crops[(name, ph["image"])] = read_crop(*request)

    def _update_point_label(self, name):
        p = self.session.point(name)
        xyz = ", ".join("–" if v != v else f"{v:.3f}" for v in p.xyz)
        unposed = ", ".join(m.image for m in self.session.unposed(name))
        self.point_label.setText(f"<b>{name}</b> ({p.role}) surveyed at {xyz} ({self.session.control.crs[:40]})"
                                 + ("".join(f"<br><span style='color:#c86e00'>{t}</span>" for t in p.problems))
                                 + (f"<br>Also measured in {unposed} (no camera pose there: kept, not shown)"
                                    if unposed else ""))

    def _make_tile(self, name, ph):
        image = ph["image"]
        centre = ph["predicted"] or (ph["measurement"].x, ph["measurement"].y)
        rgb, x0, y0 = self._crops[(name, image)]
        tile = PhotoTile(image)
        tile.view.set_photo(rgb, x0, y0)
        tile.placed.connect(self.place)
        tile.remove_requested.connect(self.remove)
        tile.find_requested.connect(self.find)
        tile.accept_requested.connect(self.accept_proposal)
        self._refresh_tile(tile, ph)
        tile.view.show_around(centre[0], centre[1], self._view_half())
        return tile

    def _view_half(self):
        return VIEW_HALF_ALIGNED_PX if self.cameras.source == "alignment" else 1.5 * self.radius_spin.value()

    def _refresh_tile(self, tile, ph=None):
        if ph is None:
            ph = next(p for p in self.session.photos(self.current) if p["image"] == tile.image)
        tile.show_state(ph["predicted"], ph["measurement"], self.session.proposals.get((self.current, tile.image)))

    def showEvent(self, event):  # noqa: N802
        super().showEvent(event)
        self._refit()

    def _refit(self):
        """fitInView needs the final widget sizes: redo the first view once the dialog is shown."""
        for image, tile in self.tiles.items():
            ph = next((p for p in self.session.photos(self.current) if p["image"] == image), None)
            if ph is None:
                continue
            centre = ph["predicted"] or (ph["measurement"].x, ph["measurement"].y)
            tile.view.show_around(centre[0], centre[1], self._view_half())

    # ------------------------------------------------------------------ editing
    def place(self, image, x, y):
        try:
            self.session.set_measurement(self.current, image, x, y, "user")
        except ValueError as exc:
            self._status(str(exc), warn=True)
        self._after_edit(image)

    def remove(self, image):
        self.session.remove_measurement(self.current, image)
        self.session.proposals.pop((self.current, image), None)
        self._after_edit(image)

    def find(self, image):
        det = self.session.find(self.current, image, self.side_spin.value(), self.kind_combo.currentText(),
                                self.radius_spin.value())
        self._refresh_tile(self.tiles[image])
        if det is None:
            self._status(f"{self.current} in {image}: no target found within {self.radius_spin.value():.0f} px "
                         "(mark it by clicking)", warn=True)
        else:
            self._status(f"{self.current} in {image}: {det.kind} found at {det.x:.2f}, {det.y:.2f}: Accept to use it")
        return det

    def find_all(self):
        found = 0
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            for image in list(self.tiles):
                if self.tiles[image].find_button.isEnabled():
                    found += self.find(image) is not None
        finally:
            QApplication.restoreOverrideCursor()
        self._status(f"{self.current}: a target found in {found} of {len(self.tiles)} photos; check each, then Accept")
        return found

    def accept_proposal(self, image):
        if self.session.accept(self.current, image) is not None:
            self._after_edit(image)

    def accept_all(self):
        for image in list(self.tiles):
            if (self.current, image) in self.session.proposals:
                self.session.accept(self.current, image)
        for image in list(self.tiles):
            self._refresh_tile(self.tiles[image])
        self._changed(self.current)

    def _after_edit(self, image):
        if image in self.tiles:
            self._refresh_tile(self.tiles[image])
        self._changed(self.current)

    def _changed(self, name):
        """After any edit: the table row, and the session saved at once (atomically)."""
        self._update_row(self._row_of(name), name)
        self._update_summary()
        if name == self.current:
            self._update_point_label(name)
        if self.session.path is not None:
            try:
                path = self.session.save()
                self.status_label.setText(f"Saved to {path}")
                self.status_label.setStyleSheet("")
            except OSError as exc:
                self._status(f"could not save the measurements: {exc}", warn=True)
        else:
            self._status("Not saved yet: no alignment workspace; use Save as…", warn=True)

    # ------------------------------------------------------------------ files
    def _choose_save(self):
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save the marking session", "control_measurements.json",
                                              "JSON (*.json)")
        if path:
            self._try(self.session.save, path)
            self._status(f"Saved to {path}")

    def _choose_export(self):
        if self.session is None:
            return
        start = str(self.cameras.workspace.parent / "gcp_list.txt") if self.cameras.workspace else "gcp_list.txt"
        path, _ = QFileDialog.getSaveFileName(self, "Export gcp_list.txt", start, "gcp_list (*.txt)")
        if path:
            self.export(path)

    def export(self, path):
        out = self._try(self.session.export, path)
        if out is not None:
            n = sum(len(p.measurements) for p in self.session.control.points)
            self._status(f"Exported {n} measurements of {len(self.session.control.points)} points to {out} "
                         "(use it as GCP_FILE)")
        return out

    # ------------------------------------------------------------------ messages
    def _status(self, text, warn=False):
        self.status_label.setText(text)
        self.status_label.setStyleSheet("color: #c86e00;" if warn else "")

    def _error(self, text):
        self._status(text, warn=True)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("AlignKit", text, Qgis.Warning, 6)
        if self.isVisible():
            QMessageBox.warning(self, "AlignKit", text)
