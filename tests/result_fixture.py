"""A small, exactly known alignment result in the GeoPackage format of DESIGN.md, for the report and
layer-loading tests (they consume only the file format, so they need no alignment run).

Six cameras on a 3 x 2 grid (20 m spacing) in EPSG:32633, the last one not registered; each
registered camera has a 30 x 30 m square footprint centred under it, so neighbours along a row
overlap by 10 m; 60 sparse points with known errors and track lengths; 4 pairs.
"""
from alignkit.core.gpkg import Layer, write_geopackage
from alignkit.core.workspace import write_json

CRS = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)
SPACING = 20.0
FOOTPRINT = 30.0
N_POINTS = 60
CAMERA_FIELDS = [
    ("image", "str"), ("registered", "bool"), ("status", "str"), ("problem", "str"),
    ("yaw", "real"), ("pitch", "real"), ("roll", "real"), ("focal_px", "real"),
    ("n_observations", "int"), ("reproj_rmse_px", "real"),
    ("gps_dx", "real"), ("gps_dy", "real"), ("gps_dz", "real"), ("component", "int"),
    ("capture_time", "str"), ("path", "str"),
]
RMSE = [0.3, 0.7, 1.5, 2.5, 0.4]  # one per registered camera: one in each style class (and one more)


def camera_xy(k):
    return ORIGIN[0] + SPACING * (k % 3), ORIGIN[1] + SPACING * (k // 3)


def point_error(k):
    return 0.1 + 0.05 * (k % 20)  # 0.1 .. 1.05 px


def point_track_length(k):
    return 2 + k % 4  # 2 .. 5


def write_result(path, image_folder="/data/photos", summary=True):
    cams = []
    for k in range(6):
        x, y = camera_xy(k)
        name = f"IMG_{k:04d}.JPG"
        attrs = {"image": name, "path": f"{image_folder}/{name}", "capture_time": f"2024-05-01T10:00:{k:02d}",
                 "status": "registered", "registered": True, "yaw": 90.0 * k, "pitch": -90.0, "roll": 0.0,
                 "focal_px": 2300.0, "n_observations": 100 + k, "reproj_rmse_px": None,
                 "gps_dx": 0.5, "gps_dy": -0.25 * k, "gps_dz": 1.0 - 0.5 * k, "component": 0}
        if k == 5:
            attrs.update(registered=False, status="not registered", problem="not enough verified matches",
                         yaw=None, gps_dx=None, gps_dy=None, gps_dz=None, component=-1, n_observations=None)
        else:
            attrs["reproj_rmse_px"] = RMSE[k]
        cams.append(((x, y, 120.0), attrs))
    h = FOOTPRINT / 2
    footprints = []
    for k in range(5):
        x, y = camera_xy(k)
        ring = [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
        footprints.append(([ring], {"image": f"IMG_{k:04d}.JPG", "ground_z": 20.0}))
    points = []
    for k in range(N_POINTS):
        points.append(((ORIGIN[0] + k * 0.5, ORIGIN[1] + (k % 7), 20.0 + k % 3),
                       {"point_id": k, "track_length": point_track_length(k), "reproj_px": point_error(k),
                        "red": 200, "green": 40 + k, "blue": 10}))
    pairs = []
    for a, b, n in ((0, 1, 400), (1, 2, 350), (0, 3, 90), (3, 4, 1200)):
        pairs.append(([camera_xy(a), camera_xy(b)], {"image_a": f"IMG_{a:04d}.JPG", "image_b": f"IMG_{b:04d}.JPG",
                                                     "inliers": n, "model": "essential"}))
    write_geopackage(path, CRS, [
        Layer("cameras", "PointZ", CAMERA_FIELDS, cams),
        Layer("footprints", "Polygon", [("image", "str"), ("ground_z", "real")], footprints),
        Layer("sparse_points", "PointZ", [("point_id", "int"), ("track_length", "int"), ("reproj_px", "real"),
                                          ("red", "int"), ("green", "int"), ("blue", "int")], points),
        Layer("pairs", "LineString", [("image_a", "str"), ("image_b", "str"), ("inliers", "int"),
                                      ("model", "str")], pairs),
    ])
    if summary:
        stem = str(path)[: -len(".gpkg")]
        write_json(stem + "_summary.json", {
            "images": 6, "registered": 5, "points": N_POINTS, "components": 1, "mean_reproj_px": 0.55,
            "gps_fit_rmse_m": 1.23, "crs": CRS, "extract_s": 12.5, "match_s": 7.25, "reconstruct_s": 3.0,
            "total_s": 25.0, "warnings": ["synthetic warning for the test"], "height_above_ground_m": 61.25,
            "camera_models": [{"camera": "DJI FC300S 4000x2250 3.61mm", "images": 5, "focal_source": "sensor_table",
                               "focal_prior_px": 2340.36, "focal_px": 2340.36, "focal_change_percent": 0.0,
                               "k1": -0.0123, "k2": 0.0045, "focal_held": True, "focal_self_calibrated_px": 2770.0}],
            "log": ["camera model 0: self-calibrated focal 2700 px is +15% from its prior 2340 px (focal/height trade-off): held at the prior"],
            "config": {"max_image_size": 1600, "max_features": 4000, "lowe_ratio": 0.8},
        })
    return path
