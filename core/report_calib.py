"""The report's calibration plots: image residuals on the sensor grid, the distortion curve of each
camera model, and the graph of matches between photos (pure matplotlib, drawn like core/report's)."""
import re

import numpy as np
from matplotlib.collections import LineCollection

from .report import _new_figure, _no_data
from .residual_grid import distortion_curve

MIN_CELL_OBSERVATIONS = 5  # a cell's mean from fewer observations is noise, not a pattern
ARROW_FLOOR_PX = 0.25  # arrows are scaled as if the largest cell mean were at least this


def residual_grid_figures(summary):
    """[(figure, camera model)] for each model of summary `residual_grid` (a placeholder when there is none)."""
    grids = summary.get("residual_grid") or []
    if not grids:
        fig, ax = _new_figure()
        ax.set_title("Image residuals on the sensor")
        _no_data(ax, "no residual grid in the summary")
        return [(fig, "")]
    return [(_residual_grid_figure(g), str(g.get("camera", ""))) for g in grids]


def _residual_grid_figure(grid):
    fig, ax = _new_figure(5.6, 4.6)
    ax.set_title("Mean image residual per sensor cell (observed - projected)", fontsize=9)
    width, height = float(grid["width"]), float(grid["height"])
    nx, ny = grid["cells"]
    count = np.asarray(grid["count"], np.int64)
    keep = (count >= MIN_CELL_OBSERVATIONS) & np.array([v is not None for v in grid["dx"]])
    ax.add_patch(_sensor_outline(width, height))
    for k in range(1, nx):
        ax.axvline(k * width / nx, color="0.9", lw=0.6)
    for k in range(1, ny):
        ax.axhline(k * height / ny, color="0.9", lw=0.6)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # image rows grow downwards
    ax.set_aspect("equal")
    ax.set_ylabel("row (px)")
    if not keep.any():
        ax.set_xlabel("column (px)")
        _no_data(ax, "no cell with enough observations")
        return fig
    x, y = np.asarray(grid["x"], float)[keep], np.asarray(grid["y"], float)[keep]
    dx = np.array([v for v, k in zip(grid["dx"], keep) if k], float)
    dy = np.array([v for v, k in zip(grid["dy"], keep) if k], float)
    size = np.hypot(dx, dy)
    # Exaggerated so that the largest arrow is 0.8 of a cell, but a mean below ARROW_FLOOR_PX stays short
    # (noise is not blown up into a pattern); the scale is written under the plot.
    gain = 0.8 * min(width / nx, height / ny) / max(float(size.max()), ARROW_FLOOR_PX)
    q = ax.quiver(x, y, dx * gain, dy * gain, size, cmap="viridis", angles="xy", scale_units="xy", scale=1,
                  width=0.006, pivot="middle")
    fig.colorbar(q, ax=ax, label="mean residual (px)", shrink=0.7)
    ax.set_xlabel(f"column (px)\narrows x{gain:.0f}; largest cell mean {size.max():.2f} px; "
                  f"{int(count.sum())} observations", fontsize=8)
    return fig


def _sensor_outline(width, height):
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), width, height, fill=False, edgecolor="0.4", lw=1.0)


def model_size(model, grids):
    """(width, height) in px of a summary camera model: from its residual grid, else from its name
    ("make model 4000x3000 ..."); None when unknown."""
    for g in grids or []:
        if g.get("camera") == model.get("camera"):
            return float(g["width"]), float(g["height"])
    m = re.search(r"(\d+)x(\d+)", str(model.get("camera", "")))
    return (float(m.group(1)), float(m.group(2))) if m else None


def distortion_figure(summary):
    """Radial displacement against radius, out to the image corner, for each model of `camera_models`."""
    fig, ax = _new_figure()
    ax.set_title("Lens distortion: radial displacement to the image corner")
    drawn = 0
    for model in summary.get("camera_models") or []:
        size = model_size(model, summary.get("residual_grid"))
        focal, k1, k2 = model.get("focal_px"), model.get("k1"), model.get("k2")
        if size is None or not focal or k1 is None or k2 is None:
            continue
        r, disp = distortion_curve(focal, k1, k2, *size)
        ax.plot(r, disp, lw=1.5, label=f"{model.get('camera')}\nk1 {k1:.4f}, k2 {k2:.4f}, f {focal:.0f} px")
        drawn += 1
    if not drawn:
        _no_data(ax, "no camera models in the summary")
        return fig
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("radius from the principal point (px)")
    ax.set_ylabel("displacement r_d - r (px; negative: barrel)")
    ax.legend(fontsize=7, loc="best")
    return fig


def match_graph_figure(pair_rows, pair_geoms, cam_rows, cam_geoms):
    """The pairs layer's lines over the camera positions, wider and brighter with more inliers."""
    fig, ax = _new_figure(5.6, 5.0)
    ax.set_title("Matches between photos (verified pairs)")
    lines, inliers = [], []
    for row, g in zip(pair_rows, pair_geoms):
        if g is not None and len(g) >= 2 and row.get("inliers") is not None:
            lines.append(g[:, :2])
            inliers.append(float(row["inliers"]))
    pos = np.array([g[0, :2] for g in cam_geoms if g is not None]).reshape(-1, 2)
    if not lines and not len(pos):
        _no_data(ax, "no pairs and no cameras")
        return fig
    origin = pos.mean(axis=0) if len(pos) else np.mean(np.vstack(lines), axis=0)
    if lines:
        n = np.array(inliers)
        widths = 0.5 + 3.5 * (n - n.min()) / max(float(np.ptp(n)), 1.0)
        coll = LineCollection([seg - origin for seg in lines], linewidths=widths, cmap="viridis",
                              array=n, zorder=1)
        ax.add_collection(coll)
        fig.colorbar(coll, ax=ax, label="inliers", shrink=0.8)
    else:
        ax.text(0.5, 0.95, "no verified pairs", ha="center", transform=ax.transAxes, color="0.4")
    reg = np.array([bool(r.get("registered")) for r, g in zip(cam_rows, cam_geoms) if g is not None], bool)
    if len(pos):
        rel = pos - origin
        ax.scatter(rel[reg, 0], rel[reg, 1], s=12, color="k", zorder=3, label="camera")
        if (~reg).any():
            ax.scatter(rel[~reg, 0], rel[~reg, 1], marker="x", s=40, color="#c51b7d", zorder=4,
                       label="not registered")
        ax.legend(loc="upper right", fontsize=8)
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"easting - {origin[0]:.1f}")
    ax.set_ylabel(f"northing - {origin[1]:.1f}")
    ax.text(0.01, 0.01, f"{len(lines)} pairs, {int(min(inliers)) if inliers else 0}-"
            f"{int(max(inliers)) if inliers else 0} inliers", transform=ax.transAxes, fontsize=8, color="0.3")
    return fig
