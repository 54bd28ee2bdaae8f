"""alignkit:alignstack — align a stack of images to a reference (thin wrapper of core.stack)."""
import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
)

from ..core import fusion, stack
from ..core.cancel import Canceled
from .base import AlignKitAlgorithm, feedback_progress


class AlignStackAlgorithm(AlignKitAlgorithm):
    GROUP = ("Image stacks", "imagestacks")

    def name(self):
        return "alignstack"

    def displayName(self):  # noqa: N802
        return "Align image stack"

    def shortHelpString(self):  # noqa: N802
        return (
            "Aligns every image of a folder (a handheld focus or exposure bracket, photos at different zoom, "
            "a photo and a georeferenced raster) to a reference image, pixel for pixel: SIFT features and a "
            "robust fit of the chosen MODEL, refined by ECC on an image pyramid, then (CROP) a crop to the "
            "largest rectangle every aligned image covers. Writes the aligned images (same format and bit "
            "depth) and transforms.json (matrix of each image to the reference, status and reason, MSE / NCC "
            "/ SSIM before and after, crop rectangle) into OUTPUT_FOLDER. Frames that cannot be aligned are "
            "rejected with their reason, not written. The input folder is never written to. "
            "FUSE also fuses the aligned, cropped frames into one image beside them (focus: sharp everywhere, "
            "with the depth map; exposure: detail in shadows and highlights), named in transforms.json as "
            "\"fused\"; frames that could not be aligned are left out and named. Outputs an earlier run wrote "
            "into OUTPUT_FOLDER that this run does not are removed, and listed."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "INPUT", "Image folder", behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(
            "REFERENCE", "Reference image (file name in the folder; default: the middle image by name)",
            optional=True))
        # static strings: scripts and `make align-stack MODEL=affine` pass the model's name
        self.addParameter(QgsProcessingParameterEnum(
            "MODEL", "Transformation model", options=list(stack.MODELS), defaultValue="homography",
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterBoolean(
            "CROP", "Crop to the area common to all aligned images", defaultValue=True))
        # static strings: `make align-stack FUSE=focus` passes the mode's name
        self.addParameter(QgsProcessingParameterEnum(
            "FUSE", "Fuse the aligned frames into one image", options=list(fusion.FUSE_MODES), defaultValue="none",
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Output folder"))
        self.addOutput(QgsProcessingOutputFile("TRANSFORMS", "transforms.json"))
        self.addOutput(QgsProcessingOutputNumber("ALIGNED", "Images aligned (reference excluded)"))
        self.addOutput(QgsProcessingOutputNumber("REJECTED", "Images rejected"))
        self.addOutput(QgsProcessingOutputFile("FUSED", "Fused image (when FUSE is not none)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        folder = self.parameterAsFile(parameters, "INPUT", context)
        output = self.parameterAsString(parameters, "OUTPUT_FOLDER", context)
        model_name = self.parameterAsEnumString(parameters, "MODEL", context) or "homography"
        config = stack.StackConfig(
            model=model_name,
            reference=(self.parameterAsString(parameters, "REFERENCE", context) or "").strip(),
            crop=self.parameterAsBool(parameters, "CROP", context),
            fuse=self.parameterAsEnumString(parameters, "FUSE", context) or "none",
        )
        if not folder:
            raise QgsProcessingException("no image folder given (INPUT)")

        progress = feedback_progress(feedback)

        try:
            document = stack.align_stack(folder, output, config, progress=progress,
                                         is_canceled=feedback.isCanceled)
        except Canceled:
            raise QgsProcessingException("Stack alignment cancelled") from None
        except (OSError, ValueError) as e:
            raise QgsProcessingException(str(e)) from e
        aligned = rejected = 0
        for entry in document["images"]:
            if entry["status"] == "aligned":
                aligned += 1
            elif entry["status"] == "rejected":
                rejected += 1
                feedback.pushWarning(f"{entry['image']} rejected: {entry['reason']}")
        removed = document.get("removed_earlier_outputs") or []
        if removed:
            feedback.pushWarning(f"removed {len(removed)} output(s) an earlier run wrote into {output} that this "
                                 f"run did not: {', '.join(removed)}")
        if document.get("fused_note"):
            feedback.pushWarning(document["fused_note"])
        fused = os.path.join(output, document["fused"]) if document.get("fused") else None
        if fused:
            feedback.pushInfo(f"fused ({config.fuse}) into {fused}")
        crop = document["crop"]
        feedback.pushInfo(
            f"{aligned} images aligned to {document['reference']} ({document['model']}), {rejected} rejected; "
            f"crop {crop['width']} x {crop['height']} at ({crop['x']}, {crop['y']}); written to {output}")
        return {"OUTPUT_FOLDER": output,
                "TRANSFORMS": os.path.join(output, "transforms.json"), "ALIGNED": aligned, "REJECTED": rejected,
                "FUSED": fused}
