"""alignkit:alignstack through QGIS Processing (pytest-qgis, offscreen): outputs, transforms.json, bad input."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def registered(alignkit_provider):
    assert alignkit_provider.algorithm("alignstack") is not None


def _frames(folder):
    """Three views of one textured scene: the second is the reference; known similarity offsets."""
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.normal(size=(500, 600)).astype(np.float32), (0, 0), 2.0)
    canvas = np.clip(128 + 60 * noise / noise.std(), 0, 255).astype(np.uint8)
    folder.mkdir()
    views = {"a.png": (0.97, 1.5, 110, 95), "b.png": (1.0, 0.0, 100, 100), "c.png": (1.03, -1.0, 92, 106)}
    to_canvas = {}
    for name, (s, deg, tx, ty) in views.items():
        a = np.deg2rad(deg)
        g = np.array([[s * np.cos(a), -s * np.sin(a), tx], [s * np.sin(a), s * np.cos(a), ty], [0, 0, 1]])
        to_canvas[name] = g
        cv2.imwrite(str(folder / name), cv2.warpPerspective(canvas, g, (320, 240),
                                                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return to_canvas


def test_alignstack_writes_images_and_transforms(registered, tmp_path):
    import processing

    to_canvas = _frames(tmp_path / "in")
    feedback = QgsProcessingFeedback()
    result = processing.run("alignkit:alignstack", {
        "INPUT": str(tmp_path / "in"), "MODEL": "similarity", "OUTPUT_FOLDER": str(tmp_path / "out")}, feedback=feedback)
    assert result["ALIGNED"] == 2 and result["REJECTED"] == 0
    doc = json.loads(Path(result["TRANSFORMS"]).read_text())
    assert doc["reference"] == "b.png" and doc["model"] == "similarity"
    corners = np.array([[0, 0, 1], [319, 0, 1], [319, 239, 1], [0, 239, 1]], float)
    for entry in doc["images"]:
        truth = np.linalg.inv(to_canvas["b.png"]) @ to_canvas[entry["image"]]
        mapped = corners @ np.array(entry["matrix"]).T
        assert np.abs(mapped[:, :2] / mapped[:, 2:] - (corners @ truth.T)[:, :2]).max() < 0.2
        image = cv2.imread(str(tmp_path / "out" / entry["image"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (doc["crop"]["height"], doc["crop"]["width"])


def test_alignstack_single_image_is_a_clear_error(registered, tmp_path):
    import processing

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "lonely.png"), np.zeros((50, 60), np.uint8))
    with pytest.raises(QgsProcessingException, match="lonely.png"):
        processing.run("alignkit:alignstack", {"INPUT": str(tmp_path / "in"),
                                               "OUTPUT_FOLDER": str(tmp_path / "out")})


def test_alignstack_fuse_parameter(registered, tmp_path):
    import processing

    _frames(tmp_path / "in")
    feedback = QgsProcessingFeedback()
    result = processing.run("alignkit:alignstack", {
        "INPUT": str(tmp_path / "in"), "MODEL": "similarity", "FUSE": "focus",
        "OUTPUT_FOLDER": str(tmp_path / "out")}, feedback=feedback)
    doc = json.loads(Path(result["TRANSFORMS"]).read_text())
    assert doc["fused"] == "fused_focus.png" and result["FUSED"] == str(tmp_path / "out" / "fused_focus.png")
    fused = cv2.imread(result["FUSED"], cv2.IMREAD_UNCHANGED)
    assert fused.shape == (doc["crop"]["height"], doc["crop"]["width"]) and fused.dtype == np.uint8
    # a rerun without fusion removes the earlier run's fused image and depth map, and says so
    result = processing.run("alignkit:alignstack", {
        "INPUT": str(tmp_path / "in"), "MODEL": "similarity", "OUTPUT_FOLDER": str(tmp_path / "out")},
        feedback=feedback)
    assert not result["FUSED"] and not (tmp_path / "out" / "fused_focus.png").exists()
    doc = json.loads(Path(result["TRANSFORMS"]).read_text())
    assert sorted(doc["removed_earlier_outputs"]) == ["fused_depth.png", "fused_focus.png"]
    assert "removed 2 output(s)" in feedback.textLog()
