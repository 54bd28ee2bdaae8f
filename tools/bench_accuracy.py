"""`make bench-accuracy`: camera shape error against exact truth; COLMAP on the same photos (optional).

    python -m alignkit.tools.bench_accuracy [--out bench] [--cache out/bench-accuracy]
        [--blocks 18,240] [--seeds18 1,2,3] [--seeds240 1] [--anchor-python .venv-anchor/bin/python]
    python -m alignkit.tools.bench_accuracy --knobs [--seeds18 1,2,3]

Generated blocks (core/synthetic.py, cached under --cache, which is git-ignored) with GPS noise like
a consumer drone (1 m horizontal, 2 m vertical std):
  18:  3 lines x 6 photos, 2000x1500 (the issue's 18-photo block)
  240: 12 lines x 20 photos, 1200x900 (`make_survey --rows 12 --cols 20 --gps-noise-h 1 --gps-noise-v 2`)
For each: AlignKit (core.pipeline.run with the default AlignConfig, in a child process) and its
camera shape error (centres after a similarity fit to the truth, tools.evaluate.camera_shape_error:
mm and % of the flying height), rotation error, mean track length (and over the points seen in 3+
photos: COLMAP's default mapper triangulates no two-view tracks, so that is the figure to compare;
tools.evaluate.track_length_stats), points, seconds. With
BENCH_ANCHOR=1 (or --anchor-python): COLMAP on the same photos in the same run, through
tools/colmap_anchor.py in its own venv (incremental mapper, exhaustive matching for 18 photos;
global mapper, spatial matching for 240), same working size and feature budget; the ratios
AlignKit / COLMAP (BENCH_ANCHOR_REUSE=1: COLMAP's result from an earlier run on the same photos and
options, marked "reused", instead of running it again). Writes <out>/accuracy.json and prints a
markdown table.

--knobs: where the precision goes, on the 18-photo blocks: the pipeline with one setting changed at a
time (features and, where the change does not touch matching, matches reused from the baseline
run), shape error and track length per seed; writes <out>/accuracy_knobs.json.
"""
import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GPS_NOISE = {"gps_noise_h_m": 1.0, "gps_noise_v_m": 2.0}  # a consumer drone's GNSS
BLOCKS = {
    "18": {"spec": {"rows": 3, "cols": 6, "width": 2000, "height": 1500},
           "colmap": {"mapper": "incremental", "matcher": "exhaustive"}},
    "240": {"spec": {"rows": 12, "cols": 20, "width": 1200, "height": 900},
            "colmap": {"mapper": "global", "matcher": "spatial"}},
}
# One setting changed at a time (name -> AlignConfig overrides; "sift_offset_px" is the keypoint
# convention: 0 leaves OpenCV's +0.25 px uncorrected).
KNOBS = {
    "baseline": {},
    "ba_points_per_image=0 (all)": {"ba_points_per_image": 0},
    "ba_points_per_image=1600": {"ba_points_per_image": 1600},
    "ba_final_points_per_image=800": {"ba_final_points_per_image": 800},
    "ba_final_points_per_image=0 (all)": {"ba_final_points_per_image": 0},
    "ransac_threshold_px=1.0": {"ransac_threshold_px": 1.0},
    "ransac_threshold_px=2.5": {"ransac_threshold_px": 2.5},
    "lowe_ratio=0.85": {"lowe_ratio": 0.85},
    "pair_neighbors=12": {"pair_neighbors": 12},
    "pair_neighbors=all": {"pair_neighbors": 17},
    "min_inliers=15": {"min_inliers": 15},
    "min_inliers=60": {"min_inliers": 60},
    "ba_max_iterations=200": {"ba_max_iterations": 200},
    "keypoint offset uncorrected": {"sift_offset_px": 0.0},
    "refine_distortion=False": {"refine_distortion": False},  # the generated lens has none: an upper bound
}
MATCH_KEYS = {"ransac_threshold_px", "lowe_ratio", "pair_neighbors", "min_inliers", "pair_overlap_margin",
              "matcher", "verification", "guided_match_features", "guided_match_radius", "homography_ratio"}


def survey(cache, block, seed):
    """The generated block (made once, then reused while its spec is the same)."""
    from alignkit.core.synthetic import SurveySpec, generate_survey

    spec = SurveySpec(**BLOCKS[block]["spec"], **GPS_NOISE, seed=seed)
    out = Path(cache) / f"survey{block}-seed{seed}"
    gt = out / "ground_truth.json"
    want = json.loads(json.dumps(dataclasses.asdict(spec)))
    if gt.exists() and json.loads(gt.read_text()).get("spec") == want:
        return out
    t = time.perf_counter()
    generate_survey(out, spec)
    print(f"generated {out} ({spec.n_images} photos) in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def _child(survey_dir, work, overrides):
    """Runs in a child process: the alignment, then its figures against the truth as one JSON line."""
    from alignkit.core import features, pipeline, workspace
    from alignkit.core.config import AlignConfig
    from alignkit.core.synthetic import load_ground_truth
    from alignkit.tools.evaluate import camera_shape_error, track_length_stats

    overrides = dict(overrides)
    offset = overrides.pop("sift_offset_px", None)
    if offset is not None:  # the extraction must run in this process to see the changed convention
        features.OPENCV_SIFT_OFFSET_PX = float(offset)
        overrides["workers"] = 1
    ws = Path(work) / "workspace"
    cfg = AlignConfig(images=str(Path(survey_dir) / "images"), output=str(Path(work) / "result.gpkg"),
                      workspace=str(ws), **overrides)
    summary = pipeline.run(cfg)
    recon = pipeline._load_reconstruction(ws / "reconstruction.npz")
    names = [im["name"] for im in workspace.read_json(ws / "cameras.json")["images"]]
    reg = np.flatnonzero(recon.registered)
    truth = load_ground_truth(survey_dir)
    shape = camera_shape_error([names[k] for k in reg], recon.C[reg], recon.R[reg], truth)
    track_length = np.bincount(recon.obs_point, minlength=len(recon.points))
    result = {
        "images": summary["images"], "registered": summary["registered"], "components": summary["components"],
        "points": int(len(recon.points)), **track_length_stats(track_length), "mean_reproj_px": summary["mean_reproj_px"],
        **shape,
        **{k: summary.get(k) for k in ("extract_s", "match_s", "tracks_s", "reconstruct_s", "total_s")},
        "ba_max_iterations": cfg.ba_max_iterations,
        # (kind, images moved, points, observations, evaluations, s, rms before, rms after): the last
        # adjustments are finish_component's; evaluations == ba_max_iterations means it stopped unconverged
        "ba_final": [list(e) for e in recon.ba_log[-5:]],
        "focal_change_percent": [m.get("focal_change_percent") for m in summary.get("camera_models", [])],
    }
    print("BENCH-JSON " + json.dumps(result, default=float))


def run_alignkit(survey_dir, work, overrides=None, reuse=None):
    """AlignKit on a generated survey in a child process; `reuse`: a workspace whose features and
    matches are hard-linked in first (their stamps make the pipeline redo what a setting changes)."""
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if reuse is not None:
        shutil.copytree(Path(reuse), work / "workspace", copy_function=os.link,
                        ignore=shutil.ignore_patterns("reconstruction.npz"))
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, json; from alignkit.tools.bench_accuracy import _child; "
         "_child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))", str(survey_dir), str(work),
         json.dumps(overrides or {})], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-JSON ")][-1]
    result = json.loads(line[len("BENCH-JSON "):])
    result["wall_s"] = time.perf_counter() - t
    return result


def run_colmap(anchor_python, survey_dir, work, block, config, reuse=False):
    """COLMAP through tools/colmap_anchor.py in its own venv; its shape error against the same truth.
    reuse: take the result a previous run left for the same photos and options (marked "reused")."""
    from alignkit.core.synthetic import load_ground_truth
    from alignkit.tools.evaluate import camera_shape_error

    out = Path(work) / "colmap.json"
    opts = BLOCKS[block]["colmap"]
    want = {"mapper": opts["mapper"], "matcher": opts["matcher"], "max_image_size": config.max_image_size,
            "max_features": config.max_features}
    cached = json.loads(out.read_text()) if reuse and out.exists() else {}
    if cached and all(cached.get(k) == v for k, v in want.items()):
        result, wall = cached, None
    else:
        cmd = [str(anchor_python), str(ROOT / "tools" / "colmap_anchor.py"), str(Path(survey_dir) / "images"),
               str(Path(work) / "colmap"), str(out), "--mapper", opts["mapper"], "--matcher", opts["matcher"],
               "--max-image-size", str(config.max_image_size), "--max-features", str(config.max_features)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            return {"error": (proc.stderr or proc.stdout)[-3000:]}
        result, wall = json.loads(out.read_text()), time.perf_counter() - t
    cams = result.pop("cameras")
    result.update(wall_s=wall, reused=wall is None)
    if len(cams) >= 3:
        names = sorted(cams)
        result.update(camera_shape_error(names, np.array([cams[n]["C"] for n in names]),
                                         np.array([cams[n]["R"] for n in names]), load_ground_truth(survey_dir)))
    shutil.rmtree(Path(work) / "colmap", ignore_errors=True)  # its database is big and not needed again
    return result


def anchor_python(arg):
    path = arg or (str(ROOT / ".venv-anchor" / "bin" / "python") if os.environ.get("BENCH_ANCHOR") == "1" else "")
    if path and not Path(path).exists():
        raise SystemExit(f"bench_accuracy: {path} not found: `make bench-accuracy BENCH_ANCHOR=1` creates it")
    return path


def bench(cache, blocks, seeds, anchor, reuse_anchor=False):
    from alignkit.core.config import AlignConfig

    config = AlignConfig()
    rows = []
    for block in blocks:
        for seed in seeds[block]:
            src = survey(cache, block, seed)
            work = Path(cache) / "runs" / f"{block}-seed{seed}"
            row = {"block": block, "seed": seed, "alignkit": run_alignkit(src, work / "alignkit")}
            if anchor:
                row["colmap"] = run_colmap(anchor, src, work, block, config, reuse_anchor)
                a, c = row["alignkit"], row["colmap"]
                row["ratios"] = {k: a[k] / c[k] for k in ("shape_rms_mm", "mean_track_length", "mean_track_length_3plus",
                                                          "total_s")
                                 if isinstance(a.get(k), (int, float)) and c.get(k)}
            rows.append(row)
            print(table([row]), flush=True)
    return {"config": {"max_image_size": config.max_image_size, "max_features": config.max_features},
            "gps_noise": GPS_NOISE, "blocks": {b: BLOCKS[b] for b in blocks}, "runs": rows}


def knobs(cache, seeds, only=()):
    rows = []
    for seed in seeds:
        src = survey(cache, "18", seed)
        base = Path(cache) / "knobs" / f"18-seed{seed}"
        for name, overrides in KNOBS.items():
            if only and name not in only and name != "baseline":
                continue
            reuse = None
            if name != "baseline" and "sift_offset_px" not in overrides:
                reuse = base / "baseline" / "workspace"
            result = run_alignkit(src, base / name.replace(" ", "_").replace("=", "-"), overrides, reuse)
            result.update(knob=name, seed=seed, matching_redone=bool(MATCH_KEYS & set(overrides)))
            rows.append(result)
            print(f"seed {seed} {name}: " + (result.get("error", "")[-300:] or
                  f"{result['shape_rms_mm']:.2f} mm, track {result['mean_track_length']:.2f}, "
                  f"{result['points']} points, match {result['match_s']:.1f} s, "
                  f"reconstruct {result['reconstruct_s']:.1f} s, final BA {result['ba_final'][-1]}"), flush=True)
    return {"knobs": KNOBS, "runs": rows}


def _fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _track(r):
    """Mean track length, and over the 3+ photo points (COLMAP's default keeps no two-view tracks)."""
    return f"{_fmt(r.get('mean_track_length'), '.2f')} ({_fmt(r.get('mean_track_length_3plus'), '.2f')})"


def table(rows):
    lines = ["| block | seed | AlignKit shape mm (% height) | rot deg | track (3+) | points | s | COLMAP shape mm (%) "
             "| track (3+) | points | s | shape ratio | track ratio (3+) |", "|" + "---|" * 13]
    for r in rows:
        a, c, q = r["alignkit"], r.get("colmap", {}), r.get("ratios", {})
        lines.append(
            f"| {r['block']} | {r['seed']} | {_fmt(a.get('shape_rms_mm'), '.2f')} "
            f"({_fmt(a.get('shape_percent_of_height'), '.4f')}) | {_fmt(a.get('rotation_mean_deg'), '.4f')} | "
            f"{_track(a)} | {_fmt(a.get('points'), 'd')} | {_fmt(a.get('total_s'), '.0f')} | "
            f"{_fmt(c.get('shape_rms_mm'), '.2f')} ({_fmt(c.get('shape_percent_of_height'), '.4f')}) | "
            f"{_track(c)} | {_fmt(c.get('points'), 'd')} | {_fmt(c.get('total_s'), '.0f')} | "
            f"{_fmt(q.get('shape_rms_mm'), '.2f')} | {_fmt(q.get('mean_track_length'), '.2f')} "
            f"({_fmt(q.get('mean_track_length_3plus'), '.2f')}) |")
    return "\n".join(lines)


def knob_table(rows):
    names = list(dict.fromkeys(r["knob"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    head = "| setting | " + " | ".join(f"seed {s} mm / track" for s in seeds) + " | match s | reconstruct s |"
    lines = [head, "|" + "---|" * (len(seeds) + 3)]
    for name in names:
        cells, match, recon = [], [], []
        for s in seeds:
            r = next((x for x in rows if x["knob"] == name and x["seed"] == s), {})
            cells.append(f"{_fmt(r.get('shape_rms_mm'), '.2f')} / {_fmt(r.get('mean_track_length'), '.2f')}")
            match.append(r.get("match_s") if r.get("matching_redone") or name == "baseline" else None)
            recon.append(r.get("reconstruct_s"))
        mean = lambda v: float(np.mean([x for x in v if x is not None])) if any(x is not None for x in v) else None  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(mean(match), '.1f')} | {_fmt(mean(recon), '.1f')} |")
    return "\n".join(lines)


def _seeds(text):
    return [int(s) for s in str(text).split(",") if s.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench")
    ap.add_argument("--cache", default=str(ROOT / "out" / "bench-accuracy"))
    ap.add_argument("--blocks", default="18,240")
    ap.add_argument("--seeds18", default="1,2,3")
    ap.add_argument("--seeds240", default=os.environ.get("SEEDS240", "1"))
    ap.add_argument("--anchor-python", default="", help="python of a venv with pycolmap (BENCH_ANCHOR=1: .venv-anchor)")
    ap.add_argument("--reuse-anchor", action="store_true",
                    help="take COLMAP's result from an earlier run on the same photos (BENCH_ANCHOR_REUSE=1)")
    ap.add_argument("--knobs", action="store_true", help="the one-setting-at-a-time study on the 18-photo blocks")
    ap.add_argument("--knob", action="append", default=[], choices=list(KNOBS), help="with --knobs: only these")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    blocks = [b.strip() for b in a.blocks.split(",") if b.strip()]
    unknown = set(blocks) - set(BLOCKS)
    if unknown:
        ap.error(f"unknown block(s) {', '.join(sorted(unknown))}; known: {', '.join(BLOCKS)}")
    if a.knobs:
        figures = knobs(a.cache, _seeds(a.seeds18), a.knob)
        path = Path(a.out) / ("accuracy_knobs.json" if not a.knob else "accuracy_knobs_some.json")
        path.write_text(json.dumps(figures, indent=1))
        print(f"{path}\n" + knob_table(figures["runs"]))
        return 0
    figures = bench(a.cache, blocks, {"18": _seeds(a.seeds18), "240": _seeds(a.seeds240)}, anchor_python(a.anchor_python),
                    a.reuse_anchor or os.environ.get("BENCH_ANCHOR_REUSE") == "1")
    path = Path(a.out) / "accuracy.json"
    path.write_text(json.dumps(figures, indent=1))
    print(f"{path}\n" + table(figures["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
