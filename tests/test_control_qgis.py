"""alignkit:alignphotos with GCP_FILE / CHECK_POINTS through QGIS Processing: the control_points layer
(styled, in the target CRS) and the summary keys; a bad control file is a clear error before any work."""
import json

import pytest
from qgis.core import QgsProcessingException, QgsVectorLayer

from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth
from alignkit.core.synthetic_targets import SurveyTargets

pytestmark = [pytest.mark.qgis]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    spec = SurveySpec(rows=2, cols=4, width=800, height=600, seed=5, gps_noise_h_m=1.0, gps_noise_v_m=2.0)
    return generate_survey(tmp_path_factory.mktemp("gcp") / "survey", spec, decorate=SurveyTargets(count=5))


@pytest.mark.slow
def test_alignphotos_with_control_and_check_points(alignkit_provider, survey, tmp_path):
    import processing

    out = tmp_path / "result.gpkg"
    focal = load_ground_truth(survey)["camera_model"]["focal_px"]
    result = processing.run("alignkit:alignphotos", {
        "IMAGES": str(survey / "images"), "OUTPUT": str(out), "PRESET": 0, "FOCAL_PX": focal,
        "TARGET_CRS": "EPSG:2056", "GCP_FILE": str(survey / "gcp_list.txt"), "CHECK_POINTS": "gcp_05"})
    summary = json.loads(open(result["SUMMARY"]).read())
    assert summary["control_rmse_m"]["n"] == 4 and summary["check_rmse_m"]["n"] == 1
    assert set(summary["check_rmse_m"]) == {"x", "y", "z", "horizontal", "vertical", "n"}
    assert summary["check_rmse_m"]["horizontal"] < 0.2
    layer = QgsVectorLayer(f"{out}|layername=control_points", "control_points", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:2056" and layer.featureCount() == 5
    assert layer.wkbType() in (1001, 0x80000001)  # PointZ
    assert [f.name() for f in layer.fields()][1:] == ["name", "role", "n_images", "dx", "dy", "dz", "reproj_px"]
    roles = {f["name"]: f["role"] for f in layer.getFeatures()}
    assert roles == {"gcp_01": "control", "gcp_02": "control", "gcp_03": "control", "gcp_04": "control",
                     "gcp_05": "check"}
    assert layer.renderer().type() == "RuleRenderer"  # its style travels in the file


def test_bad_control_file_is_a_clear_error_before_any_work(alignkit_provider, survey, tmp_path):
    import processing

    bad = tmp_path / "gcp_list.txt"
    bad.write_text("EPSG:32632\n1 2 3 10 10 img_0001.jpg a\n1 2 3 10 10 nope.jpg a\n")
    with pytest.raises(QgsProcessingException, match=r"(?s)gcp_list.txt: 1 problem.*line 3: photo 'nope.jpg' is not in"):
        processing.run("alignkit:alignphotos", {"IMAGES": str(survey / "images"), "OUTPUT": str(tmp_path / "r.gpkg"),
                                                "GCP_FILE": str(bad)})
    with pytest.raises(QgsProcessingException, match=r"check point\(s\) 'zz' not in the file"):
        processing.run("alignkit:alignphotos", {"IMAGES": str(survey / "images"), "OUTPUT": str(tmp_path / "r.gpkg"),
                                                "GCP_FILE": str(survey / "gcp_list.txt"), "CHECK_POINTS": "zz"})
    assert not (tmp_path / "r.gpkg").exists() and not (tmp_path / "r_workspace").exists()


def test_parameters_of_the_contract(alignkit_provider):
    alg = alignkit_provider.algorithm("alignphotos")
    for name in ("GCP_FILE", "CHECK_POINTS", "REFERENCE_DEM"):
        p = alg.parameterDefinition(name)
        assert p is not None and p.flags() & p.FlagOptional, name
