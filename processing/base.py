"""What the AlignKit algorithms share: groups, instancing, and publishing a styled GeoPackage."""
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


def publish_geopackage(gpkg, styles, image_folder, context):
    """Store each layer's style in the GeoPackage (it looks the same wherever it is opened) and, in
    a project, load the layers when the algorithm completes. `styles` lists layers top first."""
    styled_layers(gpkg, styles, image_folder)
    if context.project() is not None:
        for name in reversed(list(styles)):  # loaded bottom first, so the first one ends up on top
            details = QgsProcessingContext.LayerDetails(name, context.project(), "OUTPUT")
            context.addLayerToLoadOnCompletion(f"{gpkg}|layername={name}", details)
