"""alignkit:alignphotos — drone photos to a georeferenced sparse reconstruction (thin wrapper of core.pipeline)."""
import os

import pyproj
from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingParameterCrs,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core import pipeline
from ..core.cancel import Canceled
from ..core.config import DEFAULT_PRESET, PRESETS, AlignConfig
from ..core.geo import ALTITUDE_REFERENCES
from ..ui.layers import RESULT_STYLES
from .base import AlignKitAlgorithm, feedback_progress, publish_geopackage
from .help import help_html


def preset_name(value):
    """A PRESET value as a preset name: a name (any case) or an index into PRESETS, as an int or a
    string ("balanced", "1", 1); None when it is neither."""
    names = list(PRESETS)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in PRESETS:
            return text.lower()
        value = int(text) if text.isdigit() else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    return None


class AlignPhotosAlgorithm(AlignKitAlgorithm):
    PRESET_NAMES = list(PRESETS)

    def name(self):
        return "alignphotos"

    def displayName(self):  # noqa: N802
        return "Align drone photos"

    def shortHelpString(self):  # noqa: N802
        return help_html(
            "Aligns a folder of geotagged photos (structure from motion): SIFT features, GPS-guided pairs, "
            "RANSAC-verified matches, incremental reconstruction and bundle adjustment with GPS priors. "
            "Writes a GeoPackage with the layers cameras, footprints, sparse_points and pairs in the target "
            "CRS (default: the UTM zone of the photos) and, beside it, <name>_summary.json, "
            "<name>_report.html (the quality report, verdict first), <name>_sparse.ply, the adjusted "
            "cameras for other software (<name>_cameras.csv, <name>_bundle/ for Bundler, <name>_colmap/ "
            "for COLMAP) and a resumable <name>_workspace folder. The image folder is never written to. "
            "Ground control: GCP_FILE (OpenDroneMap gcp_list.txt or OpenSfM ground_control_points.json) adds "
            "control points to a final adjustment (run again after editing it: only that step is redone); "
            "CHECK_POINTS names the points only checked; the layer control_points and the summary's "
            "control_rmse_m / check_rmse_m give dX, dY, dZ and the RMSE per axis.",
            self.parameterDefinitions(), self.outputDefinitions(),
            notes=["PRESET takes a name (" + ", ".join(f"{k}: {v['max_image_size']} px, {v['max_features']} "
                   "features" for k, v in PRESETS.items()) + ") or its index (0, 1, 2)."])

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "IMAGES", "Photo folder", behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterCrs(
            "TARGET_CRS", "Target CRS (default: UTM zone of the photos)", optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Output GeoPackage", fileFilter="GeoPackage (*.gpkg)"))
        self.addParameter(QgsProcessingParameterEnum(
            "PRESET", "Quality preset", options=self.PRESET_NAMES, defaultValue=self.PRESET_NAMES.index(DEFAULT_PRESET)))
        self.addParameter(QgsProcessingParameterFile(
            "GCP_FILE", "Ground control points (gcp_list.txt or OpenSfM JSON)", optional=True,
            fileFilter="Control points (*.txt *.json)"))
        self.addParameter(QgsProcessingParameterString(
            "CHECK_POINTS", "Check points (comma-separated names, kept out of the adjustment)", optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "REFERENCE_DEM", "Reference DEM (vertical control when there are no control points)", optional=True))
        defaults = AlignConfig()
        advanced = [
            QgsProcessingParameterNumber("MAX_IMAGE_SIZE", "Working image size (long side, px; 0 = preset)",
                                         defaultValue=0, minValue=0, maxValue=20000),
            QgsProcessingParameterNumber("MAX_FEATURES", "Features per image (0 = preset)",
                                         defaultValue=0, minValue=0, maxValue=100000),
            QgsProcessingParameterNumber("PAIR_NEIGHBORS", "GPS neighbours matched per photo",
                                         defaultValue=defaults.pair_neighbors, minValue=2, maxValue=200),
            QgsProcessingParameterNumber("FOCAL_PX", "Calibrated focal length (px of the full-size photos; 0 = EXIF)",
                                         type=QgsProcessingParameterNumber.Double, defaultValue=0.0, minValue=0.0),
            QgsProcessingParameterNumber("WORKERS", "Worker processes (0 = all cores)",
                                         defaultValue=0, minValue=0, maxValue=256),
            QgsProcessingParameterString(
                "EXECUTOR", "Dask scheduler (tcp://host:port; empty = local process pool; shared storage)",
                optional=True),
            QgsProcessingParameterNumber(
                "SUBMODEL_PHOTOS", "Reconstruct larger blocks as overlapping submodels of this many photos (0 = one model)",
                defaultValue=defaults.submodel_photos, minValue=0, maxValue=1000000),
            QgsProcessingParameterFile("WORKSPACE", "Workspace folder (default: beside the output)",
                                       behavior=QgsProcessingParameterFile.Folder, optional=True),
            QgsProcessingParameterEnum(
                "ALTITUDE_REFERENCE", "Meaning of the photos' GPS altitude (makers differ; egm96 is an assumption)",
                options=list(ALTITUDE_REFERENCES), defaultValue=defaults.altitude_reference, usesStaticStrings=True),
            QgsProcessingParameterNumber(
                "ALTITUDE_OFFSET_M", "Ellipsoidal height minus GPS altitude (m; with ALTITUDE_REFERENCE offset)",
                type=QgsProcessingParameterNumber.Double, defaultValue=defaults.altitude_offset_m),
        ]
        for p in advanced:
            p.setFlags(p.flags() | p.FlagAdvanced)
            self.addParameter(p)
        self.addOutput(QgsProcessingOutputFile("SUMMARY", "Summary JSON"))
        self.addOutput(QgsProcessingOutputFile("REPORT", "Quality report (HTML)"))
        self.addOutput(QgsProcessingOutputFile("PLY", "Sparse point cloud (PLY)"))
        self.addOutput(QgsProcessingOutputFile("CAMERAS_CSV", "Adjusted cameras (CSV)"))
        self.addOutput(QgsProcessingOutputFolder("BUNDLE", "Bundler model folder"))
        self.addOutput(QgsProcessingOutputFolder("COLMAP", "COLMAP text model folder"))
        self.addOutput(QgsProcessingOutputNumber("REGISTERED", "Registered photos"))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """PRESET by name as well as by index: QGIS's enum parameter takes one or the other."""
        value = parameters.get("PRESET")
        if isinstance(value, str):  # a name or an index as text ("balanced", "1"); other kinds: QGIS's check
            name = preset_name(value)
            if name is None:
                return False, (f"PRESET: {value!r} is not a quality preset; use one of "
                               f"{', '.join(self.PRESET_NAMES)} or its index 0-{len(self.PRESET_NAMES) - 1}")
            parameters = dict(parameters)
            parameters["PRESET"] = self.PRESET_NAMES.index(name)
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        config = self.config_from_parameters(parameters, context)

        progress = feedback_progress(feedback)

        try:
            summary = pipeline.run(config, progress=progress, is_canceled=feedback.isCanceled)
        except Canceled:
            raise QgsProcessingException(
                "Alignment cancelled; run it again with the same settings to resume from the workspace"
            ) from None
        except (pipeline.AlignmentError, FileNotFoundError, ValueError) as e:
            raise QgsProcessingException(str(e)) from e
        for w in summary.get("warnings", []):
            feedback.pushWarning(w)
        feedback.pushInfo(
            f"{summary['registered']}/{summary['images']} photos registered, {summary['points']} points, "
            f"mean reprojection {summary['mean_reproj_px']:.2f} px, CRS {summary['crs']}, {summary['total_s']:.1f} s")
        publish_geopackage(config.output, RESULT_STYLES, config.images, context)
        outputs = summary["outputs"]
        return {"OUTPUT": config.output, "SUMMARY": outputs["summary"], "REPORT": outputs.get("report"),
                "PLY": outputs.get("ply"), "CAMERAS_CSV": outputs.get("cameras_csv"),
                "BUNDLE": outputs.get("bundle"), "COLMAP": outputs.get("colmap"),
                "REGISTERED": summary["registered"]}

    def config_from_parameters(self, parameters, context):
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith(".gpkg"):
            output = os.path.splitext(output)[0] + ".gpkg"
        crs = self.parameterAsCrs(parameters, "TARGET_CRS", context)
        preset = preset_name(parameters.get("PRESET"))
        if preset is None:  # absent, or an expression / property: QGIS's reading of it
            preset = self.PRESET_NAMES[self.parameterAsEnum(parameters, "PRESET", context)]
        config = AlignConfig(
            images=self.parameterAsFile(parameters, "IMAGES", context),
            output=output,
            workspace=self.parameterAsFile(parameters, "WORKSPACE", context) or "",
            target_crs=crs.authid() if crs.isValid() else "",
            pair_neighbors=self.parameterAsInt(parameters, "PAIR_NEIGHBORS", context),
            workers=self.parameterAsInt(parameters, "WORKERS", context),
            executor=(self.parameterAsString(parameters, "EXECUTOR", context) or "").strip(),
            submodel_photos=self.parameterAsInt(parameters, "SUBMODEL_PHOTOS", context),
            focal_px=self.parameterAsDouble(parameters, "FOCAL_PX", context),
            gcp_file=self.parameterAsFile(parameters, "GCP_FILE", context) or "",
            check_points=self.parameterAsString(parameters, "CHECK_POINTS", context) or "",
            altitude_reference=self.parameterAsEnumString(parameters, "ALTITUDE_REFERENCE", context) or "egm96",
            altitude_offset_m=self.parameterAsDouble(parameters, "ALTITUDE_OFFSET_M", context),
            **PRESETS[preset],
        )
        dem = self.parameterAsRasterLayer(parameters, "REFERENCE_DEM", context)
        if dem is not None:
            config.reference_dem = dem.source()
        if crs.isValid() and not crs.authid():
            config.target_crs = crs.toWkt(crs.WKT_PREFERRED)
        raw = parameters.get("TARGET_CRS")
        if not crs.isValid() and isinstance(raw, str) and raw.strip():
            # QGIS 3.22 cannot parse a compound code such as EPSG:32615+5773 (UTM + EGM96 heights) and
            # would silently fall back to the default; PROJ, which core uses, can.
            try:
                config.target_crs = pyproj.CRS.from_user_input(raw.strip()).srs or raw.strip()
            except pyproj.exceptions.CRSError as exc:
                raise QgsProcessingException(f"TARGET_CRS: {raw.strip()!r} is not a CRS that QGIS or PROJ "
                                             f"knows ({exc})") from None
        size = self.parameterAsInt(parameters, "MAX_IMAGE_SIZE", context)
        count = self.parameterAsInt(parameters, "MAX_FEATURES", context)
        if size:
            config.max_image_size = size
        if count:
            config.max_features = count
        return config

