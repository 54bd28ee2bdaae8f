"""The `alignkit` Processing provider: one algorithm per job."""
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon


class AlignKitProvider(QgsProcessingProvider):
    def id(self):
        return "alignkit"

    def name(self):
        return "AlignKit"

    def longName(self):  # noqa: N802
        return "AlignKit image alignment"

    def icon(self):
        return QIcon(os.path.join(os.path.dirname(__file__), "..", "resources", "icon.svg"))

    def loadAlgorithms(self):  # noqa: N802
        from .alg_alignphotos import AlignPhotosAlgorithm
        from .alg_alignstack import AlignStackAlgorithm
        from .alg_photopriors import PhotoPriorsAlgorithm

        for alg in (PhotoPriorsAlgorithm(), AlignPhotosAlgorithm(), AlignStackAlgorithm()):
            self.addAlgorithm(alg)
