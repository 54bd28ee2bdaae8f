"""The plugin as the QGIS plugin repository and qgis_process see it."""
import configparser
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REQUIRED_METADATA = ["name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository", "tracker", "homepage", "tags", "category", "icon", "experimental",
                     "hasProcessingProvider"]


def test_metadata_has_every_field_the_repository_reviews():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    general = meta["general"]
    missing = [k for k in REQUIRED_METADATA if not general.get(k, "").strip()]
    assert missing == []
    assert general["name"] == "AlignKit" and general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert (ROOT / general["icon"]).is_file()


@pytest.mark.skipif(shutil.which("zip") is None, reason="zip not installed")
def test_package_is_one_ascii_folder_without_tests_or_dotfiles(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # package what is committed plus the working tree's tracked changes
    subprocess.run(["make", "-s", "package"], cwd=clone, check=True, capture_output=True)
    names = zipfile.ZipFile(clone / "dist" / "alignkit.zip").namelist()
    assert {n.split("/")[0] for n in names} == {"alignkit"}
    assert all(n.isascii() for n in names)
    assert "alignkit/LICENSE" in names and "alignkit/metadata.txt" in names and "alignkit/__init__.py" in names
    assert not [n for n in names if n.startswith("alignkit/tests/") or "/." in n or "__pycache__" in n]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qgis_process.bin") is None, reason="qgis_process.bin not installed")
def test_qgis_process_lists_the_algorithms():
    out = subprocess.run([str(ROOT / "tools" / "qgis_process.sh"), "list"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    for alg in ("alignkit:photopriors", "alignkit:alignphotos", "alignkit:alignstack"):
        assert alg in out.stdout
