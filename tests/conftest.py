"""Shared fixtures. `alignkit` is importable through .venv's alignkit-dev.pth (made by `make setup`)."""
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# `python -m pytest` puts the checkout on sys.path, where the plugin's own processing/ folder would
# shadow QGIS's `processing` package; the plugin is imported as `alignkit` instead.
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != ROOT]

try:
    import alignkit  # noqa: F401
except ImportError:  # running outside `make test`: expose the checkout under its plugin name
    link_dir = ROOT / ".venv" / "pkg"
    link_dir.mkdir(parents=True, exist_ok=True)
    if not (link_dir / "alignkit").exists():
        (link_dir / "alignkit").symlink_to(ROOT)
    sys.path.insert(0, str(link_dir))


def shared_path(*parts):
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture(scope="session")
def shared():
    return shared_path


@pytest.fixture(scope="module")
def alignkit_provider(qgis_processing):
    """The real `alignkit` Processing provider, registered for a test module as initProcessing() does."""
    from qgis.core import QgsApplication

    from alignkit.processing.provider import AlignKitProvider

    registry = QgsApplication.processingRegistry()
    added = None
    if registry.providerById("alignkit") is None:
        added = AlignKitProvider()
        registry.addProvider(added)
    yield registry.providerById("alignkit")
    if added is not None:
        registry.removeProvider(added)
