"""Which third-party packages the core needs, and how to tell a user what is missing."""
import importlib
import os
import sys
import sysconfig

# import name -> pip requirement (kept in step with requirements.txt)
REQUIRED = {
    "numpy": "numpy<2",
    "cv2": "opencv-python-headless<4.11",
    "scipy": "scipy",
    "pyproj": "pyproj",
    "exif": "exif",
}


def missing_packages():
    """Return the pip requirements of the packages that cannot be imported."""
    missing = []
    for module, requirement in REQUIRED.items():
        try:
            importlib.import_module(module)
        except Exception:  # a broken install (ImportError, a numpy ABI error ...) is missing too
            missing.append(requirement)
    return missing


def externally_managed():
    """True where the system Python refuses pip installs without --break-system-packages (PEP 668:
    Debian 12, Ubuntu 23.04+), i.e. its stdlib folder holds an EXTERNALLY-MANAGED marker."""
    try:
        return os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
    except (KeyError, OSError):
        return False


def _qgis_python():
    """The interpreter of the running QGIS installation (sys.executable is the qgis binary there)."""
    try:
        from .executor import _python_executable

        return _python_executable()
    except RuntimeError:
        return "python3"


def install_command(missing, platform=None, python=None, pep668=None):
    """A pip command that installs `missing` into QGIS's Python, for the platform QGIS runs on.

    Windows (OSGeo4W or the standalone installer): pip of the OSGeo4W Shell's python. macOS and Linux:
    the interpreter QGIS embeds, `--user` (no administrator rights needed); where the system Python
    is externally managed (PEP 668, Debian 12's QGIS), `--break-system-packages` as well, which with
    `--user` touches no system package."""
    platform = platform or sys.platform
    quoted = " ".join(f'"{m}"' for m in missing)
    if platform.startswith("win"):
        return f"python -m pip install --user {quoted}"
    python = python or _qgis_python()
    pep668 = externally_managed() if pep668 is None else pep668
    return f"{python} -m pip install --user {'--break-system-packages ' if pep668 else ''}{quoted}"


def install_hint(missing, platform=None, python=None, pep668=None):
    """Plain text (escape it before showing it as rich text: `<2` and `<4.11` are not tags)."""
    platform = platform or sys.platform
    where = ("in the OSGeo4W Shell (Start menu > QGIS > OSGeo4W Shell)" if platform.startswith("win")
             else "in a terminal")
    return (
        f"AlignKit needs these Python packages, missing from QGIS's Python: {', '.join(missing)}. "
        f"Install them with the QPIP plugin, or {where} run: "
        f"{install_command(missing, platform, python, pep668)} "
        "and restart QGIS. Use opencv-python-headless, never opencv-python: its Qt breaks QGIS."
    )
