"""Re-adjusting with ground control against a full run (issue 10, item 5), on brighton_beach.

    python -m alignkit.tools.bench_control --out bench/control [--images ../shared/data/brighton_beach/images]

1. a full alignment (timed); 2. pseudo-control from its own reconstruction: five tracks seen in four
or more photos (the four corners of the block and its centre), surveyed at their position plus a
datum shift (0.5, -0.3, 2.0) m, the centre one a check point, written as gcp_list.txt; 3. the same
alignment with GCP_FILE, reusing the workspace (only the control adjustment runs); 4. a fresh full run
with the same control. Prints JSON: seconds, the re-adjustment's share of a full run, the control /
check RMSE, the estimated GPS bias (should be the datum shift), and how far the re-adjusted and the
fresh cameras are apart. Compare ratios, not seconds: these machines are noisy.
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIFT = np.array([0.5, -0.3, 2.0])


def _cameras(gpkg):
    from osgeo import ogr

    ds = ogr.Open(str(gpkg))
    out = {}
    for f in ds.GetLayerByName("cameras"):
        g = f.GetGeometryRef()
        if f["registered"]:
            out[f["image"]] = np.array([g.GetX(), g.GetY(), g.GetZ()])
    return out


def pseudo_control(workspace, crs, path):
    """gcp_list.txt from a saved reconstruction: five spread long tracks, shifted by SHIFT."""
    from alignkit.core.geo import LocalFrame
    from alignkit.core.pipeline import _load_reconstruction
    from alignkit.core.workspace import read_json

    rec = _load_reconstruction(Path(workspace) / "reconstruction.npz")
    cams = read_json(Path(workspace) / "cameras.json")
    frame = LocalFrame(**cams["frame"])
    names = [c["name"] for c in cams["images"]]
    cand = np.flatnonzero(np.bincount(rec.obs_point, minlength=len(rec.points)) >= 4)
    P = rec.points[cand]
    centre = P[:, :2].mean(0)
    picks = [cand[np.argmax((P[:, :2] - centre) @ np.array(d, float))] for d in ([1, 1], [1, -1], [-1, 1], [-1, -1])]
    picks.append(cand[np.argmin(np.linalg.norm(P[:, :2] - centre, axis=1))])
    xyz = frame.to_crs(rec.points[picks] + SHIFT, crs)
    lines = [crs]
    for k, p in enumerate(picks):
        for o in np.flatnonzero(rec.obs_point == p):
            lines.append(f"{xyz[k, 0]:.3f} {xyz[k, 1]:.3f} {xyz[k, 2]:.3f} {rec.obs_xy[o, 0]:.2f} "
                         f"{rec.obs_xy[o, 1]:.2f} {names[rec.obs_image[o]]} gcp{k}")
    Path(path).write_text("\n".join(lines) + "\n")
    return "gcp4"  # the centre one is checked


def main(argv=None):
    from alignkit.core import pipeline
    from alignkit.core.config import AlignConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "brighton_beach" / "images"))
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = {"images": a.images, "workers": a.workers}
    full = pipeline.run(AlignConfig(output=str(out / "full.gpkg"), workspace=str(out / "ws"), **base))
    check = pseudo_control(out / "ws", full["crs"], out / "gcp_list.txt")
    ctl = {"gcp_file": str(out / "gcp_list.txt"), "check_points": check}
    readj = pipeline.run(AlignConfig(output=str(out / "readjusted.gpkg"), workspace=str(out / "ws"), **base, **ctl))
    fresh = pipeline.run(AlignConfig(output=str(out / "fresh.gpkg"), workspace=str(out / "ws2"), **base, **ctl))
    a_cams, b_cams = _cameras(out / "readjusted.gpkg"), _cameras(out / "fresh.gpkg")
    result = {
        "full_s": full["total_s"], "readjust_s": readj["total_s"], "readjust_control_s": readj["control_s"],
        "fresh_with_control_s": fresh["total_s"],
        "readjust_share_of_full": readj["total_s"] / full["total_s"],
        "readjust_share_of_fresh": readj["total_s"] / fresh["total_s"],
        "control_rmse_m": readj["control_rmse_m"], "check_rmse_m": readj["check_rmse_m"],
        "datum_shift_m": SHIFT.tolist(), "log": [s for s in readj["log"] if s.startswith("control")],
        "readjusted_vs_fresh_cameras_max_m": max(float(np.linalg.norm(a_cams[k] - b_cams[k])) for k in a_cams),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
