"""Stack-registration figures: Oxford accuracy vs the plain OpenCV baseline, pcb / exposure timings, and
the fused results (focus: sharpness and fidelity per 64 px tile; exposure: clipping and local contrast).

`bench_stack(shared_data_dir) -> dict`; `python -m alignkit.tools.bench_stack [--data DIR]` prints JSON.
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ..core import stack
from .evaluate import hpatches_error, opencv_baseline_homography


def _oxford(data, out, config_overrides=None):
    rows = []
    for sequence, ext in (("oxford_graf", ".png"), ("oxford_boat", ".pgm")):
        folder = data / sequence
        if not folder.is_dir():
            continue
        img1 = cv2.imread(str(folder / f"img1{ext}"), cv2.IMREAD_GRAYSCALE)
        h, w = img1.shape
        for n in range(2, 7):
            truth = np.loadtxt(folder / f"H1to{n}p")
            img_n = cv2.imread(str(folder / f"img{n}{ext}"), cv2.IMREAD_GRAYSCALE)
            config = stack.StackConfig(reference=f"img1{ext}", **(config_overrides or {}))
            t0 = time.perf_counter()
            doc = stack.align_stack(folder, out / f"{sequence}_{n}", config,
                                    images=[folder / f"img1{ext}", folder / f"img{n}{ext}"])
            seconds = time.perf_counter() - t0
            entry = doc["images"][1]
            row = {"pair": f"{sequence.split('_')[1]} 1-{n}", "status": entry["status"], "reason": entry["reason"],
                   "method": entry.get("method"), "seconds": round(seconds, 2),
                   "inliers": entry.get("inliers"), "inlier_rms_px": entry.get("inlier_rms_px"),
                   "refinement": entry.get("refinement"),
                   "error_px": None if entry["matrix"] is None else
                   round(hpatches_error(np.array(entry["matrix"]), truth, w, h), 3)}
            for name, method in (("baseline_magsac_px", cv2.USAC_MAGSAC), ("baseline_ransac_px", cv2.RANSAC)):
                try:
                    row[name] = round(hpatches_error(opencv_baseline_homography(img1, img_n, method), truth, w, h), 3)
                except (cv2.error, np.linalg.LinAlgError):
                    row[name] = None
            if row["error_px"] is not None and row.get("baseline_magsac_px"):
                row["ratio_to_baseline"] = round(row["error_px"] / row["baseline_magsac_px"], 3)
            rows.append(row)
    return rows


def _cpu_seconds():
    """CPU time of this process over all its threads (less sensitive to a shared machine than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tiles(shape, size=64):
    return [(y, x) for y in range(0, shape[0] - size + 1, size) for x in range(0, shape[1] - size + 1, size)]


def _grey(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float64)


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def _fusion_figures(doc, out):
    """Issue 13's measures of the fused image against the aligned frames it came from."""
    if not doc.get("fused"):
        return {"fused": None, "note": doc.get("fused_note")}
    fused = _grey(out / doc["fused"])
    frames = [_grey(out / name) for name in doc["fused_from"]]
    figures = {"fused": doc["fused"], "frames": len(frames), "fuse_s": doc["timings"].get("fuse_s")}
    if doc["fuse"] == "focus":
        ratios, nccs = [], []
        for y, x in _tiles(fused.shape):
            tile = fused[y:y + 64, x:x + 64]
            sharp = [cv2.Laplacian(f[y:y + 64, x:x + 64], cv2.CV_64F).var() for f in frames]
            best = int(np.argmax(sharp))
            ratios.append(cv2.Laplacian(tile, cv2.CV_64F).var() / max(sharp[best], 1e-9))
            nccs.append(_ncc(tile, frames[best][y:y + 64, x:x + 64]))
        figures.update(tiles=len(ratios), median_sharpness_ratio=round(float(np.median(ratios)), 3),
                       median_tile_ncc=round(float(np.median(nccs)), 4))
    else:
        colour = [cv2.imread(str(out / name)) for name in [doc["fused"]] + doc["fused_from"]]
        clipped = [int(((c <= 2).all(axis=2) | (c >= 253).all(axis=2)).sum()) for c in colour]
        ratios = [fused[y:y + 64, x:x + 64].std() / max(max(f[y:y + 64, x:x + 64].std() for f in frames), 1e-9)
                  for y, x in _tiles(fused.shape)]
        figures.update(clipped_fused=clipped[0], clipped_frames=clipped[1:],
                       median_contrast_ratio=round(float(np.median(ratios)), 3))
    return figures


def _stack_run(folder, pattern, out, fuse="none"):
    images = sorted(folder.glob(pattern))
    t0, c0 = time.perf_counter(), _cpu_seconds()
    doc = stack.align_stack(folder, out, stack.StackConfig(fuse=fuse), images=images)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    # the machine is shared: relate the time to a plain SIFT pass over the same full-size images
    t1, c1 = time.perf_counter(), _cpu_seconds()
    sift = cv2.SIFT_create()
    for path in images:
        sift.detectAndCompute(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), None)
    sift_seconds, sift_cpu = time.perf_counter() - t1, _cpu_seconds() - c1
    return {
        "images": len(images), "seconds": round(seconds, 2), "stage_seconds": doc["timings"],
        "fusion": _fusion_figures(doc, out) if fuse != "none" else None,
        "cpu_seconds": round(cpu, 2), "load_average_1min": round(os.getloadavg()[0], 2),
        "plain_sift_seconds": round(sift_seconds, 2), "ratio_to_plain_sift": round(seconds / sift_seconds, 2),
        "plain_sift_cpu_seconds": round(sift_cpu, 2), "cpu_ratio_to_plain_sift": round(cpu / sift_cpu, 2),
        "crop": doc["crop"],
        "frames": [{"image": e["image"], "status": e["status"], "reason": e["reason"], "method": e.get("method"),
                    "already_aligned": e.get("already_aligned", False),
                    "ncc_before": (e["metrics"] or {}).get("before", {}).get("ncc") if e.get("metrics") else None,
                    "ncc_after": (e["metrics"] or {}).get("after", {}).get("ncc") if e.get("metrics") else None}
                   for e in doc["images"]],
    }


def bench_stack(shared_data_dir):
    """Figures for `make bench`: Oxford per-pair errors vs baselines, pcb and exposure stacks with timings."""
    data = Path(shared_data_dir)
    figures = {"cv2_threads": cv2.getNumThreads(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="alignkit-bench-stack-") as tmp:
        out = Path(tmp)
        figures["oxford"] = _oxford(data, out / "oxford")
        figures["oxford_ransac"] = [
            {k: r[k] for k in ("pair", "status", "error_px")}
            for r in _oxford(data, out / "oxford_ransac", {"robust_method": "ransac"})]
        if (data / "focus_stack_pcb" / "pcb").is_dir():
            figures["pcb"] = _stack_run(data / "focus_stack_pcb" / "pcb", "pcb_*.jpg", out / "pcb", "focus")
        if (data / "exposure_house").is_dir():
            figures["exposure_house"] = _stack_run(data / "exposure_house", "*.jpg", out / "house", "exposure")
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", default=str(default), help="the shared data folder (default: ../shared/data)")
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"shared data not found: {args.data}", file=sys.stderr)
        return 2
    print(json.dumps(bench_stack(args.data), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
