"""One photo of the marking dialog: a zoomable crop around a control point's prediction.

Scene coordinates ARE photo pixel coordinates: the crop's pixmap is placed so that the centre of
photo pixel (col j, row i) is the scene point (j, i) (the pixmap's top-left corner sits at
(x0 - 0.5, y0 - 0.5)), the convention of core.control. A click maps from the viewport to the scene
through the view's exact transform (zoom and scroll included), with the event's sub-pixel position.

Markers keep their size on screen at any zoom (ItemIgnoresTransformations): the prediction is an
open cross (its centre left free so the ground stays visible), the measurement a circle with a
centre dot, a target proposal a dashed square with a dot.
"""
from qgis.PyQt.QtCore import QPointF, QRectF, Qt, pyqtSignal
from qgis.PyQt.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPen, QPixmap
from qgis.PyQt.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

PREDICTION_COLOUR = QColor(255, 210, 0)  # amber: where the cameras say the point is
MEASUREMENT_COLOUR = QColor(40, 230, 90)  # green: placed by the user (or accepted)
PROPOSAL_COLOUR = QColor(0, 200, 255)  # cyan: found by AlignKit, awaiting confirmation
CLICK_SLOP_PX = 4  # a press and release closer than this (view pixels) is a click, not a drag
GRAB_RADIUS_PX = 10  # a press this close to the measurement drags it
ZOOM_STEP = 1.25
ZOOM_RANGE = (0.05, 64.0)


def numpy_to_pixmap(rgb):
    h, w = rgb.shape[:2]
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888)
    return QPixmap.fromImage(image.copy())  # copy: the QImage must not outlive the numpy buffer


def _marker(path, colour, width=2.0, style=Qt.SolidLine, z=10):
    item = QGraphicsPathItem(path)
    pen = QPen(colour, width, style)
    pen.setCosmetic(True)
    item.setPen(pen)
    item.setFlag(QGraphicsItem.ItemIgnoresTransformations, True)
    item.setZValue(z)
    item.setVisible(False)
    return item


def _with_shadow(scene, path, colour, **kw):
    """A marker drawn twice, dark and wide under the colour, so it reads on sand and on snow alike."""
    shadow = _marker(path, QColor(0, 0, 0, 170), width=4.0, z=kw.get("z", 10) - 1)
    item = _marker(path, colour, **kw)
    scene.addItem(shadow)
    scene.addItem(item)
    return item, shadow


def _cross_path(arm=14.0, gap=4.0):
    p = QPainterPath()
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        p.moveTo(dx * gap, dy * gap)
        p.lineTo(dx * arm, dy * arm)
    return p


def _circle_path(r=8.0):
    p = QPainterPath()
    p.addEllipse(QPointF(0, 0), r, r)
    p.addEllipse(QPointF(0, 0), 1.0, 1.0)
    return p


def _square_path(r=9.0):
    p = QPainterPath()
    p.addRect(QRectF(-r, -r, 2 * r, 2 * r))
    p.addEllipse(QPointF(0, 0), 1.0, 1.0)
    return p


class PhotoView(QGraphicsView):
    """The crop, its markers and the mouse: click places, drag on the measurement moves it, drag
    elsewhere pans, the wheel zooms about the mouse. Emits clicked(x, y) in photo pixels."""

    clicked = pyqtSignal(float, float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.Antialiasing, True)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setBackgroundBrush(QBrush(QColor(40, 40, 40)))
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # drag pans, the wheel zooms
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.pixmap_item = None
        self.prediction, self._p_shadow = _with_shadow(self.scene(), _cross_path(), PREDICTION_COLOUR, z=10)
        self.measured, self._m_shadow = _with_shadow(self.scene(), _circle_path(), MEASUREMENT_COLOUR, z=20)
        self.proposal, self._q_shadow = _with_shadow(self.scene(), _square_path(), PROPOSAL_COLOUR,
                                                     style=Qt.DashLine, z=15)
        self._press = None  # (view position, mode "click" | "drag-marker" | "pan", scroll values)

    # --- content
    def set_photo(self, rgb, x0, y0):
        if self.pixmap_item is not None:
            self.scene().removeItem(self.pixmap_item)
        self.pixmap_item = self.scene().addPixmap(numpy_to_pixmap(rgb))
        self.pixmap_item.setTransformationMode(Qt.FastTransformation)  # pixels stay pixels when zoomed
        self.pixmap_item.setOffset(x0 - 0.5, y0 - 0.5)
        self.pixmap_item.setZValue(0)
        h, w = rgb.shape[:2]
        self.scene().setSceneRect(QRectF(x0 - 0.5, y0 - 0.5, w, h))

    def _place(self, item, shadow, xy):
        for it in (item, shadow):
            it.setVisible(xy is not None)
            if xy is not None:
                it.setPos(QPointF(*xy))

    def set_prediction(self, xy):
        self._place(self.prediction, self._p_shadow, xy)

    def set_measurement(self, xy):
        self._place(self.measured, self._m_shadow, xy)

    def set_proposal(self, xy):
        self._place(self.proposal, self._q_shadow, xy)

    def show_around(self, x, y, half):
        """Zoom so that the square of half-side `half` photo pixels around (x, y) fills the view."""
        self.fitInView(QRectF(x - half, y - half, 2 * half, 2 * half), Qt.KeepAspectRatio)

    def zoom(self):
        return self.transform().m11()

    def zoom_by(self, factor):
        z = self.zoom()
        factor = max(ZOOM_RANGE[0] / z, min(ZOOM_RANGE[1] / z, factor))
        self.scale(factor, factor)

    # --- view <-> photo pixels
    def to_photo(self, view_pos):
        """Viewport position (QPointF, sub-pixel) -> photo pixel (x, y): the view's exact inverse."""
        inverse, ok = self.viewportTransform().inverted()
        p = inverse.map(QPointF(view_pos))
        return p.x(), p.y()

    def to_view(self, x, y):
        return self.viewportTransform().map(QPointF(x, y))

    # --- mouse
    def wheelEvent(self, event):  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(ZOOM_STEP ** steps)
        event.accept()

    def mousePressEvent(self, event):  # noqa: N802
        if event.button() != Qt.LeftButton:
            return super().mousePressEvent(event)
        pos = event.localPos()
        mode = "click"
        if self.measured.isVisible():
            d = self.to_view(self.measured.pos().x(), self.measured.pos().y()) - pos
            if (d.x() ** 2 + d.y() ** 2) ** 0.5 <= GRAB_RADIUS_PX:
                mode = "drag-marker"
        self._press = (pos, mode, self.horizontalScrollBar().value(), self.verticalScrollBar().value())
        event.accept()

    def mouseMoveEvent(self, event):  # noqa: N802
        if self._press is None:
            return super().mouseMoveEvent(event)
        start, mode, h, v = self._press
        d = event.localPos() - start
        if mode == "click" and (d.x() ** 2 + d.y() ** 2) ** 0.5 > CLICK_SLOP_PX:
            mode = "pan"
            self._press = (start, mode, h, v)
            self.viewport().setCursor(Qt.ClosedHandCursor)
        if mode == "pan":
            self.horizontalScrollBar().setValue(int(round(h - d.x())))
            self.verticalScrollBar().setValue(int(round(v - d.y())))
        elif mode == "drag-marker":
            self.set_measurement(self.to_photo(event.localPos()))
        event.accept()

    def mouseReleaseEvent(self, event):  # noqa: N802
        if self._press is None or event.button() != Qt.LeftButton:
            return super().mouseReleaseEvent(event)
        _, mode, _, _ = self._press
        self._press = None
        self.viewport().unsetCursor()
        if mode in ("click", "drag-marker"):
            x, y = self.to_photo(event.localPos())
            self.clicked.emit(x, y)
        event.accept()


class PhotoTile(QFrame):
    """A photo's title, its PhotoView and its buttons; the dialog connects the signals."""

    placed = pyqtSignal(str, float, float)
    find_requested = pyqtSignal(str)
    accept_requested = pyqtSignal(str)
    remove_requested = pyqtSignal(str)

    def __init__(self, image, parent=None):
        super().__init__(parent)
        self.image = image
        self.setFrameShape(QFrame.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)
        self.title = QLabel(f"<b>{image}</b>")
        self.status = QLabel("")
        self.status.setTextFormat(Qt.RichText)
        self.view = PhotoView(self)
        self.view.setMinimumSize(260, 220)
        self.view.clicked.connect(lambda x, y: self.placed.emit(self.image, x, y))
        buttons = QHBoxLayout()
        self.find_button = QPushButton("Find target")
        self.find_button.setToolTip("Look for a checker or ArUco target near the prediction (sub-pixel)")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Use the found target as the measurement")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the measurement in this photo")
        for b, sig in ((self.find_button, self.find_requested), (self.accept_button, self.accept_requested),
                       (self.remove_button, self.remove_requested)):
            b.clicked.connect(lambda _=False, s=sig: s.emit(self.image))
            buttons.addWidget(b)
        layout.addWidget(self.title)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)

    def show_state(self, predicted, measurement, proposal):
        """Markers and the status line for a prediction (x, y) or None, a Measurement or None, a
        core.targets.Detection or None."""
        self.view.set_prediction(predicted)
        self.view.set_measurement((measurement.x, measurement.y) if measurement is not None else None)
        self.view.set_proposal((proposal.x, proposal.y) if proposal is not None else None)
        parts = []
        if measurement is not None:
            how = {"user": "clicked", "auto": "found, accepted", "file": "from file"}.get(measurement.source,
                                                                                     measurement.source)
            parts.append(f"<span style='color:#1a9c3e'>&#9679;</span> marked {measurement.x:.2f}, "
                         f"{measurement.y:.2f} ({how})")
            if predicted is not None:
                d = ((measurement.x - predicted[0]) ** 2 + (measurement.y - predicted[1]) ** 2) ** 0.5
                parts.append(f"{d:.1f} px from the prediction")
        else:
            parts.append("not marked: click on the point")
        if proposal is not None:
            what = f"ArUco {proposal.marker_id}" if proposal.kind == "aruco" else "checker"
            parts.append(f"<span style='color:#0090c0'>&#9632;</span> {what} found at "
                         f"{proposal.x:.2f}, {proposal.y:.2f}: Accept?")
        if predicted is None:
            parts.append("outside the predicted frame")
        self.status.setText("<br>".join(parts))
        marked = measurement is not None
        self.title.setText(f"<b>{self.image}</b>&nbsp;&nbsp;<span style='color:{'#1a9c3e' if marked else '#b07800'}'>"
                           f"{'&#10003; marked' if marked else 'to mark'}</span>")
        self.setStyleSheet(f"PhotoTile {{ border: 2px solid {'#1a9c3e' if marked else '#d9a800'}; border-radius: 3px; }}")
        self.accept_button.setEnabled(proposal is not None)
        self.remove_button.setEnabled(measurement is not None)
        self.find_button.setEnabled(predicted is not None or measurement is not None)
