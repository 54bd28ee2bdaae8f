"""Generate a synthetic drone survey with ground truth (see core/synthetic.py).

.venv/bin/python -m alignkit.tools.make_survey --out DIR [--rows 4 --cols 5 --altitude 60 --relief 8
    --gps-noise-h 0 --gps-noise-v 0 --gps-drift-v 0 --attitude-noise 0 [--no-attitude] --yaw 0 --seed 1
    --width 1200 --height 900]
"""

import argparse
import sys
import time

from alignkit.core.synthetic import SurveySpec, generate_survey


def main(argv=None):
    d = SurveySpec()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (images/ and ground_truth.json)")
    ap.add_argument("--rows", type=int, default=d.rows, help="flight lines")
    ap.add_argument("--cols", type=int, default=d.cols, help="images per flight line")
    ap.add_argument("--altitude", type=float, default=d.altitude_m, help="metres above the take-off ground")
    ap.add_argument("--relief", type=float, default=d.relief_m, help="terrain peak-to-peak height, metres")
    ap.add_argument("--overlap", type=float, default=d.overlap, help="forward overlap (0-1)")
    ap.add_argument("--sidelap", type=float, default=d.sidelap, help="side overlap (0-1)")
    ap.add_argument(
        "--gps-noise-h", type=float, default=d.gps_noise_h_m, help="horizontal GPS noise std, metres"
    )
    ap.add_argument(
        "--gps-noise-v", type=float, default=d.gps_noise_v_m, help="vertical GPS noise std, metres"
    )
    ap.add_argument(
        "--gps-drift-v", type=float, default=d.gps_drift_v_m,
        help="GPS altitude drift over the flight (linear in capture time), metres",
    )
    ap.add_argument(
        "--attitude-noise", type=float, default=d.attitude_noise_deg,
        help="std of the noise on the recorded gimbal angles (XMP), degrees",
    )
    ap.add_argument("--no-attitude", action="store_true", help="write no gimbal / flight attitude to XMP")
    ap.add_argument("--yaw", type=float, default=d.yaw_deg, help="heading of the first line, deg from north")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--focal-mm", type=float, default=d.focal_mm)
    ap.add_argument("--sensor-width-mm", type=float, default=d.sensor_width_mm)
    ap.add_argument("--k1", type=float, default=d.k1, help="radial distortion of the rendered lens")
    ap.add_argument("--k2", type=float, default=d.k2)
    ap.add_argument(
        "--jitter", type=float, default=d.attitude_jitter_deg, help="attitude jitter std, degrees"
    )
    a = ap.parse_args(argv)
    try:
        spec = SurveySpec(
            rows=a.rows,
            cols=a.cols,
            altitude_m=a.altitude,
            relief_m=a.relief,
            overlap=a.overlap,
            sidelap=a.sidelap,
            gps_noise_h_m=a.gps_noise_h,
            gps_noise_v_m=a.gps_noise_v,
            gps_drift_v_m=a.gps_drift_v,
            attitude_noise_deg=a.attitude_noise,
            attitude_records=not a.no_attitude,
            yaw_deg=a.yaw,
            seed=a.seed,
            width=a.width,
            height=a.height,
            focal_mm=a.focal_mm,
            sensor_width_mm=a.sensor_width_mm,
            k1=a.k1,
            k2=a.k2,
            attitude_jitter_deg=a.jitter,
        )
    except ValueError as e:
        ap.error(str(e))
    t0 = time.perf_counter()
    try:
        out = generate_survey(a.out, spec)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"make_survey: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{spec.n_images} images and ground_truth.json written to {out} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
