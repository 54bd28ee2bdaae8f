"""Which third-party packages the core needs, and how to tell a user what is missing."""
import importlib

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


def install_hint(missing):
    quoted = " ".join(f'"{m}"' for m in missing)
    return (
        f"AlignKit needs these Python packages: {', '.join(missing)}. "
        f"Install them into QGIS's Python with the QPIP plugin, or run: "
        f"python3 -m pip install --user {quoted}  "
        "(use opencv-python-headless, never opencv-python: its Qt breaks QGIS)."
    )
