"""`make bench`: speed and accuracy figures as JSON.

    python -m alignkit.tools.bench --out bench [--only alignment|stack] [--size 3200]

alignment: the brighton_beach photos through core.pipeline.run in a child process (so its peak
RSS, children included, is its own), per-stage seconds, accuracy against model.laz, and the floor
nobody can beat without a faster extractor: plain OpenCV SIFT on the same photos at the same
working size with the same number of processes, timed in the same run (compare ratios, not
seconds: these machines are noisy). BENCH_ANCHOR=1 with pycolmap installed also runs COLMAP.
stack: the focus-stack and Oxford figures from tools.bench_stack.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _sift_one(args):
    import cv2

    path, size, nfeatures, contrast = args
    cv2.setNumThreads(1)
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    s = size / max(img.shape)
    if s < 1:
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    kp, _ = cv2.SIFT_create(nfeatures=nfeatures, contrastThreshold=contrast).detectAndCompute(img, None)
    return len(kp)


def sift_floor(images, size, nfeatures, contrast, workers):
    import multiprocessing as mp

    t = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        counts = pool.map(_sift_one, [(str(p), size, nfeatures, contrast) for p in images])
    return {"seconds": time.perf_counter() - t, "mean_features": float(np.mean(counts))}


def _child_align(images, output, size):
    """Runs in a child process: the alignment, then prints its summary as JSON."""
    from alignkit.core import pipeline
    from alignkit.core.config import AlignConfig

    summary = pipeline.run(AlignConfig(images=images, output=output, max_image_size=size))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    summary["peak_rss_mb"] = usage
    summary["peak_rss_worker_mb"] = children
    print("BENCH-JSON " + json.dumps(summary, default=str))


def bench_alignment(size):
    images = SHARED / "brighton_beach" / "images"
    if not images.is_dir():
        return {"skipped": f"{images} not found"}
    from alignkit.core.config import AlignConfig
    from alignkit.tools.evaluate import load_las_xyz, reference_dz

    cfg = AlignConfig(max_image_size=size)
    workers = cfg.workers or os.cpu_count()
    photos = sorted(images.glob("*.JPG"))
    with tempfile.TemporaryDirectory(prefix="alignkit-bench-") as tmp:
        floor = sift_floor(photos, size, cfg.max_features, cfg.sift_contrast_threshold, workers)
        output = os.path.join(tmp, "brighton.gpkg")
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c",
             "import sys; from alignkit.tools.bench import _child_align; "
             "_child_align(sys.argv[1], sys.argv[2], int(sys.argv[3]))", str(images), output, str(size)],
            capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr[-3000:]}
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-JSON ")][-1]
        summary = json.loads(line[len("BENCH-JSON "):])
        ref, ref_crs = load_las_xyz(SHARED / "brighton_beach" / "model.laz")
        from osgeo import ogr

        ds = ogr.Open(output)
        lyr = ds.GetLayerByName("sparse_points")
        pts = np.array([f.GetGeometryRef().GetPoint() for f in lyr])
        ds = None
        accuracy = reference_dz(pts, ref) if summary["crs"] == ref_crs else {"skipped": "CRS differs"}
    result = {
        "dataset": "brighton_beach (18 x 4000x2250)",
        "working_size": size,
        "workers": workers,
        "wall_s": wall,
        "sift_floor_s": floor["seconds"],
        "ratio_to_sift_floor": summary["total_s"] / floor["seconds"],
        "peak_rss_mb": max(summary["peak_rss_mb"], summary["peak_rss_worker_mb"]),
        "reference_cloud": accuracy,
    }
    for key in ("images", "registered", "components", "points", "mean_reproj_px", "gps_fit_rmse_m", "gps_residual_rmse_m",
                "priors_s", "extract_s", "pairs_s", "match_s", "tracks_s", "reconstruct_s", "export_s",
                "total_s", "peak_rss_mb", "peak_rss_worker_mb"):
        result["pipeline_" + key if key.startswith("peak") else key] = summary.get(key)
    if os.environ.get("BENCH_ANCHOR") == "1":
        result["colmap"] = bench_colmap(images)
    return result


def bench_colmap(images):
    try:
        import pycolmap
    except ImportError:
        return {"skipped": "pycolmap not installed"}
    with tempfile.TemporaryDirectory(prefix="alignkit-colmap-") as tmp:
        db, out = os.path.join(tmp, "db.db"), os.path.join(tmp, "sparse")
        os.makedirs(out)
        t0 = time.perf_counter()
        pycolmap.extract_features(db, str(images))
        t1 = time.perf_counter()
        pycolmap.match_exhaustive(db)
        t2 = time.perf_counter()
        maps = pycolmap.incremental_mapping(db, str(images), out)
        t3 = time.perf_counter()
        best = max(maps.values(), key=lambda r: r.num_reg_images()) if maps else None
        return {"extract_s": t1 - t0, "match_s": t2 - t1, "map_s": t3 - t2, "total_s": t3 - t0,
                "registered": best.num_reg_images() if best else 0,
                "points": best.num_points3D() if best else 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench")
    ap.add_argument("--only", choices=["alignment", "stack"])
    ap.add_argument("--size", type=int, default=3200)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    if args.only in (None, "alignment"):
        results["alignment"] = bench_alignment(args.size)
    if args.only in (None, "stack"):
        from alignkit.tools.bench_stack import bench_stack

        results["stack"] = bench_stack(SHARED)
    for name, figures in results.items():
        path = Path(args.out) / f"{name}.json"
        path.write_text(json.dumps(figures, indent=1, default=str))
        print(f"{path}:\n{json.dumps(figures, indent=1, default=str)}")


if __name__ == "__main__":
    main()
