"""COLMAP (pycolmap 4.2, CPU) on a folder of photos, for `make bench-accuracy BENCH_ANCHOR=1`.

Runs in its own virtual environment (.venv-anchor: pycolmap need not coexist with QGIS's Python),
so it imports nothing of AlignKit: only pycolmap and numpy.

    .venv-anchor/bin/python tools/colmap_anchor.py IMAGES WORKDIR OUT.json
        [--mapper incremental|global] [--matcher exhaustive|spatial]
        [--max-image-size 3200] [--max-features 8000] [--threads N]

OUT.json: {"mapper", "matcher", "registered", "images", "points", "mean_track_length",
"mean_track_length_3plus", "two_view_share", "mean_reproj_px", "extract_s", "match_s", "map_s",
"total_s", "cameras": {name: {"C": [x, y, z], "R": 3x3 world-to-camera}}} for the largest model, in
COLMAP's own frame (arbitrary similarity).
"""
import argparse
import json
import os
import sys
import time


def run(images, workdir, mapper, matcher, max_image_size, max_features, threads):
    import pycolmap

    os.makedirs(workdir, exist_ok=True)
    db = os.path.join(workdir, "database.db")
    if os.path.exists(db):
        os.remove(db)  # a fresh database: the timings are the whole run's
    sparse = os.path.join(workdir, "sparse")
    os.makedirs(sparse, exist_ok=True)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.sift.max_num_features = max_features
    extraction.num_threads = threads
    extraction.use_gpu = False
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    matching.use_gpu = False
    t0 = time.perf_counter()
    pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    t1 = time.perf_counter()
    if matcher == "spatial":  # pairs from the EXIF GPS positions COLMAP stored as pose priors
        pycolmap.match_spatial(db, matching_options=matching, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
    t2 = time.perf_counter()
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        if hasattr(options, "num_threads"):
            options.num_threads = threads
        models = pycolmap.global_mapping(db, images, sparse, options)
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = threads
        models = pycolmap.incremental_mapping(db, images, sparse, options)
    t3 = time.perf_counter()
    result = {"mapper": mapper, "matcher": matcher, "max_image_size": max_image_size, "max_features": max_features,
              "pycolmap": pycolmap.__version__, "extract_s": t1 - t0, "match_s": t2 - t1, "map_s": t3 - t2,
              "total_s": t3 - t0, "images": len([f for f in os.listdir(images) if not f.startswith(".")]),
              "models": len(models)}
    if not models:
        result.update(registered=0, points=0, cameras={})
        return result
    best = max(models.values(), key=lambda r: r.num_reg_images())
    cameras = {}
    for image in best.images.values():
        if not image.has_pose:
            continue
        pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        cameras[image.name] = {"C": [float(v) for v in image.projection_center()],
                               "R": pose.rotation.matrix().tolist()}
    # as tools.evaluate.track_length_stats (not imported: this venv has no AlignKit); COLMAP's mapper
    # leaves two-view tracks untriangulated by default, so its few two-photo points are filter leftovers
    lengths = [p.track.length() for p in best.points3D.values()]
    three = [n for n in lengths if n >= 3]
    result.update(registered=best.num_reg_images(), points=best.num_points3D(),
                  mean_track_length=float(best.compute_mean_track_length()),
                  mean_track_length_3plus=float(sum(three) / len(three)) if three else float("nan"),
                  two_view_share=float(sum(1 for n in lengths if n == 2) / len(lengths)) if lengths else float("nan"),
                  mean_reproj_px=float(best.compute_mean_reprojection_error()), cameras=cameras)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images")
    ap.add_argument("workdir")
    ap.add_argument("out")
    ap.add_argument("--mapper", choices=["incremental", "global"], default="incremental")
    ap.add_argument("--matcher", choices=["exhaustive", "spatial"], default="exhaustive")
    ap.add_argument("--max-image-size", type=int, default=3200)
    ap.add_argument("--max-features", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=-1)
    a = ap.parse_args(argv)
    if not os.path.isdir(a.images):
        print(f"colmap_anchor: error: {a.images}: not a folder of images", file=sys.stderr)
        return 2
    result = run(a.images, a.workdir, a.mapper, a.matcher, a.max_image_size, a.max_features, a.threads)
    tmp = a.out + ".part"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
