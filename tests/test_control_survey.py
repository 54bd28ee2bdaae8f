"""Acceptance (issue 10) on a generated survey with painted targets: GPS noise 2 m / 3 m, EXIF focal 4 %
short, 5 control and 3 check points. The same photos without control are GPS-limited (metres); with
control found automatically near the predicted pixels, check points, cameras and ground are within
a few GSD of the truth."""
import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import pipeline
from alignkit.core.config import AlignConfig
from alignkit.core.control import read_control, write_gcp_list
from alignkit.core.control_report import predict_from_workspace
from alignkit.core.geo import LocalFrame
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth, terrain_height
from alignkit.core.synthetic_targets import SurveyTargets
from alignkit.core.targets import locate

SPEC = SurveySpec(rows=3, cols=4, width=800, height=600, gps_noise_h_m=2.0, gps_noise_v_m=3.0, seed=5)
TARGET_PX = 28.0
CHECK = ["gcp_05", "gcp_06", "gcp_08"]
GSD = SPEC.altitude_m / SPEC.focal_px


def _layer(gpkg, name):
    ds = ogr.Open(str(gpkg))
    out = []
    for f in ds.GetLayerByName(name):
        g = f.GetGeometryRef()
        out.append(((g.GetX(), g.GetY(), g.GetZ()), {k: f.GetField(k) for k in f.keys()}))
    return out


def _errors(gpkg, summary, gt):
    frame = LocalFrame(**gt["origin"])
    cams = {a["image"]: xyz for xyz, a in _layer(gpkg, "cameras") if a["registered"]}
    est = frame.from_crs(np.array([cams[c["image"]] for c in gt["cameras"]]), summary["crs"])
    cam_err = np.linalg.norm(est - gt["C"], axis=1)
    pts = frame.from_crs(np.array([xyz for xyz, _ in _layer(gpkg, "sparse_points")]), summary["crs"])
    ground_dz = pts[:, 2] - terrain_height(gt, pts[:, 0], pts[:, 1])
    return cam_err, ground_dz


@pytest.mark.slow
def test_control_and_check_points_on_a_generated_survey(tmp_path):
    root = generate_survey(tmp_path / "survey", SPEC, decorate=SurveyTargets(count=8, kinds=["checker", "aruco"] * 4,
                                                                             size_px=TARGET_PX))
    gt = load_ground_truth(root)
    base = dict(images=str(root / "images"), workspace=str(tmp_path / "ws"), focal_px=0.96 * SPEC.focal_px,
                max_image_size=SPEC.width, max_features=3000, workers=2)

    # 1. GPS only: the shape is right, the placement is the GPS's (metres).
    plain = pipeline.run(AlignConfig(output=str(tmp_path / "gps.gpkg"), **base))
    cam_gps, ground_gps = _errors(tmp_path / "gps.gpkg", plain, gt)

    # 2. Targets found near where the saved alignment predicts them (the marking dialog's "find" step).
    sizes = {c["image"]: (SPEC.width, SPEC.height) for c in gt["cameras"]}
    cs = read_control(root / "gcp_list.txt", sizes)  # the surveyed coordinates (and true pixels)
    truth = {(p.name, m.image): (m.x, m.y) for p in cs.points for m in p.measurements}
    preds = predict_from_workspace(tmp_path / "ws", cs, margin_px=TARGET_PX)
    names = [c["image"] for c in gt["cameras"]]
    found = locate([root / "images" / n for n in names], [((p, n), names.index(n), x, y) for p, n, x, y in preds],
                   TARGET_PX, kind="auto", search_radius_px=100, refine_radius_px=25)
    err = np.array([np.hypot(d.x - truth[k][0], d.y - truth[k][1]) if d is not None else np.inf
                    for k, d in found.items() if k in truth])
    for p in cs.points:  # the measurements become the detections
        p.measurements = [m for m in p.measurements if found.get((p.name, m.image)) is not None]
        for m in p.measurements:
            d = found[(p.name, m.image)]
            m.x, m.y, m.source = d.x, d.y, "auto"
    write_gcp_list(tmp_path / "found_gcp_list.txt", cs)

    # 3. With control: a final adjustment from the saved reconstruction.
    ctl = pipeline.run(AlignConfig(output=str(tmp_path / "gcp.gpkg"), gcp_file=str(tmp_path / "found_gcp_list.txt"),
                                   check_points=",".join(CHECK), **base))
    cam_ctl, ground_ctl = _errors(tmp_path / "gcp.gpkg", ctl, gt)
    check = ctl["check_rmse_m"]
    print(f"\nGSD {GSD:.3f} m; targets: {len(err)} visible observations, {100 * np.mean(err < 0.5):.0f}% within "
          f"0.5 px (median {np.median(err):.3f} px)\n"
          f"GPS only: cameras median {np.median(cam_gps):.2f} m (max {cam_gps.max():.2f}), ground median "
          f"|dz| {np.median(np.abs(ground_gps)):.2f} m\n"
          f"control: cameras median {np.median(cam_ctl):.3f} m (max {cam_ctl.max():.3f}), ground median |dz| "
          f"{np.median(np.abs(ground_ctl)):.3f} m; check RMSE h {check['horizontal']:.3f} v {check['vertical']:.3f} "
          f"m (n={check['n']}); control RMSE h {ctl['control_rmse_m']['horizontal']:.3f} v "
          f"{ctl['control_rmse_m']['vertical']:.3f}; reconstruct {plain['reconstruct_s']:.1f} s, then "
          f"{ctl['reconstruct_s']:.2f} s + control {ctl['control_s']:.1f} s")

    assert len(err) >= 40 and np.mean(err < 0.5) >= 0.9
    assert np.median(cam_gps) > 1.0  # GPS-limited: metres
    assert check["n"] == 3 and ctl["control_rmse_m"]["n"] == 5
    assert check["horizontal"] <= 2 * GSD and check["vertical"] <= 3 * GSD
    assert cam_ctl.max() <= 2 * GSD
    assert np.median(np.abs(ground_ctl)) <= 2 * GSD
    assert ctl["control_focal_freed"]
    layer = _layer(tmp_path / "gcp.gpkg", "control_points")
    assert sorted(a["name"] for _, a in layer) == [f"gcp_{k:02d}" for k in range(1, 9)]
    for _, a in layer:
        assert a["role"] == ("check" if a["name"] in CHECK else "control")
        assert a["n_images"] >= 2 and a["reproj_px"] < 1.0
        assert max(abs(a["dx"]), abs(a["dy"])) <= 2 * GSD and abs(a["dz"]) <= 3 * GSD
