"""Stack-registration figures: Oxford accuracy vs the plain OpenCV baseline, pcb / exposure timings.

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
                   "error_px": None if entry["matrix"] is None else
                   round(hpatches_error(np.array(entry["matrix"]), truth, w, h), 3)}
            for name, method in (("baseline_magsac_px", cv2.USAC_MAGSAC), ("baseline_ransac_px", cv2.RANSAC)):
                try:
                    row[name] = round(hpatches_error(opencv_baseline_homography(img1, img_n, method), truth, w, h), 3)
                except (cv2.error, np.linalg.LinAlgError):
                    row[name] = None
            rows.append(row)
    return rows


def _cpu_seconds():
    """CPU time of this process over all its threads (less sensitive to a shared machine than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stack_run(folder, pattern, out):
    images = sorted(folder.glob(pattern))
    t0, c0 = time.perf_counter(), _cpu_seconds()
    doc = stack.align_stack(folder, out, stack.StackConfig(), images=images)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    # the machine is shared: relate the time to a plain SIFT pass over the same full-size images
    t1, c1 = time.perf_counter(), _cpu_seconds()
    sift = cv2.SIFT_create()
    for path in images:
        sift.detectAndCompute(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), None)
    sift_seconds, sift_cpu = time.perf_counter() - t1, _cpu_seconds() - c1
    return {
        "images": len(images), "seconds": round(seconds, 2), "stage_seconds": doc["timings"],
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
            figures["pcb"] = _stack_run(data / "focus_stack_pcb" / "pcb", "pcb_*.jpg", out / "pcb")
        if (data / "exposure_house").is_dir():
            figures["exposure_house"] = _stack_run(data / "exposure_house", "*.jpg", out / "house")
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
