"""The final sparse cloud: no stray points far outside the block's depth range, no duplicate points."""
import json

import numpy as np
import pytest
from osgeo import ogr

from alignkit.core import pipeline, workspace
from alignkit.core.cloud import clean_cloud, stray_points
from alignkit.core.config import AlignConfig
from alignkit.core.footprints import coverage_stats, flight_area, ground_footprint, polygon_area
from alignkit.core.geo import LocalFrame
from alignkit.core.reconstruction import Reconstruction
from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth, terrain_height

NADIR = np.diag([1.0, -1.0, -1.0])  # ENU -> camera looking straight down (x east, y south, z down)


def _reconstruction(centres, points, seen_by):
    """A registered block of nadir cameras; seen_by[k]: the cameras observing point k."""
    n = len(centres)
    obs_point = np.array([k for k, cams in enumerate(seen_by) for _ in cams])
    obs_image = np.array([i for cams in seen_by for i in cams])
    return Reconstruction(
        registered=np.ones(n, bool), component=np.zeros(n, int), R=np.repeat(NADIR[None], n, axis=0),
        C=np.asarray(centres, float), focal=np.full(n, 1000.0), k1=np.zeros(n), k2=np.zeros(n),
        points=np.asarray(points, float), point_track=np.arange(len(points)),
        point_rgb=np.zeros((len(points), 3), np.uint8), point_error_px=np.full(len(points), 0.3),
        point_component=np.zeros(len(points), int), n_obs=np.bincount(obs_image, minlength=n),
        reproj_rmse_px=np.full(n, 0.3), gps_residual=np.zeros((n, 3)), gps_sigma_h_m=1.0, gps_sigma_v_m=1.0,
        mean_reproj_px=0.3, obs_point=obs_point, obs_image=obs_image,
        obs_xy=np.column_stack([obs_point, obs_image]).astype(float), georeferenced=True,
    )


def test_a_point_far_below_the_ground_is_removed_and_roofs_stay():
    """Cameras 40 m above a ground with 3 m of relief and 12 m roofs; one 2-view point at z = -356 m."""
    rng = np.random.default_rng(3)
    centres = [(x, y, 40.0) for x in (0.0, 15.0, 30.0) for y in (0.0, 20.0)]
    ground = np.column_stack([rng.uniform(-10, 40, 300), rng.uniform(-10, 30, 300), rng.uniform(-1.5, 1.5, 300)])
    ground[:12, 2] += 12.0  # roofs: 28 m from the cameras where the ground is 40 m
    ground[12:15, 2] = 30.0  # a mast top 10 m below the cameras
    points = np.vstack([ground, [[12.0, 8.0, -356.0]]])
    seen_by = [sorted(rng.choice(6, size=rng.integers(2, 6), replace=False).tolist()) for _ in range(300)]
    seen_by.append([1, 3])
    recon = _reconstruction(centres, points, seen_by)

    stray = stray_points(recon)
    assert np.flatnonzero(stray).tolist() == [300]
    cleaned, n = clean_cloud(recon)
    assert n == 1 and len(cleaned.points) == 300 and "stray" in cleaned.log[-1]
    np.testing.assert_array_equal(cleaned.points, ground)  # the rest unchanged, in order
    # observations follow their points: obs_xy was made (point, image) above
    np.testing.assert_array_equal(cleaned.obs_xy[:, 0], cleaned.obs_point)
    np.testing.assert_array_equal(cleaned.obs_xy[:, 1], cleaned.obs_image)
    assert cleaned.n_obs.sum() == len(cleaned.obs_point) == recon.n_obs.sum() - 2
    assert clean_cloud(cleaned)[1] == 0  # nothing else to remove


def test_points_behind_a_camera_are_stray():
    centres = [(0.0, 0.0, 40.0), (20.0, 0.0, 40.0)]
    rng = np.random.default_rng(4)
    ground = np.column_stack([rng.uniform(-5, 25, 50), rng.uniform(-5, 5, 50), np.zeros(50)])
    recon = _reconstruction(centres, np.vstack([ground, [[10.0, 0.0, 60.0]]]), [[0, 1]] * 51)
    assert np.flatnonzero(stray_points(recon)).tolist() == [50]


SMALL = dict(rows=3, cols=4, width=960, height=720)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud")
    survey = generate_survey(root / "survey", SurveySpec(**SMALL, gps_noise_h_m=1.0, gps_noise_v_m=2.0, seed=11))
    out = root / "result.gpkg"
    summary = pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out), max_features=4000, workers=2))
    return survey, out, summary


@pytest.mark.slow
def test_generated_survey_has_no_duplicate_or_stray_points(aligned):
    survey, out, summary = aligned
    ds = ogr.Open(str(out))
    xyz = np.array([f.GetGeometryRef().GetPoint() for f in ds.GetLayerByName("sparse_points")])
    ds = None
    assert len(xyz) == summary["points"] > 2000
    assert len(np.unique(xyz, axis=0)) == len(xyz)  # SIFT's orientation twins once made 6 % duplicates
    # Every point lies on the known terrain (after the block's height offset, which the noisy GPS
    # leaves): none is far outside the block (a few weakly determined points sit ~2-3 m off).
    gt = load_ground_truth(survey)
    enu = LocalFrame(**gt["origin"]).from_crs(xyz, summary["crs"])
    dz = enu[:, 2] - terrain_height(gt, enu[:, 0], enu[:, 1])
    assert np.abs(dz - np.median(dz)).max() < 0.1 * gt["spec"]["altitude_m"]
    assert np.percentile(np.abs(dz - np.median(dz)), 99) < 1.0


@pytest.mark.slow
def test_a_stray_point_injected_into_a_generated_survey_is_removed(aligned):
    survey, out, _ = aligned
    data = workspace.read_npz(out.parent / "result_workspace" / "reconstruction.npz")
    meta = json.loads(str(data.pop("meta")[0]))
    meta.pop("stamp")
    recon = Reconstruction(**data, **meta)
    # A 2-view track of two neighbouring photos, 500 m below the ground on the first one's axis.
    a, b = 0, int(np.argsort(np.linalg.norm(recon.C - recon.C[0], axis=1))[1])
    deep = recon.C[a] + recon.R[a][2] * 540.0
    n = len(recon.points)
    recon.points = np.vstack([recon.points, deep])
    recon.point_track = np.append(recon.point_track, -1)
    recon.point_rgb = np.vstack([recon.point_rgb, [[0, 0, 0]]]).astype(np.uint8)
    recon.point_error_px = np.append(recon.point_error_px, 0.2)
    recon.point_component = np.append(recon.point_component, 0)
    recon.obs_point = np.append(recon.obs_point, [n, n])
    recon.obs_image = np.append(recon.obs_image, [a, b])
    recon.obs_xy = np.vstack([recon.obs_xy, np.zeros((2, 2))])

    stray = stray_points(recon)
    assert stray[n]
    assert stray[:n].sum() <= 0.002 * n  # the genuine points stay


@pytest.mark.slow
def test_camera_exports_of_a_generated_survey_against_the_truth(aligned):
    """The cameras CSV beside the GeoPackage: positions and omega/phi/kappa against the true cameras
    (the block sits where its noisy GPS (1 m / 2 m) puts it; rotations within 0.3 deg)."""
    from pyproj import Transformer

    from alignkit.tests.test_camera_export import _rx, _ry, _rz, read_colmap

    survey, out, summary = aligned
    gt = load_ground_truth(survey)
    for key in ("cameras_csv", "bundle", "colmap"):
        assert summary["outputs"][key] == str(out)[: -len(".gpkg")] + {"cameras_csv": "_cameras.csv"}.get(key, f"_{key}")
    lines = [line for line in open(summary["outputs"]["cameras_csv"]).read().splitlines() if not line.startswith("#")]
    rows = {r[0]: np.array(r[1:], float) for r in (line.split(",") for line in lines[1:])}
    assert len(rows) == summary["registered"] == len(gt["cameras"])
    frame = LocalFrame(**gt["origin"])
    to_crs = Transformer.from_crs("EPSG:4326", summary["crs"], always_xy=True)
    offsets = []
    for k, cam in enumerate(gt["cameras"]):
        e, n, h, omega, phi, kappa, _ = rows[cam["image"]]
        true = frame.to_crs(gt["C"][k][None], summary["crs"])[0]
        assert np.linalg.norm([e - true[0], n - true[1]]) < 3.0 and abs(h - true[2]) < 5.0
        # the true camera axes (x right, y up, z back) in the grid: 10 m steps through pyproj
        axes = []
        for enu_axis in (gt["R"][k][0], -gt["R"][k][1], -gt["R"][k][2]):
            la, lo, hh = frame.to_geodetic(np.array([gt["C"][k], gt["C"][k] + 10.0 * enu_axis]))
            x, y = to_crs.transform(lo, la)
            axes.append(np.array([x[1] - x[0], y[1] - y[0], hh[1] - hh[0]]))
        u, _, vt = np.linalg.svd(np.column_stack(axes))
        offsets.append((_rx(omega) @ _ry(phi) @ _rz(kappa)) @ (u @ vt).T)  # estimated vs true, in the grid
    angle = [np.degrees(np.arccos(np.clip((np.trace(o) - 1) / 2, -1, 1))) for o in offsets]
    assert max(angle) < 1.0  # the block's tilt from 12 noisy GPS positions
    u, _, vt = np.linalg.svd(np.sum(offsets, axis=0))
    common = u @ vt
    relative = [np.degrees(np.arccos(np.clip((np.trace(common.T @ o) - 1) / 2, -1, 1))) for o in offsets]
    assert max(relative) < 0.1, relative  # each camera's omega/phi/kappa, the block's tilt aside
    _, images, points = read_colmap(out.parent / "result_colmap")
    assert len(images) == summary["registered"] and len(points) == summary["points"]


@pytest.mark.slow
def test_the_summary_carries_the_verdict_and_provenance(aligned):
    survey, out, summary = aligned
    # a generated block with exact EXIF and 1 m / 2 m GPS noise: every item passes
    assert [v["item"] for v in summary["verdict"]] == ["Images registered", "Matches per image", "Reprojection error",
                                                       "Camera optimisation", "Overlap", "Georeferencing"]
    assert all(v["ok"] for v in summary["verdict"]), summary["verdict"]
    assert summary["verdict_summary"] == "all 6 quality checks passed"
    # overlap is judged under the flight lines: the rim of a 12-photo block is most of its area
    items = {v["item"]: v for v in summary["verdict"]}
    assert items["Overlap"]["value"] == round(summary["overlap_median_flight_area"]) >= 5 > summary["overlap_median"]
    prov = summary["provenance"]
    assert prov["photos"] == 12 and prov["images_folder"] == str(survey / "images") and prov["preset"] == "custom"


@pytest.mark.slow
def test_gsd_and_coverage_of_a_generated_survey_against_the_truth(aligned):
    survey, out, summary = aligned
    gt = load_ground_truth(survey)
    spec = gt["spec"]
    names = [c["image"] for c in gt["cameras"]]
    ds = ogr.Open(str(out))
    rows = {f.GetField("image"): (f.GetField("gsd_cm"), f.GetField("area_m2")) for f in ds.GetLayerByName("footprints")}
    ds = None
    assert len(rows) == summary["registered"] == len(names)
    pitch_over_focal = spec["sensor_width_mm"] / spec["width"] / spec["focal_mm"]  # = 1 / focal_px
    gsd_true, area_true = {}, {}
    for k, name in enumerate(names):
        # the truth: the camera's height above the true terrain inside its true footprint
        plane = ground_footprint(gt["K"][k], gt["R"][k], gt["C"][k], 0.0, spec["width"], spec["height"])
        e, n = np.meshgrid(np.linspace(plane[:, 0].min(), plane[:, 0].max(), 15),
                           np.linspace(plane[:, 1].min(), plane[:, 1].max(), 15))
        ground = float(np.median(terrain_height(gt, e.ravel(), n.ravel())))
        gsd_true[name] = 100.0 * (gt["C"][k][2] - ground) * pitch_over_focal
        fp = ground_footprint(gt["K"][k], gt["R"][k], gt["C"][k], ground, spec["width"], spec["height"])
        area_true[name] = polygon_area(fp[:, :2])
    for name, (gsd, area) in rows.items():
        assert gsd == pytest.approx(gsd_true[name], rel=0.03), name
        assert area == pytest.approx(area_true[name], rel=0.06), name
    assert summary["gsd_cm_median"] == pytest.approx(float(np.median(list(gsd_true.values()))), rel=0.03)
    truth = coverage_stats([ground_footprint(gt["K"][k], gt["R"][k], gt["C"][k], 0.0, spec["width"],
                                             spec["height"])[:, :2] for k in range(len(names))],
                           inner=flight_area(gt["C"][:, :2]))
    assert summary["area_covered_m2"] == pytest.approx(truth["area_covered_m2"], rel=0.06)
    assert abs(summary["overlap_median"] - truth["overlap_median"]) <= 1
    assert abs(summary["overlap_median_flight_area"] - truth["overlap_median_flight_area"]) <= 1


def test_a_two_photo_point_far_below_the_ground_is_stray_a_better_seen_one_is_not():
    """brighton, fast preset: a two-photo point 31 m under a ground 38 m below the cameras (inside the
    wide band, +100 %). Two rays alone do not vouch for that; three photos agreeing do."""
    rng = np.random.default_rng(5)
    centres = [(x, y, 40.0) for x in (0.0, 15.0, 30.0) for y in (0.0, 20.0)]
    ground = np.column_stack([rng.uniform(-10, 40, 300), rng.uniform(-10, 30, 300), rng.uniform(-1.5, 1.5, 300)])
    deep = [[12.0, 8.0, -31.0], [14.0, 9.0, -31.0]]
    seen_by = [sorted(rng.choice(6, size=rng.integers(2, 6), replace=False).tolist()) for _ in range(300)]
    recon = _reconstruction(centres, np.vstack([ground, deep]), seen_by + [[1, 3], [0, 1, 3]])
    assert np.flatnonzero(stray_points(recon)).tolist() == [300]
