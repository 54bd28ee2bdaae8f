"""The quality verdict (tick or warning per item, with number and threshold), provenance, and the report's
first screen."""
import configparser
import datetime
import re
from pathlib import Path

from alignkit.core import report
from alignkit.core.verdict import provenance, quality_verdict, verdict_line
from alignkit.tests import result_fixture as fx

GOOD = {"images": 18, "registered": 18, "components": 1, "tie_points_per_image_median": 958.0,
        "mean_reproj_px": 0.62, "georeferenced": True, "crs": "EPSG:32615", "gps_fit_rmse_m": 0.27,
        "height_above_ground_m": 38.3,
        "camera_models": [{"camera": "FC300S", "focal_prior_px": 2340.4, "focal_px": 2351.0, "focal_source": "exif",
                           "focal_change_percent": 0.45, "focal_held": False}]}


def by_item(verdict):
    return {v["item"]: v for v in verdict}


def test_a_good_block_passes_every_item_with_its_number_and_threshold():
    verdict = quality_verdict(GOOD)
    assert [v["item"] for v in verdict] == ["Images registered", "Matches per image", "Reprojection error",
                                            "Camera optimisation", "Georeferencing"]
    assert all(v["ok"] for v in verdict) and verdict_line(verdict) == "all 5 quality checks passed"
    items = by_item(verdict)
    assert items["Images registered"]["value"] == "18 of 18" and "95 %" in items["Images registered"]["threshold"]
    assert items["Matches per image"]["value"] == 958
    assert items["Reprojection error"]["value"] == 0.62 and items["Reprojection error"]["threshold"] == "at most 1 px"
    assert items["Georeferencing"]["value"] == 0.27 and "0.27 m" in items["Georeferencing"]["text"]
    for v in verdict:  # a surveyor's words: no internal names
        assert not re.search(r"\w+_\w+", v["text"]), v["text"]


def test_each_failing_item_is_a_warning_that_says_why():
    summary = dict(GOOD, registered=14, components=2, tie_points_per_image_median=120.0, mean_reproj_px=1.7,
                   gps_fit_rmse_m=7.5,
                   camera_models=[dict(GOOD["camera_models"][0], focal_held=True, focal_change_percent=0.0,
                                       focal_self_calibrated_px=2770.0)])
    verdict = quality_verdict(summary)
    items = by_item(verdict)
    assert not any(v["ok"] for v in verdict)
    assert "2 separate blocks" in items["Images registered"]["text"]
    assert "only 120 points" in items["Matches per image"]["text"]
    assert "1.70 px" in items["Reprojection error"]["text"]
    assert "held at 2340 px" in items["Camera optimisation"]["text"] and "0.38 m" in items["Camera optimisation"]["text"]
    assert "7.50 m" in items["Georeferencing"]["text"]
    assert verdict_line(verdict).startswith("5 of 5 quality checks need attention: images registered")
    no_gps = by_item(quality_verdict(dict(GOOD, georeferenced=False, crs=None, gps_fit_rmse_m=None)))
    assert not no_gps["Georeferencing"]["ok"] and "Not georeferenced" in no_gps["Georeferencing"]["text"]
    drift = by_item(quality_verdict(dict(GOOD, camera_models=[dict(GOOD["camera_models"][0], focal_change_percent=-7.5)])))
    assert not drift["Camera optimisation"]["ok"] and "-7.5 %" in drift["Camera optimisation"]["text"]


def test_check_points_decide_georeferencing_when_there_are_some():
    summary = dict(GOOD, check_rmse_m={"x": 0.02, "y": 0.03, "z": 0.05, "horizontal": 0.036, "vertical": 0.05, "n": 4})
    item = by_item(quality_verdict(summary))["Georeferencing"]
    assert item["ok"] and item["value"] == 0.05 and "4 check points" in item["text"]


def test_provenance_names_date_version_folder_photos_and_preset(tmp_path):
    meta = configparser.ConfigParser()
    meta.read(Path(__file__).resolve().parents[1] / "metadata.txt", encoding="utf-8")
    when = datetime.datetime(2026, 11, 30, 9, 15, 2, 500, tzinfo=datetime.timezone.utc)
    prov = provenance({"images": str(tmp_path), "max_image_size": 2400, "max_features": 6000}, 18, now=when)
    assert prov == {"date": "2026-11-30T09:15:02+00:00", "alignkit_version": meta.get("general", "version"),
                    "images_folder": str(tmp_path), "photos": 18, "preset": "balanced"}
    assert provenance({"images": "x", "max_image_size": 1000, "max_features": 6000}, 3)["preset"] == "custom"


def test_the_report_opens_with_the_verdict_and_the_provenance(tmp_path):
    gpkg = fx.write_result(tmp_path / "survey_alignkit.gpkg")
    text = report.write_report(gpkg).read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings[0] == "Quality verdict"
    # the fixture's summary: 5 of 6 registered (83 %), focal held -> two warnings, with their numbers
    assert "2 of 4 quality checks need attention: images registered, camera optimisation." in text
    assert "Only 5 of 6 photos could be placed (83 %)" in text
    assert text.index("Quality verdict") < text.index("synthetic warning for the test") < text.index("<h2>Summary")


def test_a_report_without_summary_says_there_is_no_verdict(tmp_path):
    gpkg = fx.write_result(tmp_path / "r.gpkg", summary=False)
    text = report.write_report(gpkg).read_text(encoding="utf-8")
    assert "no quality verdict" in text


def test_the_log_names_photos_not_indices():
    from alignkit.core.verdict import name_photos

    names = [f"DJI_{k:04d}.JPG" for k in range(40)]
    lines = name_photos(["component 0: initial pair 24-33 (812 shared tracks, 640 points, 4.1 deg)",
                         "component 0: 18 images, 5376 points", "initial pair 3-99 (bad index)"], names)
    assert lines == ["component 0: initial pair DJI_0024.JPG / DJI_0033.JPG (812 shared tracks, 640 points, 4.1 deg)",
                     "component 0: 18 images, 5376 points", "initial pair 3-99 (bad index)"]


def test_overlap_is_judged_on_the_photos_per_ground_point_under_the_flight_lines():
    good = by_item(quality_verdict(dict(GOOD, overlap_median=3.0, overlap_median_flight_area=7.0,
                                        area_below_5_photos_percent=68.8)))["Overlap"]
    assert good["ok"] and good["value"] == 7 and "at least 5 photos" in good["threshold"]
    assert "under the flight lines is seen by 7 photos" in good["text"]
    assert "rim, the median is 3 and 69 % is seen by fewer than 5" in good["text"]
    thin = by_item(quality_verdict(dict(GOOD, overlap_median=2.0, overlap_median_flight_area=3.0,
                                        area_below_5_photos_percent=91.0)))["Overlap"]
    assert not thin["ok"] and "only 3 photos" in thin["text"] and "more overlap" in thin["text"]
    strip = by_item(quality_verdict(dict(GOOD, overlap_median=4.0, area_below_5_photos_percent=60.0)))["Overlap"]
    assert not strip["ok"] and "over the covered area is seen by only 4" in strip["text"]
    assert [v["item"] for v in quality_verdict(dict(GOOD, overlap_median=6.0))][-2:] == ["Overlap", "Georeferencing"]
