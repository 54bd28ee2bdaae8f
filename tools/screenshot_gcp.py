"""Screenshot of the ground-control marking dialog on real photos (brighton_beach) into docs/.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m alignkit.tools.screenshot_gcp --out docs

(without a DISPLAY it re-runs itself under xvfb-run). Steps:
1. align ../shared/data/brighton_beach (balanced preset) into --work, unless a result is there;
2. demo control points: brighton has no surveyed control, so a few distinctive ground features
   (boulders on the lawn edge, a picnic-table corner) are picked by pixel in one photo, found in the
   other photos by template matching near their prediction, and triangulated through the adjusted
   cameras; their coordinates (EPSG:32615, cm) go into a point layer, as a surveyor's file would.
   They are NOT surveyed: the picture shows the tool, not an accuracy;
3. the dialog opens the alignment and the layer (the same code a user drives), the features are
   marked with real mouse clicks on the photo views, one point is made a check point, and the
   dialog is grabbed as docs/alignkit_gcp_marking.png;
4. docs/alignkit_gcp_targets.png: the dialog before any alignment (prior cameras) on a generated
   survey with painted ArUco and checker targets, after "Find target in all photos".
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCREEN = (1600, 1000)
IMAGES = ROOT.parent / "shared" / "data" / "brighton_beach" / "images"
# (name, photo, x, y, radius): where to look for a flat, distinctive ground feature (an asphalt crack
# junction, a kerb corner) in full-resolution pixels; the best-matching corner within radius is used
# (radius 0: exactly that pixel).
REGIONS = [
    ("GCP-1", "DJI_0026.JPG", 2868.0, 949.0, 0),  # crack junction at the lawn edge, by a boulder
    ("GCP-2", "DJI_0026.JPG", 2400.0, 1080.0, 250),  # road junction (the one shown)
    ("GCP-3", "DJI_0026.JPG", 1500.0, 1600.0, 250),  # road, west side
    ("GCP-4", "DJI_0031.JPG", 1800.0, 1665.0, 250),  # road by the car park
    ("GCP-5", "DJI_0020.JPG", 3133.0, 1665.0, 250),  # road, north end
]
SHOWN = "GCP-2"
CHECK = "GCP-3"
LEFT_UNMARKED = 1  # photos of the shown point left for the user besides those not matched (prediction only)
PATCH = 24  # template half-size, pixels
SEARCH = 50  # search half-size around the first prediction, pixels
# The targets picture: a generated survey (GPS noise of a consumer drone), before any alignment.
TARGETS_SPEC = {"rows": 3, "cols": 4, "width": 800, "height": 600, "gps_noise_h_m": 2.0, "gps_noise_v_m": 3.0,
                "seed": 5}
TARGETS_SHOWN = 0  # an ArUco target
VIEW_HALF_PX = 60  # photo pixels each side of the prediction in the picture
MIN_SCORE = 0.8  # normalised cross-correlation of an accepted match


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for the PNG")
    parser.add_argument("--work", default="out/screenshot_gcp", help="folder for the alignment and the demo layer")
    parser.add_argument("--images", default=str(IMAGES), help="the brighton_beach photos")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            sys.exit("no DISPLAY and no xvfb-run: install xvfb (apt install xvfb xauth)")
        cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", sys.executable, "-m",
               "alignkit.tools.screenshot_gcp"] + (argv if argv is not None else sys.argv[1:])
        sys.exit(subprocess.call(cmd))
    images = Path(args.images)
    if not images.is_dir():
        sys.exit(f"brighton_beach photos not found: {images}")
    work = Path(args.work).resolve()
    gpkg = ensure_alignment(images, work / "results" / "brighton_alignkit.gpkg")
    from alignkit.core.marking import cameras_from_alignment

    cams = cameras_from_alignment(gpkg)
    points = demo_points(cams)
    layer_path = write_demo_layer(work / "brighton_demo_control.gpkg", cams, points)
    from qgis.core import QgsApplication

    app = QgsApplication([], True)
    app.initQgis()
    app.setStyle("Fusion")
    try:
        print("wrote", grab_dialog(app, gpkg, layer_path, points, Path(args.out).resolve() / "alignkit_gcp_marking.png"))
        print("wrote", grab_targets(app, work, Path(args.out).resolve() / "alignkit_gcp_targets.png"))
    finally:
        app.exitQgis()


def ensure_alignment(images, gpkg):
    from alignkit.core import pipeline
    from alignkit.core.config import PRESETS, AlignConfig

    if gpkg.is_file() and Path(f"{gpkg.with_suffix('')}_summary.json").is_file():
        return gpkg
    print(f"aligning {images} -> {gpkg} (a minute or two)")
    pipeline.run(AlignConfig(images=str(images), output=str(gpkg), **PRESETS["balanced"]))
    return gpkg


# ------------------------------------------------------------------------ demo control points
def _grey(path, cache={}):  # noqa: B006 (a per-run cache of decoded photos)
    if path not in cache:
        cache[path] = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return cache[path]


def _project(cams, i, X):
    from alignkit.core.bundle import project

    X = np.atleast_2d(X)
    n = len(X)
    uv, _ = project(np.repeat(cams.R[i:i + 1], n, 0), np.repeat(cams.C[i:i + 1], n, 0), np.full(n, cams.focal[i]),
                    np.full(n, cams.k1[i]), np.full(n, cams.k2[i]), np.repeat((cams.sizes[i:i + 1] - 1) / 2, n, 0), X)
    return uv


def _match(cams, r, x, y, o, X):
    """Where the ground around pixel (x, y) of photo r appears in photo o: (x, y, score) or None.
    Photo o is resampled into photo r's geometry through the ground plane at X (the flight lines are
    rotated 180 degrees to each other), the patch matched by normalised cross-correlation there,
    and the peak mapped back."""
    ref = _grey(cams.paths[r])
    ring = X + np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    a = cv2.getAffineTransform(_project(cams, r, ring).astype(np.float32), _project(cams, o, ring).astype(np.float32))
    half = SEARCH + PATCH
    wx0, wy0 = int(x) - half, int(y) - half
    m = a @ np.array([[1.0, 0, wx0], [0, 1.0, wy0], [0, 0, 1.0]])
    win = cv2.warpAffine(_grey(cams.paths[o]), m, (2 * half + 1, 2 * half + 1),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    tpl = ref[int(y) - PATCH:int(y) + PATCH + 1, int(x) - PATCH:int(x) + PATCH + 1]
    if tpl.shape != (2 * PATCH + 1, 2 * PATCH + 1) or (win == 0).mean() > 0.05:
        return None
    score = cv2.matchTemplate(win, tpl, cv2.TM_CCOEFF_NORMED)
    _, best, _, (bx, by) = cv2.minMaxLoc(score)
    if best < MIN_SCORE or not (0 < bx < score.shape[1] - 1 and 0 < by < score.shape[0] - 1):
        return None
    # Sub-pixel: a parabola through the peak and its neighbours, per axis.
    dx = 0.5 * (score[by, bx - 1] - score[by, bx + 1]) / (score[by, bx - 1] - 2 * best + score[by, bx + 1])
    dy = 0.5 * (score[by - 1, bx] - score[by + 1, bx]) / (score[by - 1, bx] - 2 * best + score[by + 1, bx])
    u = wx0 + bx + PATCH + dx + (x - int(x))
    v = wy0 + by + PATCH + dy + (y - int(y))
    ox, oy = a @ np.array([u, v, 1.0])
    return float(ox), float(oy), float(best)


def _ground_ray(cams, i, x, y, up):
    pp = (cams.sizes[i] - 1.0) / 2.0
    K = np.array([[cams.focal[i], 0, pp[0]], [0, cams.focal[i], pp[1]], [0, 0, 1.0]])
    n = cv2.undistortPoints(np.array([[[x, y]]]), K, np.array([cams.k1[i], cams.k2[i], 0, 0])).ravel()
    ray = cams.R[i].T @ np.array([n[0], n[1], 1.0])
    return cams.C[i] + ray * (up - cams.C[i, 2]) / ray[2]


def _feature(cams, r, x, y):
    """(ENU point, {photo: (x, y)}, mean score) of the ground feature at pixel (x, y) of photo r."""
    from alignkit.core.control import predict_pixels
    from alignkit.core.control_adjust import triangulate

    pp = (cams.sizes - 1.0) / 2.0
    X = _ground_ray(cams, r, x, y, cams.ground_up_m)
    clicks, scores = {cams.names[r]: (x, y)}, {}
    for _ in range(2):  # match near the first guess, triangulate, match again from the better point
        for other, _, _ in predict_pixels(X, cams.R, cams.C, cams.focal, cams.k1, cams.k2, cams.sizes,
                                          names=cams.names, margin_px=SEARCH + PATCH + 2):
            o = cams.index(other)
            if o != r:
                m = _match(cams, r, x, y, o, X)
                if m is not None:
                    clicks[other], scores[other] = m[:2], m[2]
        if len(clicks) < 2:
            return None, clicks, 0.0
        idx = [cams.index(k) for k in clicks]
        X, _ = triangulate(idx, list(clicks.values()), cams.R, cams.C, cams.focal, cams.k1, cams.k2, pp)
    return X, dict(sorted(clicks.items())), float(np.mean(list(scores.values())))


def _sunlit_ground(path, x0, y0, side):
    """Where a natural control point can be: sunlit asphalt or concrete (grey, bright) and its edges,
    away from shadows (they move with the sun) and vegetation (it moves with the wind)."""
    hsv = cv2.cvtColor(cv2.imread(str(path))[y0:y0 + side, x0:x0 + side], cv2.COLOR_BGR2HSV)
    grey_bright = ((hsv[..., 1] < 45) & (hsv[..., 2] > 120)).astype(np.uint8)
    h, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    # shadows on asphalt are blue (sky light): hue 95-135 (OpenCV's 0-180 scale), saturated; or dark
    shadow = (((h >= 95) & (h <= 135) & (sat > 50)) | (val < 100)).astype(np.uint8)
    near_shadow = cv2.dilate(shadow, np.ones((2 * PATCH + 21, 2 * PATCH + 21), np.uint8))
    return (cv2.dilate(grey_bright, np.ones((7, 7), np.uint8)) & (1 - near_shadow)).astype(np.uint8) * 255


def demo_points(cams):
    """[(name, ENU point, {photo: (x, y)})]: in each region, the corner seen in most photos."""
    out = []
    for name, photo, cx, cy, radius in REGIONS:
        r = cams.index(photo)
        grey = _grey(cams.paths[r])
        x0, y0 = int(cx - radius), int(cy - radius)
        if radius:
            corners = cv2.goodFeaturesToTrack(grey[y0:y0 + 2 * radius, x0:x0 + 2 * radius], 12, 0.05, 15,
                                              mask=_sunlit_ground(cams.paths[r], x0, y0, 2 * radius))
        else:
            corners = np.zeros((1, 1, 2), np.float32)
        best = None
        for (u, v), in ([] if corners is None else corners):
            X, clicks, score = _feature(cams, r, x0 + float(u), y0 + float(v))
            if X is not None and np.isfinite(X).all() and (best is None or (len(clicks), score) > best[0]):
                best = ((len(clicks), score), X, clicks)
        if best is None or best[0][0] < 3:
            print(f"{name}: no feature found in 3 photos near {photo} ({cx:.0f}, {cy:.0f}); left out")
            continue
        print(f"{name}: found in {best[0][0]} photos (mean NCC {best[0][1]:.2f})")
        out.append((name, best[1], best[2]))
    return out


def write_demo_layer(path, cams, points):
    """The demo points' coordinates (EPSG:32615, rounded to the cm as a survey file has them) as a layer."""
    from alignkit.core.gpkg import Layer, write_geopackage

    crs = "EPSG:32615"
    xyz = np.round(cams.frame.to_crs(np.array([p[1] for p in points]), crs), 2)
    write_geopackage(path, crs, [Layer("control", "PointZ", [("name", "str")],
                                       [(tuple(c), {"name": p[0]}) for c, p in zip(xyz, points)])])
    return path


# ------------------------------------------------------------------------ the dialog
def grab_dialog(app, gpkg, layer_path, points, png):
    from qgis.core import QgsProject, QgsVectorLayer
    from qgis.PyQt.QtCore import QEvent, Qt
    from qgis.PyQt.QtGui import QMouseEvent

    from alignkit.core.marking import MEASUREMENTS_FILE

    try:
        from alignkit.ui.gcp_dialog import GcpDialog

        layer = QgsVectorLayer(f"{layer_path}|layername=control", "brighton control (demo)", "ogr")
        if not layer.isValid():
            raise RuntimeError(f"{layer_path}: the demo layer does not load")
        QgsProject.instance().addMapLayer(layer)
        ws = Path(f"{gpkg.with_suffix('')}_workspace") / MEASUREMENTS_FILE
        ws.unlink(missing_ok=True)  # a fresh session each run
        dialog = GcpDialog(alignment=str(gpkg))
        dialog.resize(SCREEN[0] - 40, SCREEN[1] - 50)
        dialog.layer_combo.setLayer(layer)
        dialog.name_field.setField("name")
        dialog.use_layer(layer, "name", "")
        dialog.show()
        _settle(app)

        def click(view, x, y):
            view.centerOn(x, y)
            pos = view.to_view(x, y)
            for kind in (QEvent.MouseButtonPress, QEvent.MouseButtonRelease):
                app.sendEvent(view.viewport(), QMouseEvent(kind, pos, Qt.LeftButton, Qt.LeftButton, Qt.NoModifier))

        for name, _, clicks in points:
            dialog.select_point(name)
            _settle(app)
            marked = list(clicks.items())
            if name == SHOWN and LEFT_UNMARKED:
                marked = marked[:-LEFT_UNMARKED]
            for image, (x, y) in marked:
                if image in dialog.tiles:
                    click(dialog.tiles[image].view, x, y)
        dialog.set_role(CHECK, "check")
        dialog.select_point(SHOWN)
        _settle(app)
        for image, tile in dialog.tiles.items():  # wider than the first view: the lawn edge and a boulder
            ph = next(p for p in dialog.session.photos(SHOWN) if p["image"] == image)
            tile.view.show_around(*ph["predicted"], VIEW_HALF_PX)
        _settle(app)
        png.parent.mkdir(parents=True, exist_ok=True)
        if not dialog.grab().save(str(png)):
            raise RuntimeError(f"could not write {png}")
        dialog.close()
    finally:
        QgsProject.instance().clear()
    return png


def grab_targets(app, work, png):
    """The dialog before any alignment (prior cameras) on a generated survey with painted targets:
    Find target in all photos, two finds accepted, the others still proposals (cyan)."""
    from qgis.core import QgsProject, QgsVectorLayer

    from alignkit.core.gpkg import Layer, write_geopackage
    from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth
    from alignkit.core.synthetic_targets import SurveyTargets
    from alignkit.ui.gcp_dialog import GcpDialog

    survey = work / "targets_survey"
    if not (survey / "ground_truth.json").is_file():
        print(f"generating a survey with targets in {survey}")
        generate_survey(survey, SurveySpec(**TARGETS_SPEC),
                        decorate=SurveyTargets(count=6, kinds=["aruco", "checker"] * 3, size_px=36.0))
    gt = load_ground_truth(survey)
    pts = gt["targets"]["points"]
    layer_path = work / "targets_control.gpkg"
    write_geopackage(layer_path, gt["targets"]["crs"], [Layer("control", "PointZ", [("name", "str")],
                                                              [(tuple(t["crs_xyz"]), {"name": t["name"]}) for t in pts])])
    try:
        layer = QgsVectorLayer(f"{layer_path}|layername=control", "targets (surveyed)", "ogr")
        QgsProject.instance().addMapLayer(layer)
        dialog = GcpDialog(image_folder=str(survey / "images"))
        dialog.resize(SCREEN[0] - 40, SCREEN[1] - 50)
        dialog.layer_combo.setLayer(layer)
        dialog.name_field.setField("name")
        dialog.use_layer(layer, "name", "")
        dialog.show()
        shown = pts[TARGETS_SHOWN]
        dialog.select_point(shown["name"])
        dialog.side_spin.setValue(round(shown["size_m"], 2))
        _settle(app)
        dialog.find_all()
        for image in sorted(dialog.tiles)[:2]:
            dialog.tiles[image].accept_button.click()
        for image, tile in dialog.tiles.items():
            ph = next(p for p in dialog.session.photos(shown["name"]) if p["image"] == image)
            m = ph["measurement"] or dialog.session.proposals.get((shown["name"], image))
            x, y = (m.x, m.y) if m is not None else ph["predicted"]
            tile.view.show_around(x, y, 2.2 * dialog.session.target_size_px(shown["name"], image, shown["size_m"]))
        _settle(app)
        if not dialog.grab().save(str(png)):
            raise RuntimeError(f"could not write {png}")
        dialog.close()
    finally:
        QgsProject.instance().clear()
    return png


def _settle(app, rounds=20):
    import time

    for _ in range(rounds):
        app.processEvents()
        time.sleep(0.02)


if __name__ == "__main__":
    main()
