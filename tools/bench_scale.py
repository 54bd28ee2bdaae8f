"""`make bench-scale`: how time and memory grow with the block (issue 12).

    python -m alignkit.tools.bench_scale [--sizes 250,500,1000] [--cache out/bench-scale] [--out bench]

For each size, a generated survey (1200x900 photos, GPS noise 1 m horizontal / 2 m vertical; cached
under --cache, reused while its ground_truth.json exists) goes through core.pipeline.run with the
default AlignConfig in a child process (tools.bench._child_align), with a fresh workspace. A thread
samples the resident memory of the child's whole process tree (the pipeline and its worker
processes, summed) every 0.2 s. Per size it records the seconds of every stage (and the CPU
seconds of the whole tree: on a shared machine they say more than the wall clock), the registered
photos and components, the camera shape error after a similarity fit to the generated truth (RMS and
max, metres and % of the flying height), the mean track length and the peak tree RSS.

Writes <out>/scale.json (sizes measured before and not rerun are kept) and <out>/scale.png
(seconds per photo and peak memory against the number of photos).
"""
import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (250, 500, 1000)
GRIDS = {250: (10, 25), 500: (20, 25), 1000: (25, 40)}  # flight lines x photos per line
STAGES = ("priors_s", "extract_s", "pairs_s", "match_s", "tracks_s", "reconstruct_s", "export_s", "total_s")
SAMPLE_S = 0.2


def grid_for(n):
    """(rows, cols) of a survey of exactly n photos: the table above, else lines ~1.6x as long as wide."""
    if n in GRIDS:
        return GRIDS[n]
    rows = max(1, round(math.sqrt(n / 1.6)))
    while n % rows:
        rows -= 1
    return rows, n // rows


def survey_for(n, cache):
    """The cached survey of n photos (generated on first use)."""
    from alignkit.core.synthetic import SurveySpec, generate_survey

    folder = Path(cache) / f"survey-{n}"
    if not (folder / "ground_truth.json").exists():
        rows, cols = grid_for(n)
        print(f"bench-scale: generating {n} photos ({rows} x {cols}) in {folder}", flush=True)
        generate_survey(folder, SurveySpec(rows=rows, cols=cols, gps_noise_h_m=1.0, gps_noise_v_m=2.0))
    return folder


class TreeRss:
    """Samples the summed RSS of a process and all its descendants in a thread; .peak_mb after stop()."""

    def __init__(self, pid, interval=SAMPLE_S):
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self.peak_processes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self):
        import psutil

        try:
            procs = [self._root] + self._root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a worker that ended between the listing and the reading
                pass
        if total / 2**20 > self.peak_mb:
            self.peak_mb, self.peak_processes = total / 2**20, len(procs)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def mean_track_length(gpkg):
    from osgeo import ogr

    from alignkit.core.report import read_columns

    ds = ogr.Open(str(gpkg))
    lengths = read_columns(ds, "sparse_points", ["track_length"])["track_length"]
    ds = None
    return float(lengths.mean()) if len(lengths) else float("nan")


def bench_size(n, cache):
    from alignkit.core.config import AlignConfig
    from alignkit.core.synthetic import load_ground_truth
    from alignkit.tools.demo import camera_errors

    survey = survey_for(n, cache)
    run_dir = Path(cache) / f"run-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh workspace: every stage is measured
    run_dir.mkdir(parents=True)
    output = run_dir / "result.gpkg"
    size = AlignConfig().max_image_size
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from alignkit.tools.bench import _child_align; "
         "_child_align(sys.argv[1], sys.argv[2], int(sys.argv[3]))", str(survey / "images"), str(output), str(size)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeRss(proc.pid)
    out, err = proc.communicate()
    peak_mb = sampler.stop()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and its workers, once reaped
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (run_dir / "stderr.log").write_text(err)
    lines = [ln for ln in out.splitlines() if ln.startswith("BENCH-JSON ")]
    if proc.returncode != 0 or not lines:
        return {"photos": n, "error": err[-3000:]}
    summary = json.loads(lines[-1][len("BENCH-JSON "):])
    gt = load_ground_truth(survey)
    registered, total, _, shape = camera_errors(output, gt)
    altitude = float(gt["spec"]["altitude_m"])
    rms = float(np.sqrt(np.mean(shape**2))) if len(shape) else float("nan")
    result = {
        "photos": n, "grid": list(grid_for(n)), "wall_s": wall, "cpu_s": cpu,
        **{k: summary.get(k) for k in STAGES},
        "seconds_per_photo": summary["total_s"] / n,
        "registered": registered, "components": summary.get("components"), "points": summary.get("points"),
        "mean_reproj_px": summary.get("mean_reproj_px"),
        "flying_height_m": altitude,
        "shape_rms_m": rms, "shape_max_m": float(shape.max()) if len(shape) else float("nan"),
        "shape_rms_pct_height": 100.0 * rms / altitude,
        "mean_track_length": mean_track_length(output),
        "peak_tree_rss_mb": peak_mb, "peak_tree_processes": sampler.peak_processes,
        "peak_rss_main_mb": summary.get("peak_rss_mb"), "peak_rss_worker_mb": summary.get("peak_rss_worker_mb"),
        "workers": summary.get("config", {}).get("workers"),
    }
    return result


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in results if "error" not in r), key=lambda r: r["photos"])
    if not rows:
        return
    n = np.array([r["photos"] for r in rows], float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("total_s", "total"), ("extract_s", "extract"), ("match_s", "match"),
                       ("reconstruct_s", "reconstruct")):
        ax1.plot(n, [r[key] / r["photos"] for r in rows], "o-", label=label)
    ax1.set_xlabel("photos")
    ax1.set_ylabel("seconds per photo")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(n, [r["peak_tree_rss_mb"] / 1024 for r in rows], "o-", color="C3")
    ax2.set_xlabel("photos")
    ax2.set_ylabel("peak RSS of the process tree (GiB)")
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    fig.suptitle("AlignKit bench-scale (1200x900 generated surveys, GPS noise 1 m / 2 m)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated photo counts")
    ap.add_argument("--cache", default=str(ROOT / "out" / "bench-scale"), help="surveys and run folders")
    ap.add_argument("--out", default=str(ROOT / "bench"))
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, not {args.sizes!r}")
    if not sizes or min(sizes) < 4:
        ap.error("--sizes: at least one size, each >= 4 photos")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.json"
    previous = json.loads(path.read_text()).get("sizes", []) if path.exists() else []
    results = {r["photos"]: r for r in previous}
    for n in sizes:
        print(f"bench-scale: {n} photos ...", flush=True)
        results[n] = bench_size(n, args.cache)
        print(json.dumps(results[n], indent=1), flush=True)
        rows = [results[k] for k in sorted(results)]
        path.write_text(json.dumps({"sizes": rows}, indent=1))  # after each size: a long run keeps what it has
        plot(rows, out / "scale.png")
    print(f"bench-scale: wrote {path} and {out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
