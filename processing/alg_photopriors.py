"""alignkit:photopriors — camera positions and predicted footprints from EXIF/XMP (thin wrapper of core.priors)."""
import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterCrs,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core import priors
from ..core.cancel import Canceled
from ..ui.layers import PRIORS_STYLES
from .base import AlignKitAlgorithm, feedback_progress, publish_geopackage
from .help import help_html


class PhotoPriorsAlgorithm(AlignKitAlgorithm):
    def name(self):
        return "photopriors"

    def displayName(self):  # noqa: N802
        return "Photo priors and predicted footprints"

    def shortHelpString(self):  # noqa: N802
        return help_html(
            "Reads each photo's EXIF and DJI XMP (no matching) and writes a GeoPackage with a 'cameras' point "
            "layer (position, altitudes, gimbal angles, focal length in pixels and its source, and every "
            "missing or implausible value in 'problem') and a 'footprints' layer: the ground each photo should "
            "cover on flat ground. The ground lies RelativeAltitude below the camera (DJI height above the "
            "take-off point), or at GROUND_HEIGHT when given (a height in the datum of the camera altitude, "
            "EXIF GPSAltitude, roughly above mean sea level on DJI). The image folder is never written to.",
            self.parameterDefinitions(), self.outputDefinitions())

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "IMAGES", "Photo folder", behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterCrs(
            "TARGET_CRS", "Target CRS (default: UTM zone of the photos)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "GROUND_HEIGHT", "Ground height in the camera altitude's datum (m; default: use RelativeAltitude)",
            type=QgsProcessingParameterNumber.Double, optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Output GeoPackage", fileFilter="GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("IMAGES_READ", "Photos read"))
        self.addOutput(QgsProcessingOutputNumber("USABLE", "Photos with a GPS position"))
        self.addOutput(QgsProcessingOutputString("CRS", "CRS of the layers"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith(".gpkg"):
            output = os.path.splitext(output)[0] + ".gpkg"
        crs = self.parameterAsCrs(parameters, "TARGET_CRS", context)
        ground = parameters.get("GROUND_HEIGHT")
        config = priors.PriorsConfig(
            images=self.parameterAsFile(parameters, "IMAGES", context),
            output=output,
            target_crs=crs.authid() if crs.isValid() else "",
            ground_height=self.parameterAsDouble(parameters, "GROUND_HEIGHT", context)
            if ground not in (None, "") else None,
        )
        if not config.images:
            raise QgsProcessingException("no photo folder given (IMAGES)")

        progress = feedback_progress(feedback)

        try:
            summary = priors.run(config, progress=progress, is_canceled=feedback.isCanceled)
        except Canceled:
            raise QgsProcessingException("Photo priors cancelled") from None
        except (OSError, ValueError) as e:
            raise QgsProcessingException(str(e)) from e
        for path, reason in summary["skipped"]:
            feedback.pushWarning(f"skipped {path}: {reason}")
        for name, problems in summary["problems"].items():
            feedback.pushInfo(f"{name}: {'; '.join(problems)}")
        feedback.pushInfo(
            f"{summary['images']} photos: {summary['ok']} with GPS, {summary['no_gps']} without GPS, "
            f"{summary['unusable']} unusable; {summary['footprints']} footprints; CRS {summary['crs']}; "
            f"{summary['seconds']:.1f} s; written to {output}")
        publish_geopackage(output, PRIORS_STYLES, config.images, context)
        return {"OUTPUT": output, "IMAGES_READ": summary["images"], "USABLE": summary["ok"], "CRS": summary["crs"]}
