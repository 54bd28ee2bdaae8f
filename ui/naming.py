"""Names of a survey's outputs and layer groups: after the survey, not after its `images` folder,
and keyed by the output path, so two flights in folders named alike keep both results."""
import json
import os
from pathlib import Path

from qgis.core import QgsProject

from . import layers as layer_loader


def is_inside(path, folder):
    """True when `path` is `folder` itself or lies below it (symlinks resolved)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


# Folder names that say what is in them, not which survey: the survey is their parent folder's name.
GENERIC_PHOTO_FOLDERS = {"images", "image", "imgs", "img", "photos", "photo", "pictures", "pics", "dcim",
                         "raw", "jpg", "jpeg"}
GROUP_OUTPUT_KEY = "alignkit/output"  # layer-tree group property: the GeoPackage its layers come from


def survey_name(folder):
    """The survey a photo folder belongs to: its name, or its parent's when it is called images/photos
    (`/a/flight2/images` -> `flight2`)."""
    path = Path(os.path.normpath(str(folder)))
    if path.name.lower() in GENERIC_PHOTO_FOLDERS and path.parent.name:
        return path.parent.name
    return path.name or "survey"


def _same_path(a, b):
    return os.path.normcase(os.path.abspath(str(a))) == os.path.normcase(os.path.abspath(str(b)))


def _output_of_other_folder(gpkg, folder):
    """True when `gpkg`'s summary says it was made from another photo folder than `folder`."""
    summary = os.path.splitext(str(gpkg))[0] + "_summary.json"
    try:
        with open(summary, encoding="utf-8") as f:
            images = (json.load(f).get("config") or {}).get("images")
    except (OSError, ValueError, AttributeError):
        return os.path.exists(str(gpkg))  # a result we cannot attribute: do not take its name
    return bool(images) and not _same_path(images, folder)


def default_output_for(folder, project_home=""):
    """`<survey>_alignkit.gpkg` in the project home, else beside (not inside) the image folder.

    The survey is the folder's name, or its parent's for a folder called images/photos. When that
    file already holds another folder's result (two flights named alike, one project home),
    `<survey>_2_alignkit.gpkg`, `_3` ... so neither overwrites the other."""
    folder = Path(folder)
    base = Path(project_home) if project_home and not is_inside(project_home, folder) else folder.parent
    name = survey_name(folder)
    candidate, n = base / f"{name}_alignkit.gpkg", 2
    while _output_of_other_folder(candidate, folder):
        candidate, n = base / f"{name}_{n}_alignkit.gpkg", n + 1
    return str(candidate)


def _groups(node):
    for child in node.children():
        if child.nodeType() == child.NodeGroup:
            yield child
            yield from _groups(child)


def group_name_for(output, base_name, project=None):
    """The layer-tree group for the result in `output`: the group already holding this output's
    layers keeps its name (loading again replaces it); otherwise `base_name`, or `base_name (2)` ...
    when that name is taken by another result or by a group of the user's (never replaced)."""
    project = project or QgsProject.instance()
    taken = set()
    for group in _groups(project.layerTreeRoot()):
        key = group.customProperty(GROUP_OUTPUT_KEY)
        if key and _same_path(key, output):
            return group.name()
        taken.add(group.name())
    name, n = base_name, 2
    while name in taken:
        name, n = f"{base_name} ({n})", n + 1
    return name


def load_result_group(gpkg, output, base_name, styles, image_folder, **options):
    """Load `gpkg`'s layers into the group of `output` (see group_name_for) and mark the group with it.

    The output's earlier group goes first: its layers hold the GeoPackage open. `options` go to
    layers.load_geopackage (store_styles)."""
    name = group_name_for(output, base_name)
    layer_loader.remove_group(name)
    group, layers = layer_loader.load_geopackage(gpkg, name, styles, image_folder, **options)
    group.setCustomProperty(GROUP_OUTPUT_KEY, os.path.abspath(str(output)))
    return group, layers
