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


def test_report_is_written_beside_the_geopackage_with_five_png_plots(result):
    path = report.write_report(result)
    assert path == result.with_name("survey_alignkit_report.html")
    text = path.read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(text)
    assert len(parsed.images) == 5  # reprojection, track length, GPS residuals in plan and in time, coverage
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
