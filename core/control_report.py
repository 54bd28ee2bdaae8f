"""The control stage of the alignment and its accuracy statement.

run_control reads the control file, adjusts the reconstruction with the control points
(core.control_adjust), triangulates the check points from the adjusted cameras (never used in the
adjustment), and reports per point dX, dY, dZ (estimated minus surveyed, in the target CRS's axes),
the RMSE per axis, horizontal and vertical for control and check points separately (ASPRS style),
the `control_points` layer, and warnings: a point in fewer than two photos, a measurement far from
its reprojection (named by photo: probably clicked wrong), control that does not span the block,
fewer than three control points.
"""
import numpy as np

from .control import read_control, to_local
from .control_adjust import adjust_with_control, reprojection, spans_block, triangulate
from .gpkg import Layer

CONTROL_FIELDS = [("name", "str"), ("role", "str"), ("n_images", "int"), ("dx", "real"), ("dy", "real"),
                  ("dz", "real"), ("reproj_px", "real")]
MAX_MEASUREMENT_OFF_PX = 3.0  # a measurement further than this from its point's reprojection is flagged


def rmse(rows):
    """{"x", "y", "z", "horizontal", "vertical", "n"} over rows with dx, dy, dz (None when n = 0)."""
    d = np.array([(r["dx"], r["dy"], r["dz"]) for r in rows if r["dx"] is not None], np.float64).reshape(-1, 3)
    if not len(d):
        return {"x": None, "y": None, "z": None, "horizontal": None, "vertical": None, "n": 0}
    x, y, z = np.sqrt(np.mean(d**2, axis=0))
    return {"x": float(x), "y": float(y), "z": float(z), "horizontal": float(np.sqrt(x * x + y * y)),
            "vertical": float(z), "n": int(len(d))}


def run_control(config, priors, usable, recon, cams, gps_enu, frame, crs, is_canceled=None):
    """Returns (adjusted Reconstruction, result) with result = {"rows", "control_rmse_m", "check_rmse_m",
    "warnings", "log", "layer"}. Raises ControlError for a bad control file (nothing is written)."""
    sizes = {p.name: (p.width, p.height) for p in priors if p.width > 0 and p.height > 0}
    cs = read_control(config.gcp_file, sizes, config.check_points)
    if frame is None:
        raise ValueError(f"{config.gcp_file}: ground control needs photos with GPS to start from (fewer than 3 have it)")
    to_local(cs, frame)
    index = {p.name: i for i, p in enumerate(usable)}
    warnings = list(cs.warnings)
    for p in cs.points:
        dropped = [m.image for m in p.measurements if m.image not in index]
        if dropped:
            warnings.append(f"control point '{p.name}': photo(s) {', '.join(dropped)} not usable for alignment: "
                            "their measurements are ignored")
        p.measurements = [m for m in p.measurements if m.image in index]

    def meas(p):
        return (np.array([index[m.image] for m in p.measurements], np.int64),
                np.array([(m.x, m.y) for m in p.measurements], np.float64).reshape(-1, 2))

    control = []
    for p in cs.points:
        if p.role == "control" and p.usable:
            im, xy = meas(p)
            control.append((p.name, p.enu, np.array([p.sigma_h_m, p.sigma_h_m, p.sigma_v_m]), im, xy))
    n_control = sum(1 for c in control if recon.registered[c[3]].sum() >= 2)
    log = []
    if n_control:
        recon, adjusted, log, freed = adjust_with_control(recon, cams, gps_enu, control, config, is_canceled)
    else:
        adjusted, freed = {}, False
        warnings.append(f"{config.gcp_file}: no usable control point (each needs two registered photos): "
                        "georeferenced by GPS alone")
    if 0 < n_control < 3:
        warnings.append(f"only {n_control} control point(s): georeferencing falls back to the GPS for what control "
                        "cannot fix (rotation, scale, focal); three or more spread over the block are needed")
    enu_ctl = np.array([c[1][:2] for c in control]).reshape(-1, 2)
    if n_control >= 3 and not spans_block(enu_ctl, recon.C[recon.registered, :2]):
        warnings.append("the control points do not span the block: accuracy away from them is not controlled")

    R, C = recon.R, recon.C
    f, k1, k2 = recon.focal, recon.k1, recon.k2
    pp = np.array([c["K"][:2, 2] for c in cams], np.float64)
    rows, feats = [], []
    for p in cs.points:
        row = {"name": p.name, "role": p.role, "n_images": len({m.image for m in p.measurements}),
               "dx": None, "dy": None, "dz": None, "reproj_px": None, "problems": list(p.problems),
               "images": [m.image for m in p.measurements]}
        for text in p.problems:
            warnings.append(f"{p.role} point '{p.name}': {text}")
        X = None
        if p.measurements and np.isfinite(p.enu).all():
            im, xy = meas(p)
            if p.name in adjusted:
                X = adjusted[p.name]
            elif p.usable:
                X, _ = triangulate(im, xy, R, C, f, k1, k2, pp)
                X = X if np.isfinite(X).all() else None
                if X is None:
                    row["problems"].append("fewer than two of its photos are registered: not estimated")
                    warnings.append(f"{p.role} point '{p.name}': {row['problems'][-1]}")
            if X is not None:
                res = reprojection(X, im, xy, R, C, f, k1, k2, pp)
                err = np.linalg.norm(res, axis=1)
                ok = np.isfinite(err)
                row["reproj_px"] = float(np.sqrt(np.mean(err[ok] ** 2))) if ok.any() else None
                row["reproj_by_image"] = {m.image: float(e) for m, e in zip(p.measurements, err) if np.isfinite(e)}
                for m, e in zip(p.measurements, err):
                    if np.isfinite(e) and e > MAX_MEASUREMENT_OFF_PX:
                        warnings.append(f"{p.role} point '{p.name}' in photo {m.image}: measured {e:.1f} px from "
                                        "where the adjusted point projects (probably clicked wrong)")
                est, sur = frame.to_crs(np.vstack([X, p.enu]), crs) if crs else np.vstack([X, p.enu])
                row["dx"], row["dy"], row["dz"] = (float(v) for v in est - sur)
                row["xyz"] = est.tolist()
        if X is None and np.isfinite(p.enu).all():
            row["xyz"] = (frame.to_crs(p.enu[None], crs)[0] if crs else p.enu).tolist()
        rows.append(row)
        if "xyz" in row:
            feats.append((tuple(row["xyz"]), {k: row[k] for k, _ in CONTROL_FIELDS}))
    result = {
        "rows": rows,
        "control_rmse_m": rmse([r for r in rows if r["role"] == "control"]),
        "check_rmse_m": rmse([r for r in rows if r["role"] == "check"]),
        "control_source": str(config.gcp_file),
        "control_focal_freed": bool(freed),
        "warnings": warnings,
        "log": log,
        "layer": Layer("control_points", "PointZ", CONTROL_FIELDS, feats),
    }
    return recon, result


def predict_from_workspace(workspace_dir, cs, margin_px=0.0):
    """Where each point of a ControlSet should appear, from the alignment saved in a workspace (the
    reconstruction before control): [(point name, photo name, x, y)]. For the marking dialog and
    for finding targets (core.targets.locate)."""
    from pathlib import Path

    from .control import predict_pixels
    from .geo import LocalFrame
    from .pipeline import _load_reconstruction
    from .workspace import read_json

    ws = Path(workspace_dir)
    cams = read_json(ws / "cameras.json")
    recon = _load_reconstruction(ws / "reconstruction.npz")
    if recon is None or cams["frame"] is None:
        raise ValueError(f"{ws}: no georeferenced alignment saved in this workspace")
    to_local(cs, LocalFrame(**cams["frame"]))
    names = [c["name"] for c in cams["images"]]
    sizes = [(c["width"], c["height"]) for c in cams["images"]]
    out = []
    for p in cs.points:
        if np.isfinite(p.enu).all():
            for name, x, y in predict_pixels(p.enu, recon.R, recon.C, recon.focal, recon.k1, recon.k2, sizes,
                                             names, margin_px):
                out.append((p.name, name, x, y))
    return out


def control_section_html(summary):
    """The HTML report's ground-control section: RMSE per axis (control and check separately), one row
    per point, and the error vectors over the block. Empty when the run had no control."""
    from .report import _figure_html, _fmt, _new_figure, _table

    rows = summary.get("control_points") or []
    if not rows:
        return ""
    out = ["<h2>Ground control and check points</h2>"]
    if summary.get("control_focal_freed"):
        out.append("<p>The control points span the block in plan and height: the focal length was freed and "
                   "the control settles the focal/height trade-off.</p>")
    rm = []
    for label, key in (("control (in the adjustment)", "control_rmse_m"), ("check (independent)", "check_rmse_m")):
        r = summary.get(key) or {}
        rm.append([label, r.get("n", 0)] + [_fmt(r.get(k), 3) for k in ("x", "y", "z", "horizontal", "vertical")])
    out.append(_table(["points", "n", "RMSE X (m)", "RMSE Y (m)", "RMSE Z (m)", "horizontal (m)", "vertical (m)"], rm))
    out.append(_table(["name", "role", "photos", "dX (m)", "dY (m)", "dZ (m)", "reprojection (px)", "problems"],
                      [[r["name"], r["role"], r["n_images"], _fmt(r["dx"], 3), _fmt(r["dy"], 3), _fmt(r["dz"], 3),
                        _fmt(r["reproj_px"]), "; ".join(r.get("problems") or [])] for r in rows]))
    pts = [r for r in rows if r.get("dx") is not None and r.get("xyz")]
    fig, ax = _new_figure(5.6, 5.0)
    ax.set_title("Estimated minus surveyed (arrows), colour = dZ")
    if pts:
        xy = np.array([r["xyz"][:2] for r in pts])
        d = np.array([(r["dx"], r["dy"], r["dz"]) for r in pts])
        xy0 = xy.mean(0)
        rel = xy - xy0
        extent = max(float(np.ptp(rel[:, 0])), float(np.ptp(rel[:, 1])), 1.0)
        gain = 0.15 * extent / max(float(np.hypot(d[:, 0], d[:, 1]).max()), 1e-9)
        vmax = max(float(np.abs(d[:, 2]).max()), 1e-9)
        q = ax.quiver(rel[:, 0], rel[:, 1], d[:, 0] * gain, d[:, 1] * gain, d[:, 2], cmap="coolwarm",
                      clim=(-vmax, vmax), angles="xy", scale_units="xy", scale=1, width=0.008)
        for r, (x, y) in zip(pts, rel):
            ax.scatter([x], [y], marker="^" if r["role"] == "control" else "D", s=40,
                       color="#d7191c" if r["role"] == "control" else "#2c7bb6", zorder=3)
            ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fig.colorbar(q, ax=ax, label="dZ (m)", shrink=0.8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(f"easting - {xy0[0]:.1f} (m)")
        ax.set_ylabel(f"northing - {xy0[1]:.1f} (m)")
        ax.text(0.01, 0.01, f"arrows x{gain:.0f}; triangles control, diamonds check", transform=ax.transAxes,
                fontsize=8, color="0.3")
    out.append("<div class='plots'>" + _figure_html(fig, "Control and check point errors over the block") + "</div>")
    return "\n".join(out)
