"""Survey targets: painted into generated photos at known ground points, found again at sub-pixel
precision near a (deliberately wrong) prediction; nothing is found where no target is."""
import cv2
import numpy as np
import pytest

from alignkit.core.control import read_control, to_local
from alignkit.core.geo import LocalFrame
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth
from alignkit.core.synthetic_targets import SurveyTargets
from alignkit.core.targets import find_target, locate

SPEC = SurveySpec(rows=3, cols=4, width=600, height=450, gps_noise_h_m=2.0, gps_noise_v_m=3.0, seed=5)
SIZE_PX = {"checker": 20.0, "aruco": 32.0}


@pytest.fixture(scope="module")
def surveys(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    kinds = ["checker", "aruco"] * 4
    targets = SurveyTargets(count=8, kinds=kinds, size_px=32.0)
    with_targets = generate_survey(root / "with", SPEC, decorate=targets)
    plain = generate_survey(root / "plain", SPEC)
    return with_targets, plain, load_ground_truth(with_targets)


def _predictions(gt, seed):
    """The true pixel of each visible target, shifted up to 8 px: a prediction from GPS priors."""
    rng = np.random.default_rng(seed)
    for o in gt["targets"]["observations"]:
        kind = gt["targets"]["points"][o["target"]]["kind"]
        yield o, kind, (o["x"] + rng.uniform(-8, 8), o["y"] + rng.uniform(-8, 8))


def test_gcp_list_carries_the_true_ground_points(surveys):
    out, _, gt = surveys
    sizes = {c["image"]: (SPEC.width, SPEC.height) for c in gt["cameras"]}
    cs = to_local(read_control(out / "gcp_list.txt", sizes), LocalFrame(**gt["origin"]))
    assert len(cs.points) == 8 and all(p.usable for p in cs.points)
    for p, t in zip(cs.points, gt["targets"]["points"]):
        assert p.name == t["name"]
        np.testing.assert_allclose(p.enu, t["enu"], atol=1e-3)
        # On the true terrain, and measured in every photo that sees it whole.
        assert len(p.measurements) >= 2


def test_targets_found_within_half_a_pixel(surveys):
    out, _, gt = surveys
    errors, ids = [], []
    images = {}
    for o, kind, pred in _predictions(gt, 0):
        img = images.setdefault(o["image"], cv2.imread(str(out / "images" / o["image"]), cv2.IMREAD_GRAYSCALE))
        det = find_target(img, pred, SIZE_PX[kind] if kind == "checker" else 32.0, kind="auto", search_radius_px=15)
        errors.append(np.hypot(det.x - o["x"], det.y - o["y"]) if det is not None else np.inf)
        if kind == "aruco" and det is not None:
            ids.append((det.kind, det.marker_id, gt["targets"]["points"][o["target"]]["aruco_id"]))
    errors = np.array(errors)
    assert len(errors) >= 40
    within = np.mean(errors < 0.5)
    print(f"{len(errors)} observations: {100 * within:.0f}% within 0.5 px, median {np.median(errors):.3f} px")
    assert within >= 0.9
    assert ids and all(k == "aruco" and a == b for k, a, b in ids)  # ArUco gives the identity


def test_no_false_positive_without_targets(surveys):
    _, plain, gt = surveys
    rng = np.random.default_rng(3)
    preds = []
    for k, (o, _, pred) in enumerate(_predictions(gt, 1)):
        i = int(o["image"][4:8]) - 1
        preds.append((("t", k), i, *pred))  # where the targets would be
        for j in range(3):  # and anywhere
            preds.append((("r", k, j), i, *rng.uniform([30, 30], [SPEC.width - 30, SPEC.height - 30])))
    paths = [plain / "images" / c["image"] for c in gt["cameras"]]
    for kind in ("checker", "aruco"):
        found = locate(paths, preds, SIZE_PX[kind], kind=kind, search_radius_px=15)
        assert len(found) == len(preds) and not [k for k, d in found.items() if d is not None]
