"""Camera exports (CSV, Bundler, COLMAP) read back by independent parsers give the same poses, and the
exported model reprojects onto its observations under each format's own conventions."""
import numpy as np
import pytest
from pyproj import Transformer

from alignkit.core.bundle import project
from alignkit.core.camera import rotation_from_gimbal
from alignkit.core.camera_export import export_paths, write_camera_exports
from alignkit.core.geo import LocalFrame
from alignkit.core.reconstruction import Reconstruction

CRS = "EPSG:32632"  # central meridian 9 E: at 6.6 E grid north is ~1.7 deg off true north


class Photo:
    def __init__(self, name, width=1200, height=900, focal=1000.0):
        self.name, self.width, self.height, self.focal = name, width, height, focal

    def K(self):  # noqa: N802
        return np.array([[self.focal, 0, (self.width - 1) / 2], [0, self.focal, (self.height - 1) / 2], [0, 0, 1.0]])


def _rx(a):
    a = np.radians(a)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _ry(a):
    a = np.radians(a)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rz(a):
    a = np.radians(a)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


@pytest.fixture
def block(tmp_path):
    """Five photos (the fourth not registered), known poses from DJI gimbal angles, exact observations."""
    rng = np.random.default_rng(7)
    photos = [Photo(f"IMG_{k}.JPG") for k in range(5)]
    gimbal = [(0.0, -90.0, 0.0), (90.0, -90.0, 0.0), (200.0, -75.0, 2.0), (0.0, -90.0, 0.0), (45.0, -60.0, -3.0)]
    R = np.array([rotation_from_gimbal(*g) for g in gimbal])
    C = np.array([[0.0, 0.0, 60.0], [20.0, 0.0, 61.0], [10.0, 25.0, 59.0], [0, 0, 0], [-15.0, 10.0, 62.0]])
    registered = np.array([True, True, True, False, True])
    R[3], C[3] = np.nan, np.nan
    points = np.column_stack([rng.uniform(-20, 30, 200), rng.uniform(-10, 30, 200), rng.uniform(-2, 3, 200)])
    focal, k1, k2 = np.full(5, 1010.0), np.full(5, -0.02), np.full(5, 0.004)
    obs_point, obs_image, obs_xy = [], [], []
    for i in np.flatnonzero(registered):
        uv, depth = project(np.repeat(R[i][None], len(points), 0), np.repeat(C[i][None], len(points), 0),
                            np.full(len(points), focal[i]), np.full(len(points), k1[i]), np.full(len(points), k2[i]),
                            np.repeat(photos[i].K()[:2, 2][None], len(points), 0), points)
        seen = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 1200) & (uv[:, 1] >= 0) & (uv[:, 1] < 900)
        obs_point += np.flatnonzero(seen).tolist()
        obs_image += [i] * int(seen.sum())
        obs_xy.append(uv[seen])
    obs_point, obs_image = np.array(obs_point), np.array(obs_image)
    keep = np.bincount(obs_point, minlength=len(points)) >= 2
    remap = np.cumsum(keep) - 1
    sel = keep[obs_point]
    recon = Reconstruction(
        registered=registered, component=np.where(registered, 0, -1), R=R, C=C, focal=focal, k1=k1, k2=k2,
        points=points[keep], point_track=np.arange(keep.sum()), point_rgb=rng.integers(0, 255, (keep.sum(), 3)).astype(np.uint8),
        point_error_px=np.full(keep.sum(), 0.25), point_component=np.zeros(keep.sum(), int),
        n_obs=np.bincount(obs_image[sel], minlength=5), reproj_rmse_px=np.full(5, 0.25), gps_residual=np.zeros((5, 3)),
        gps_sigma_h_m=1.0, gps_sigma_v_m=1.0, mean_reproj_px=0.25, obs_point=remap[obs_point[sel]],
        obs_image=obs_image[sel], obs_xy=np.vstack(obs_xy)[sel], georeferenced=True,
    )
    frame = LocalFrame(46.5, 6.6, 400.0)
    gpkg = tmp_path / "site_alignkit.gpkg"
    paths = write_camera_exports(gpkg, photos, recon, frame, CRS)
    return photos, recon, frame, paths


def _quat_to_R(qw, qx, qy, qz):
    return np.array([
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]])


def read_colmap(folder):
    """A plain reader of COLMAP's text model (as COLMAP's own read_write_model.py reads it)."""
    def rows(name):
        with open(folder / name, encoding="utf-8") as f:
            return [line.split() for line in f if line.strip() and not line.startswith("#")]

    cameras = {int(r[0]): (r[1], int(r[2]), int(r[3]), [float(v) for v in r[4:]]) for r in rows("cameras.txt")}
    lines = [line.rstrip("\n") for line in open(folder / "images.txt", encoding="utf-8") if not line.startswith("#")]
    images = {}
    for head, pts in zip(lines[0::2], lines[1::2]):
        h = head.split()
        v = np.array(pts.split(), float).reshape(-1, 3)
        images[int(h[0])] = {"q": [float(x) for x in h[1:5]], "t": np.array(h[5:8], float), "camera": int(h[8]),
                             "name": h[9], "xy": v[:, :2], "point3d": v[:, 2].astype(int)}
    points = {int(r[0]): {"xyz": np.array(r[1:4], float), "rgb": [int(x) for x in r[4:7]], "error": float(r[7]),
                          "track": np.array(r[8:], int).reshape(-1, 2)} for r in rows("points3D.txt")}
    return cameras, images, points


def test_colmap_model_reads_back_with_the_same_poses_and_reprojects(block):
    photos, recon, frame, paths = block
    from pathlib import Path

    cameras, images, points = read_colmap(Path(paths["colmap"]))
    registered = np.flatnonzero(recon.registered)
    assert sorted(images) == [i + 1 for i in registered]
    assert len(cameras) == 1  # identical intrinsics: one shared camera
    for i in registered:
        img = images[i + 1]
        assert img["name"] == photos[i].name
        R = _quat_to_R(*img["q"])
        np.testing.assert_allclose(R, recon.R[i], atol=1e-12)
        np.testing.assert_allclose(-R.T @ img["t"], recon.C[i], atol=1e-9)
        model, w, h, (f, cx, cy, k1, k2) = cameras[img["camera"]]
        assert (model, w, h) == ("RADIAL", 1200, 900)
        # COLMAP's RADIAL model in COLMAP's pixel convention reproduces every observation
        for (x, y), pid in zip(img["xy"], img["point3d"]):
            p = R @ points[pid]["xyz"] + img["t"]
            u, v = p[0] / p[2], p[1] / p[2]
            d = 1 + k1 * (u * u + v * v) + k2 * (u * u + v * v) ** 2
            assert abs(f * d * u + cx - x) < 1e-3 and abs(f * d * v + cy - y) < 1e-3
    assert len(points) == len(recon.points)
    for pid, pt in points.items():
        np.testing.assert_allclose(pt["xyz"], recon.points[pid - 1], atol=1e-9)
        for image_id, idx in pt["track"]:
            assert images[image_id]["point3d"][idx] == pid  # tracks and POINTS2D agree
    n_obs = sum(len(p["track"]) for p in points.values())
    assert n_obs == len(recon.obs_point)


def test_pycolmap_reads_the_model_with_the_same_poses(block):
    pycolmap = pytest.importorskip("pycolmap", reason="pycolmap is not installed beside QGIS's Python")
    photos, recon, _, paths = block
    model = pycolmap.Reconstruction(paths["colmap"])
    assert model.num_points3D() == len(recon.points)
    for i in np.flatnonzero(recon.registered):
        image = model.images[i + 1]
        assert image.name == photos[i].name
        np.testing.assert_allclose(image.projection_center(), recon.C[i], atol=1e-9)


def read_bundle(path):
    tokens = open(path, encoding="utf-8").read().split("\n", 1)[1].split()
    n_cams, n_pts = int(tokens[0]), int(tokens[1])
    pos, cams, pts = 2, [], []
    for _ in range(n_cams):
        v = [float(x) for x in tokens[pos:pos + 15]]
        pos += 15
        cams.append({"f": v[0], "k1": v[1], "k2": v[2], "R": np.array(v[3:12]).reshape(3, 3), "t": np.array(v[12:15])})
    for _ in range(n_pts):
        xyz = np.array(tokens[pos:pos + 3], float)
        n = int(tokens[pos + 6])
        views = np.array(tokens[pos + 7:pos + 7 + 4 * n], float).reshape(-1, 4)
        pos += 7 + 4 * n
        pts.append((xyz, views))
    return cams, pts


def test_bundler_model_reads_back_and_projects_as_bundler_does(block):
    photos, recon, frame, paths = block
    from pathlib import Path

    folder = Path(paths["bundle"])
    assert open(folder / "bundle.out").readline() == "# Bundle file v0.3\n"
    assert (folder / "list.txt").read_text().split() == [p.name for p in photos]
    cams, pts = read_bundle(folder / "bundle.out")
    assert cams[3]["f"] == 0 and not cams[3]["R"].any()  # not registered: Bundler's zero camera
    for i in np.flatnonzero(recon.registered):
        c = cams[i]
        np.testing.assert_allclose(-c["R"].T @ c["t"], recon.C[i], atol=1e-9)
        # Bundler's camera looks along -z with y up: its viewing direction is the photo's optical axis
        np.testing.assert_allclose(-c["R"][2], recon.R[i][2], atol=1e-12)
    assert len(pts) == len(recon.points)
    for xyz, views in pts:
        for cam, _key, x, y in views:
            c = cams[int(cam)]
            P = c["R"] @ xyz + c["t"]
            p = -P[:2] / P[2]
            r2 = p @ p
            proj = c["f"] * (1 + c["k1"] * r2 + c["k2"] * r2 * r2) * p
            assert abs(proj[0] - x) < 1e-3 and abs(proj[1] - y) < 1e-3


def test_cameras_csv_positions_and_omega_phi_kappa_against_an_independent_projection(block):
    photos, recon, frame, paths = block
    text = open(paths["cameras_csv"], encoding="utf-8").read()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert f"# CRS: {CRS}" in comments
    rows = [line.split(",") for line in text.splitlines() if not line.startswith("#")]
    assert rows[0] == ["image", "easting", "northing", "height", "omega", "phi", "kappa", "focal_px"]
    rows = {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}
    assert sorted(rows) == sorted(photos[i].name for i in np.flatnonzero(recon.registered))
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    for i in np.flatnonzero(recon.registered):
        e, n, h, omega, phi, kappa, focal = rows[photos[i].name]
        lat, lon, alt = frame.to_geodetic(recon.C[i][None])
        ex, nx = to_utm.transform(lon[0], lat[0])
        assert abs(e - ex) < 1e-3 and abs(n - nx) < 1e-3 and abs(h - alt[0]) < 1e-3 and focal == pytest.approx(1010)
        M = _rx(omega) @ _ry(phi) @ _rz(kappa)  # camera (x right, y up, z back) -> grid (E, N, up)
        # The photo's viewing direction and its top, in the grid, from pyproj directly: a step along each
        # in ENU, taken to lat/lon by the frame, then projected.
        for cam_axis, enu_axis in ((np.array([0, 0, -1.0]), recon.R[i][2]), (np.array([0, 1.0, 0]), -recon.R[i][1])):
            la, lo, hh = frame.to_geodetic(np.array([recon.C[i], recon.C[i] + 10.0 * enu_axis]))
            x, y = to_utm.transform(lo, la)
            d = np.array([x[1] - x[0], y[1] - y[0], hh[1] - hh[0]])
            np.testing.assert_allclose(M @ cam_axis, d / np.linalg.norm(d), atol=2e-4)
    # nadir photo, top to true north: omega = phi = 0 and kappa = the grid's meridian convergence
    _, _, _, omega, phi, kappa, _ = rows["IMG_0.JPG"]
    assert abs(omega) < 0.01 and abs(phi) < 0.01 and 1.0 < abs(kappa) < 2.5


def test_exports_are_beside_the_geopackage(block, tmp_path):
    _, _, _, paths = block
    assert paths == export_paths(tmp_path / "site_alignkit.gpkg")
    assert paths["cameras_csv"] == str(tmp_path / "site_alignkit_cameras.csv")
    for key in ("bundle", "colmap"):
        assert "local ENU frame" in open(f"{paths[key]}/georeference.txt").read()


def test_a_run_without_gps_exports_in_its_local_frame(block, tmp_path):
    photos, recon, _, _ = block
    (tmp_path / "nogps").mkdir()
    paths = write_camera_exports(tmp_path / "nogps" / "r.gpkg", photos, recon, None, None)
    text = open(paths["cameras_csv"], encoding="utf-8").read()
    assert "# CRS: none (local frame, NOT georeferenced)" in text
    row = next(line for line in text.splitlines() if line.startswith("IMG_1.JPG")).split(",")
    np.testing.assert_allclose([float(v) for v in row[1:4]], recon.C[1], atol=1e-4)  # the local frame itself
    assert "Not georeferenced" in open(f"{paths['colmap']}/georeference.txt").read()
