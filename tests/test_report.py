"""The HTML quality report, checked against a result whose every number is known (tests/result_fixture.py)."""
import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from alignkit.core import report
from alignkit.tests import result_fixture as fx

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self._in_td = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data.strip())


@pytest.fixture
def result(tmp_path):
    return fx.write_result(tmp_path / "survey_alignkit.gpkg")


def test_report_is_written_beside_the_geopackage_with_eight_png_plots(result):
    path = report.write_report(result)
    assert path == result.with_name("survey_alignkit_report.html")
    text = path.read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(text)
    # reprojection, track length, GPS residuals in plan and in time, coverage; residuals on the sensor grid
    # (a placeholder: the fixture's summary has none), distortion curve, graph of matches
    assert len(parsed.images) == 8
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5000  # a drawn plot, not an empty canvas


def test_report_counts_table_and_summary_values(result):
    text = report.write_report(result).read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(text)
    cells = parsed.cells
    assert "5 of 6" in cells  # registered of images, counted from the layer
    # Median of the known per-point errors 0.1 + 0.05 * (k % 20).
    median = np.median([fx.point_error(k) for k in range(fx.N_POINTS)])
    assert f"{median:.2f}" in cells
    mean_track = np.mean([fx.point_track_length(k) for k in range(fx.N_POINTS)])
    assert f"{mean_track:.2f}" in cells
    for k in range(6):  # per-camera table: every image, registered or not
        assert f"IMG_{k:04d}.JPG" in cells
    assert "not enough verified matches" in cells
    assert "EPSG:32633" in cells
    # Timings and configuration come from the summary JSON.
    assert "extract" in cells and "12.5" in cells
    assert "max_features" in cells and "4000" in cells
    assert "synthetic warning for the test" in text
    # Camera calibration from the summary: EXIF and adjusted focal, whether it was held, distortion.
    assert "DJI FC300S 4000x2250 3.61mm" in cells and "2340.4" in cells and "held at its prior" in cells
    assert "-0.0123" in cells and "61.2" in cells
    assert "self-calibrated focal 2700 px is +15% from its prior 2340 px (focal/height trade-off): held at the prior" in text


def test_coverage_grid_matches_the_footprint_geometry(result):
    layers, crs = report.read_geopackage(result)
    assert crs == "EPSG:32633"
    counts, extent = report.coverage_grid(layers["footprints"][1], cells=280)
    cell_area = ((extent[1] - extent[0]) / counts.shape[1]) * ((extent[3] - extent[2]) / counts.shape[0])
    # Five 30 m squares: total covered area 4500 m2 counted with multiplicity; union 3100 m2;
    # four squares overlap on a 10 x 10 m square (worked out by hand in result_fixture's layout).
    assert counts.max() == 4
    assert counts.sum() * cell_area == pytest.approx(5 * fx.FOOTPRINT**2, rel=0.03)
    assert (counts > 0).sum() * cell_area == pytest.approx(3100.0, rel=0.03)
    assert (counts == 4).sum() * cell_area == pytest.approx(100.0, rel=0.15)


def test_report_without_summary_still_counts_from_the_layers(tmp_path):
    gpkg = fx.write_result(tmp_path / "nosummary.gpkg", summary=False)
    text = report.write_report(gpkg).read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(text)
    assert "5 of 6" in parsed.cells and str(fx.N_POINTS) in parsed.cells
    assert not re.search(r"<h2>Timings", text)


def test_report_rejects_a_file_that_is_not_an_alignment(tmp_path):
    from alignkit.core.gpkg import Layer, write_geopackage

    other = tmp_path / "other.gpkg"
    write_geopackage(other, "EPSG:4326", [Layer("roads", "LineString", [("name", "str")], [])])
    with pytest.raises(ValueError, match="other.gpkg.*cameras"):
        report.write_report(other)


@pytest.mark.parametrize("arrow", [True, False])
def test_point_columns_read_the_same_with_and_without_gdal_arrow(result, monkeypatch, arrow):
    """The columnar reader (GDAL 3.6+) and the per-feature fallback (older GDAL) agree with the fixture."""
    if arrow and not report.ARROW_READS:
        pytest.skip("this GDAL has no Arrow stream reads")
    monkeypatch.setattr(report, "ARROW_READS", arrow)
    layers, _ = report.read_geopackage(result)
    points = layers["sparse_points"]
    assert np.allclose(points["reproj_px"], [fx.point_error(k) for k in range(fx.N_POINTS)])
    assert np.array_equal(points["track_length"], [fx.point_track_length(k) for k in range(fx.N_POINTS)])


def _grid(camera, width, height, dx):
    """A 2 x 2 residual grid as export writes it (row-major, row 0 at the top); one empty cell."""
    return {"camera": camera, "cells": [2, 2], "width": width, "height": height,
            "x": [width / 4, 3 * width / 4] * 2, "y": [height / 4] * 2 + [3 * height / 4] * 2,
            "dx": [dx, -dx, dx, None], "dy": [0.5, 0.5, -0.5, None], "count": [40, 50, 60, 0]}


def test_report_draws_one_residual_grid_per_camera_model(result):
    import json

    summary_path = report.summary_path_for(result)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["residual_grid"] = [_grid("DJI FC300S 4000x2250 3.61mm", 4000, 2250, 1.5),
                                _grid("other 1000x800 2mm", 1000, 800, 0.25)]
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    text = report.write_report(result).read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(text)
    assert len(parsed.images) == 9  # two residual grids instead of the placeholder
    assert "<figcaption>Image residuals averaged on the sensor grid: DJI FC300S 4000x2250 3.61mm" in text
    assert "<figcaption>Image residuals averaged on the sensor grid: other 1000x800 2mm" in text
    for src in parsed.images:
        assert len(base64.b64decode(src.split(",", 1)[1])) > 5000
    from alignkit.core.report_calib import residual_grid_figures

    fig, camera = residual_grid_figures(summary)[0]
    assert camera == "DJI FC300S 4000x2250 3.61mm"
    quiver = fig.axes[0].collections[-1]
    assert len(quiver.U) == 3  # the empty cell is not drawn
    gain = 0.8 * min(4000 / 2, 2250 / 2) / np.hypot(1.5, 0.5)  # largest arrow: 0.8 of a cell
    assert np.allclose(quiver.U, np.array([1.5, -1.5, 1.5]) * gain)
    assert f"arrows x{gain:.0f}" in fig.axes[0].get_xlabel()  # the scale is stated


def test_distortion_curve_in_the_report_reaches_the_corner_with_the_model_values():
    from alignkit.core.report_calib import distortion_figure

    model = {"camera": "DJI FC300S 4000x2250 3.61mm", "focal_px": 2000.0, "k1": -0.1, "k2": 0.02}
    fig = distortion_figure({"camera_models": [model]})
    r, disp = fig.axes[0].lines[0].get_data()
    assert r[-1] == pytest.approx(0.5 * np.hypot(4000, 2250))  # size read from the model's name
    # at r = f (r_n = 1) the displacement is f (k1 + k2) = -160 px
    assert np.interp(2000.0, r, disp) == pytest.approx(-160.0, rel=1e-3)


def test_match_graph_draws_every_pair_wider_with_more_inliers(result):
    from alignkit.core.report_calib import match_graph_figure

    layers, _ = report.read_geopackage(result)
    fig = match_graph_figure(*layers["pairs"], *layers["cameras"])
    lines = next(c for c in fig.axes[0].collections if c.__class__.__name__ == "LineCollection")
    assert len(lines.get_segments()) == 4  # the fixture's pairs 0-1, 1-2, 0-3, 3-4
    inliers = [400, 350, 90, 1200]
    widths = np.asarray(lines.get_linewidths())
    assert np.array_equal(np.argsort(widths), np.argsort(inliers))
    assert np.allclose(lines.get_array(), inliers)
    # each line joins its two cameras (relative to the cameras' mean position)
    cams = np.array([g[0, :2] for g in layers["cameras"][1]])
    seg = lines.get_segments()[3]
    assert np.allclose(seg + cams.mean(axis=0), [fx.camera_xy(3), fx.camera_xy(4)])
