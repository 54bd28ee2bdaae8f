"""alignkit:photopriors through QGIS Processing (pytest-qgis, offscreen): layers, CRS, fields, bad input."""
import shutil

import pytest
from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsVectorLayer,
    QgsWkbTypes,
)

pytestmark = pytest.mark.qgis

BRIEF_FIELDS = [
    "image", "status", "problem", "make", "model", "width", "height", "capture_time", "focal_mm", "focal_35mm",
    "sensor_width_mm", "focal_px", "focal_source", "lat", "lon", "gps_alt", "rel_alt", "abs_alt", "gimbal_yaw",
    "gimbal_pitch", "gimbal_roll", "flight_yaw",
]


class Feedback(QgsProcessingFeedback):
    """Keeps every message, so tests can check what the user is told."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        self.messages.append(error)

    def pushInfo(self, info):  # noqa: N802
        self.messages.append(info)

    def pushWarning(self, warning):  # noqa: N802
        self.messages.append(warning)


@pytest.fixture(scope="module")
def registered(alignkit_provider):
    assert alignkit_provider.algorithm("photopriors") is not None


def run(params):
    import processing

    feedback = Feedback()
    try:
        return processing.run("alignkit:photopriors", params, feedback=feedback), feedback
    except QgsProcessingException as e:
        raise QgsProcessingException(f"{e} | {' | '.join(feedback.messages)}") from e


def layer(path, name):
    lyr = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
    assert lyr.isValid(), f"{path}: no layer {name}"
    return lyr


def test_brighton_priors_layers(registered, shared, tmp_path):
    images = shared("brighton_beach", "images")
    out = tmp_path / "brighton priors.gpkg"
    result, feedback = run({"IMAGES": str(images), "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out) and result["IMAGES_READ"] == 18 and result["USABLE"] == 18
    assert result["CRS"] == "EPSG:32615"  # UTM 15N: brighton_beach is at 92 W
    cameras, footprints = layer(out, "cameras"), layer(out, "footprints")
    assert cameras.crs().authid() == footprints.crs().authid() == "EPSG:32615"
    assert cameras.featureCount() == footprints.featureCount() == 18
    assert QgsWkbTypes.hasZ(cameras.wkbType()) and QgsWkbTypes.geometryType(cameras.wkbType()) == 0
    assert QgsWkbTypes.geometryType(footprints.wkbType()) == QgsWkbTypes.PolygonGeometry
    assert set(BRIEF_FIELDS) <= set(cameras.fields().names())
    points = {}
    for f in cameras.getFeatures():
        assert f["status"] == "ok" and f["focal_source"] == "focal_and_sensor_width"
        assert f["focal_px"] == pytest.approx(2340.36, abs=0.01)
        assert 39.5 < f["rel_alt"] < 40.5
        assert f.geometry().constGet().z() == pytest.approx(f["gps_alt"], abs=1e-6)
        points[f["image"]] = f.geometry()
    for f in footprints.getFeatures():
        # Near-nadir cameras (pitch -89.9): the footprint is centred under the camera, 40 m below.
        centroid = f.geometry().centroid().asPoint()
        camera_xy = points[f["image"]].constGet()
        assert centroid.distance(camera_xy.x(), camera_xy.y()) < 0.2
        assert f["orientation_source"] == "gimbal"
        # 4000 x 2250 px at 40 m with f = 2340 px: 68 x 38 m.
        assert f.geometry().area() == pytest.approx(f["height_above_ground"] ** 2 * 4000 * 2250 / 2340.36**2,
                                                    rel=1e-3)
    assert any("written to" in m for m in feedback.messages)


def test_ground_height_and_target_crs(registered, shared, tmp_path):
    images = shared("brighton_beach", "images")
    out = tmp_path / "geographic.gpkg"
    result, _ = run({"IMAGES": str(images), "OUTPUT": str(out), "TARGET_CRS": "EPSG:4326", "GROUND_HEIGHT": 162.3})
    cameras, footprints = layer(out, "cameras"), layer(out, "footprints")
    assert cameras.crs().authid() == "EPSG:4326" and result["CRS"] == "EPSG:4326"
    gps_alt = {}
    for f in cameras.getFeatures():
        p = f.geometry().constGet()
        assert (p.x(), p.y()) == pytest.approx((f["lon"], f["lat"]), abs=1e-9)
        gps_alt[f["image"]] = f["gps_alt"]
    for f in footprints.getFeatures():
        assert f["height_above_ground"] == pytest.approx(gps_alt[f["image"]] - 162.3, abs=1e-6)
        assert f["ground_alt"] == pytest.approx(162.3, abs=1e-6)


def test_photo_without_gps_gets_a_feature_without_geometry(registered, shared, tmp_path):
    src = shared("webodm_fixtures")
    images = tmp_path / "mixed photos"
    images.mkdir()
    shutil.copyfile(src / "tiny_drone_image.jpg", images / "with gps.jpg")
    shutil.copyfile(src / "orthophoto.tif", images / "ortho.tif")
    (images / "notes.txt").write_text("x")
    out = tmp_path / "mixed.gpkg"
    result, feedback = run({"IMAGES": str(images), "OUTPUT": str(out)})
    assert result["IMAGES_READ"] == 2 and result["USABLE"] == 1
    assert result["CRS"] == "EPSG:32617"  # the Canon photos are at 81.7 W
    features = {f["image"]: f for f in layer(out, "cameras").getFeatures()}
    assert features["ortho.tif"]["status"] == "no_gps"
    assert features["ortho.tif"].geometry().isNull()
    assert "no GPS position" in features["ortho.tif"]["problem"]
    assert features["with gps.jpg"]["status"] == "ok" and not features["with gps.jpg"].geometry().isNull()
    # No RelativeAltitude and no GROUND_HEIGHT: no footprint, and the camera says why.
    assert layer(out, "footprints").featureCount() == 0
    assert "no footprint" in features["with gps.jpg"]["problem"]
    assert any("notes.txt" in m and "not an image" in m for m in feedback.messages)


def test_missing_and_empty_folders_are_clear_errors(registered, tmp_path):
    missing = tmp_path / "no such folder"
    with pytest.raises(QgsProcessingException, match="no such folder"):
        run({"IMAGES": str(missing), "OUTPUT": str(tmp_path / "a.gpkg")})
    empty = tmp_path / "empty folder"
    empty.mkdir()
    with pytest.raises(QgsProcessingException, match="no images .*empty folder"):
        run({"IMAGES": str(empty), "OUTPUT": str(tmp_path / "b.gpkg")})
    assert not (tmp_path / "a.gpkg").exists() and not (tmp_path / "b.gpkg").exists()
    assert list(empty.iterdir()) == []


def test_output_inside_the_image_folder_is_refused(registered, shared, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    shutil.copyfile(shared("webodm_fixtures", "tiny_drone_image.jpg"), images / "a.jpg")
    with pytest.raises(QgsProcessingException, match="never written to"):
        run({"IMAGES": str(images), "OUTPUT": str(images / "priors.gpkg")})
    assert [p.name for p in images.iterdir()] == ["a.jpg"]

