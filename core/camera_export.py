"""The adjusted cameras for other software, written beside the GeoPackage.

- `<name>_cameras.csv`: one row per registered photo: position (easting, northing, height in the
  target CRS; heights in the reference of the summary's `height_reference`) and omega, phi, kappa in
  degrees, in the photogrammetric (PATB / Pix4D) convention: camera axes x right, y up (towards the
  top of the photo), z backwards (the camera looks along -z); M = Rx(omega) Ry(phi) Rz(kappa) turns
  camera axes into the CRS's grid axes (easting, northing, up): a direction's CRS components are
  M times its camera components. A nadir photo whose top points to grid north is (0, 0, 0); kappa
  is counter-clockwise seen from above (top pointing east: -90). The rotation is taken relative to
  the grid at each camera (meridian convergence included). Comment lines (`#`) name the CRS.
- `<name>_bundle/`: Bundler v0.3 (`bundle.out`, `list.txt`). World: the local ENU frame of the run
  (metres east, north, up from `frame` in the summary; exact Cartesian geometry, which a projected
  CRS is not: its scale factor alone shifts image edges by ~1 px). Camera: x right, y up, looks
  along -z; image coordinates from the principal point (the image centre), x right, y up.
  Unregistered photos are in `list.txt` with zero cameras, as Bundler writes them.
- `<name>_colmap/`: COLMAP text model (`cameras.txt`, `images.txt`, `points3D.txt`), world: the same
  local ENU frame; camera model RADIAL (f, cx, cy, k1, k2) shared by photos of identical intrinsics;
  COLMAP's pixel convention (the top-left pixel's centre is (0.5, 0.5)) is applied.
Each folder holds a `georeference.txt` saying which frame its world is and how to reach the CRS.
"""
import os
import shutil

import numpy as np

from .workspace import atomic_output

PHOTO_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])  # camera axes: x right, y up, z back <- OpenCV's y down, z forward


def export_paths(gpkg):
    stem = os.path.splitext(str(gpkg))[0]
    return {"cameras_csv": f"{stem}_cameras.csv", "bundle": f"{stem}_bundle", "colmap": f"{stem}_colmap"}


# --------------------------------------------------------------------------- rotations
def omega_phi_kappa(M):
    """(omega, phi, kappa) in degrees of M = Rx(omega) Ry(phi) Rz(kappa)."""
    M = np.asarray(M, dtype=np.float64)
    phi = np.arcsin(np.clip(M[0, 2], -1.0, 1.0))
    omega = np.arctan2(-M[1, 2], M[2, 2])
    kappa = np.arctan2(-M[0, 1], M[0, 0])
    return tuple(float(a) for a in np.degrees([omega, phi, kappa]))


def rotation_from_opk(omega, phi, kappa):
    """M = Rx(omega) Ry(phi) Rz(kappa) (degrees): camera (x right, y up, z back) -> world axes."""
    o, p, k = np.radians([omega, phi, kappa])
    rx = np.array([[1, 0, 0], [0, np.cos(o), -np.sin(o)], [0, np.sin(o), np.cos(o)]])
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rz = np.array([[np.cos(k), -np.sin(k), 0], [np.sin(k), np.cos(k), 0], [0, 0, 1]])
    return rx @ ry @ rz


def quaternion_from_rotation(R):
    """(qw, qx, qy, qz), Hamilton, qw >= 0, of a rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    t = np.trace(R)
    if t > 0:
        s = 2.0 * np.sqrt(t + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def grid_rotations(to_crs, centres):
    """(N, 3, 3) rotations from local ENU axes to the target CRS's grid axes at each centre (ENU):
    the projection's Jacobian by 1 m steps, its scale factor removed by a polar decomposition."""
    centres = np.atleast_2d(np.asarray(centres, dtype=np.float64))
    base = to_crs(centres)
    J = np.stack([to_crs(centres + e) - base for e in np.eye(3)], axis=2)  # (N, 3 crs, 3 enu)
    u, _, vt = np.linalg.svd(J)
    flip = np.linalg.det(u @ vt) < 0  # a left-handed CRS axis order would mirror: keep rotations
    u[flip, :, -1] *= -1
    return u @ vt


# --------------------------------------------------------------------------- writers
def _write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    atomic_output(path, write)


def _georeference_note(frame, crs):
    if frame is None:
        return ("World: an arbitrary local frame (the photos had no GPS): arbitrary scale, position and "
                "orientation. Not georeferenced.\n")
    d = frame.to_dict()
    return (
        "World: the run's local ENU frame, metres: x east, y north, z up, tangent to the WGS 84 "
        f"ellipsoid at latitude {d['lat0']:.9f}, longitude {d['lon0']:.9f}, height {d['h0']:.3f} m "
        "(in the reference of the summary JSON's height_reference). It is exact Cartesian geometry; a projected CRS is not (its scale factor alone moves "
        "image edges by about a pixel).\n"
        f"Target CRS of the GeoPackage and of the cameras CSV: {crs}. Through ECEF, a local point (x, y, z) "
        "is the geodetic point of the frame above; the summary JSON's `frame` holds the same origin.\n"
    )


def write_cameras_csv(path, usable, recon, to_crs, crs):
    rows = []
    registered = np.flatnonzero(recon.registered)
    positions = to_crs(recon.C[registered]) if len(registered) else np.zeros((0, 3))
    grid = grid_rotations(to_crs, recon.C[registered]) if crs and len(registered) else np.tile(np.eye(3), (len(registered), 1, 1))
    for n, i in enumerate(registered):
        p, position = usable[i], positions[n]
        omega, phi, kappa = omega_phi_kappa(grid[n] @ recon.R[i].T @ PHOTO_FROM_OPENCV)
        rows.append(f"{p.name},{position[0]:.4f},{position[1]:.4f},{position[2]:.4f},"
                    f"{omega:.6f},{phi:.6f},{kappa:.6f},{recon.focal[i]:.3f}")
    header = [
        "# AlignKit adjusted cameras",
        f"# CRS: {crs}" if crs else "# CRS: none (local frame, NOT georeferenced)",
        "# easting, northing, height: the camera's projection centre in that CRS (metres; heights as in the "
        "GeoPackage's cameras layer, reference in the summary JSON's height_reference)",
        "# omega, phi, kappa: degrees, photogrammetric (PATB) convention: camera axes x right, y up, z back; "
        "M = Rx(omega) Ry(phi) Rz(kappa) turns camera axes into the CRS grid axes (east, north, up); "
        "nadir with the photo's top to grid north = 0, 0, 0",
        "# focal_px: adjusted focal length in pixels of the full-size photo",
        "image,easting,northing,height,omega,phi,kappa,focal_px",
    ]
    _write_text(path, "\n".join(header + rows) + "\n")


def _observation_table(recon, keep_image=None):
    """The used observations (of the images keep_image marks, if given) sorted by image, then point:
    image, point, xy and each one's index in its image's list. Formatting is per observation, so
    everything else is array work: per photo or per point loops cost minutes at 1,000 photos."""
    order = np.lexsort((recon.obs_point, recon.obs_image))
    if keep_image is not None:
        order = order[keep_image[recon.obs_image[order]]]
    image = recon.obs_image[order].astype(np.int64)
    key = np.arange(len(order)) - np.searchsorted(image, image)  # first row of each row's image
    return image, recon.obs_point[order].astype(np.int64), recon.obs_xy[order], key


def _joined_by(group, strings, n_groups):
    """[' '.join(the strings of group g, in their order) for g in range(n_groups)]."""
    by_group = np.argsort(group, kind="stable")
    ordered = [strings[k] for k in by_group.tolist()]
    bounds = np.searchsorted(group[by_group], np.arange(n_groups + 1)).tolist()
    return [" ".join(ordered[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _bundle_text(usable, recon):
    image, point, xy, key = _observation_table(recon)
    pp = np.array([p.K()[:2, 2] for p in usable]).reshape(-1, 2)
    views = [f"{i} {k} {x:.4f} {y:.4f}" for i, k, x, y in
             zip(image.tolist(), key.tolist(), (xy[:, 0] - pp[image, 0]).tolist(), (pp[image, 1] - xy[:, 1]).tolist())]
    views = _joined_by(point, views, len(recon.points))
    n_views = np.bincount(point, minlength=len(recon.points)).tolist()
    lines = ["# Bundle file v0.3", f"{len(usable)} {len(recon.points)}"]
    for i in range(len(usable)):
        if not recon.registered[i]:
            lines += ["0 0 0", "0 0 0", "0 0 0", "0 0 0", "0 0 0"]
            continue
        R = PHOTO_FROM_OPENCV @ recon.R[i]
        t = -R @ recon.C[i]
        lines.append(f"{recon.focal[i]:.10g} {recon.k1[i]:.10g} {recon.k2[i]:.10g}")
        lines += [" ".join(f"{v:.15g}" for v in row) for row in R]
        lines.append(" ".join(f"{v:.15g}" for v in t))
    for (x, y, z), (r, g, b), n, seen in zip(recon.points.tolist(), recon.point_rgb.astype(int).tolist(), n_views, views):
        lines += [f"{x:.15g} {y:.15g} {z:.15g}", f"{r} {g} {b}", f"{n} {seen}"]
    return "\n".join(lines) + "\n"


def _colmap_texts(usable, recon):
    cameras, camera_of = {}, {}
    for i, p in enumerate(usable):
        if not recon.registered[i]:
            continue
        cx, cy = p.K()[:2, 2] + 0.5  # COLMAP: the top-left pixel's centre is (0.5, 0.5)
        key = (p.width, p.height, float(recon.focal[i]), float(cx), float(cy), float(recon.k1[i]), float(recon.k2[i]))
        camera_of[i] = cameras.setdefault(key, len(cameras) + 1)
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cameras)}"]
    for key, cid in cameras.items():
        w, h, f, cx, cy, k1, k2 = key
        cam_lines.append(f"{cid} RADIAL {w} {h} {f:.10g} {cx:.10g} {cy:.10g} {k1:.10g} {k2:.10g}")
    registered = np.zeros(len(usable), bool)
    registered[list(camera_of)] = True
    image, point, xy, key = _observation_table(recon, registered)
    points2d = _joined_by(image, [f"{x + 0.5:.4f} {y + 0.5:.4f} {k + 1}" for x, y, k in
                                  zip(xy[:, 0].tolist(), xy[:, 1].tolist(), point.tolist())], len(usable))
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(camera_of)}"]
    for i in sorted(camera_of):
        q = quaternion_from_rotation(recon.R[i])
        t = -recon.R[i] @ recon.C[i]
        img_lines.append(f"{i + 1} " + " ".join(f"{v:.17g}" for v in (*q, *t)) + f" {camera_of[i]} {usable[i].name}")
        img_lines.append(points2d[i])
    # each point's track as (IMAGE_ID, POINT2D_IDX), in image order
    tracks = _joined_by(point, [f"{i + 1} {k}" for i, k in zip(image.tolist(), key.tolist())], len(recon.points))
    mean_track = len(point) / len(recon.points) if len(recon.points) else 0.0
    pt_lines = ["# 3D point list with one line of data per point:",
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
                f"# Number of points: {len(recon.points)}, mean track length: {mean_track:.4f}"]
    for k, ((x, y, z), (r, g, b), err, track) in enumerate(zip(
            recon.points.tolist(), recon.point_rgb.astype(int).tolist(), recon.point_error_px.tolist(), tracks)):
        pt_lines.append(f"{k + 1} {x:.15g} {y:.15g} {z:.15g} {r} {g} {b} {err:.6g} {track}")
    return ("\n".join(cam_lines) + "\n", "\n".join(img_lines) + "\n", "\n".join(pt_lines) + "\n")


def _write_folder(folder, files):
    """Write `files` ({name: text}) into `folder` whole: built in a sibling temporary folder, then moved."""
    folder = str(folder)
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    old = folder + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def write_camera_exports(gpkg, usable, recon, frame, crs):
    """Write the CSV, Bundler and COLMAP exports beside `gpkg`; return their paths (export_paths).
    `frame`: the run's LocalFrame (None without GPS), `crs`: the target CRS."""
    paths = export_paths(gpkg)

    def to_crs(enu):
        enu = np.atleast_2d(np.asarray(enu, dtype=np.float64))
        return frame.to_crs(enu, crs) if frame is not None and crs else enu.copy()

    write_cameras_csv(paths["cameras_csv"], usable, recon, to_crs, crs)
    note = _georeference_note(frame, crs)
    names = "".join(f"{p.name}\n" for p in usable)
    _write_folder(paths["bundle"], {
        "bundle.out": _bundle_text(usable, recon), "list.txt": names,
        "georeference.txt": note + "Image coordinates: from the principal point (the image centre), x right, "
                                   "y up, pixels. list.txt: file names in the photo folder.\n"})
    cameras, images, points = _colmap_texts(usable, recon)
    _write_folder(paths["colmap"], {
        "cameras.txt": cameras, "images.txt": images, "points3D.txt": points,
        "georeference.txt": note + "Image names: file names in the photo folder.\n"})
    return paths
