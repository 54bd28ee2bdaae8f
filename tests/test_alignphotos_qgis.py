"""alignkit:alignphotos through QGIS Processing: the scriptable contract, styles stored in the file."""
import json

import pytest
from osgeo import ogr
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer

from alignkit.core.synthetic import SurveySpec, generate_survey, load_ground_truth

pytestmark = [pytest.mark.qgis, pytest.mark.slow]


def test_alignphotos_writes_the_contract_with_styles_inside(alignkit_provider, tmp_path):
    import processing

    survey = generate_survey(tmp_path / "survey", SurveySpec(rows=2, cols=4, width=800, height=600, seed=5))
    out = tmp_path / "result.gpkg"
    feedback = QgsProcessingFeedback()
    focal = load_ground_truth(survey)["camera_model"]["focal_px"]  # a calibrated focal, given by the user
    result = processing.run("alignkit:alignphotos", {"IMAGES": str(survey / "images"), "OUTPUT": str(out),
                                                     "PRESET": "fast", "TARGET_CRS": "EPSG:2056", "FOCAL_PX": focal,
                                                     "ALTITUDE_REFERENCE": "ellipsoidal"},
                            feedback=feedback)
    assert result["OUTPUT"] == str(out) and result["REGISTERED"] == 8
    # the results list every file written beside the GeoPackage
    stem = str(out)[: -len(".gpkg")]
    assert (result["REPORT"], result["PLY"], result["CAMERAS_CSV"]) == (
        f"{stem}_report.html", f"{stem}_sparse.ply", f"{stem}_cameras.csv")
    assert (result["BUNDLE"], result["COLMAP"]) == (f"{stem}_bundle", f"{stem}_colmap")
    for path in (result["REPORT"], result["PLY"], result["CAMERAS_CSV"], f"{stem}_colmap/images.txt"):
        assert (tmp_path / path).exists(), path
    summary = json.loads(open(result["SUMMARY"]).read())
    assert summary["crs"] == "EPSG:2056" and summary["config"]["max_features"] == 4000
    assert summary["config"]["focal_px"] == pytest.approx(focal)
    assert summary["camera_models"][0]["focal_source"] == "user"
    assert summary["config"]["altitude_reference"] == "ellipsoidal"  # the GPS altitude's meaning, as given
    for name, count in (("cameras", 8), ("footprints", 8)):
        layer = QgsVectorLayer(f"{out}|layername={name}", name, "ogr")
        assert layer.isValid() and layer.crs().authid() == "EPSG:2056" and layer.featureCount() == count
    ds = ogr.Open(str(out))
    styles = {f["f_table_name"] for f in ds.GetLayerByName("layer_styles")}
    assert styles == {"cameras", "footprints", "sparse_points", "pairs"}
    # opened anywhere else, the file brings its style: a rule-based camera renderer, not QGIS's default
    cameras = QgsVectorLayer(f"{out}|layername=cameras", "cameras", "ogr")
    assert cameras.renderer().type() == "RuleRenderer"


def test_alignphotos_bad_folder_is_a_clear_processing_error(alignkit_provider, tmp_path):
    import processing

    with pytest.raises(QgsProcessingException, match="does not exist"):
        processing.run("alignkit:alignphotos", {"IMAGES": str(tmp_path / "nowhere"),
                                                "OUTPUT": str(tmp_path / "r.gpkg")})
    assert not (tmp_path / "r.gpkg").exists()


def test_a_compound_target_crs_reaches_the_alignment(alignkit_provider):
    """QGIS 3.22 cannot parse EPSG:32615+5773 (UTM + EGM96 heights): the code goes on to PROJ instead of
    silently becoming the default CRS; a code neither knows is refused with the parameter named."""
    from qgis.core import QgsProcessingContext

    alg = alignkit_provider.algorithm("alignphotos")
    base = {"IMAGES": "/nowhere", "OUTPUT": "/tmp/r.gpkg"}
    context = QgsProcessingContext()
    config = alg.config_from_parameters(dict(base, TARGET_CRS="EPSG:32615+5773"), context)
    assert config.target_crs == "EPSG:32615+5773"
    assert alg.config_from_parameters(dict(base, TARGET_CRS="EPSG:2056"), context).target_crs == "EPSG:2056"
    with pytest.raises(QgsProcessingException, match="TARGET_CRS: 'EPSG:999999' is not a CRS"):
        alg.config_from_parameters(dict(base, TARGET_CRS="EPSG:999999"), context)
