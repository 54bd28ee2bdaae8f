"""What the AlignKit algorithms share: groups, instancing, progress, and publishing a styled GeoPackage."""
from qgis.core import QgsProcessingAlgorithm, QgsProcessingContext

from ..ui.layers import styled_layers


class AlignKitAlgorithm(QgsProcessingAlgorithm):
    GROUP = ("Photo alignment", "photoalignment")  # (display name, id)

    def group(self):
        return self.GROUP[0]

    def groupId(self):  # noqa: N802
        return self.GROUP[1]

    def createInstance(self):  # noqa: N802
        return type(self)()


def feedback_progress(feedback):
    """core's progress(fraction, message) callback on Processing feedback. A message goes to the log
    only when it changes: per-image and per-pair calls repeat it (87 "matching pairs" lines otherwise)."""
    last = [None]

    def progress(fraction, message=""):
        feedback.setProgress(100.0 * fraction)
        if message and message != last[0]:
            last[0] = message
            feedback.setProgressText(message)

    return progress


def publish_geopackage(gpkg, styles, image_folder, context):
    """Store each layer's style in the GeoPackage (it looks the same wherever it is opened) and, in
    a project, load the layers when the algorithm completes. `styles` lists layers top first."""
    styled_layers(gpkg, styles, image_folder)
    if context.project() is not None:
        for name in reversed(list(styles)):  # loaded bottom first, so the first one ends up on top
            details = QgsProcessingContext.LayerDetails(name, context.project(), "OUTPUT")
            context.addLayerToLoadOnCompletion(f"{gpkg}|layername={name}", details)
