"""Load AlignKit GeoPackages into the QGIS project: one group per run, styled, with photo map tips.

Layers are read from the GeoPackage itself (so they survive saving and reopening the project),
styled from resources/styles/*.qml, and the style is also stored in the GeoPackage's
`layer_styles` table as the default, so the file looks the same wherever it is opened.
Everything runs in the main thread (it touches the project).
"""
import os

from osgeo import gdal, ogr
from qgis.core import QgsAction, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QUrl

gdal.UseExceptions()
ogr.UseExceptions()

STYLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "styles")

# Alignment result: layer name -> style file, in drawing order from top to bottom.
RESULT_STYLES = {
    "control_points": "control_points.qml",  # only when the run had ground control (OPTIONAL_LAYERS)
    "cameras": "cameras.qml",
    "sparse_points": "sparse_points.qml",
    "pairs": "pairs.qml",
    "footprints": "footprints.qml",
}
# photopriors output: predicted positions and footprints before any matching.
PRIORS_STYLES = {
    "cameras": "priors_cameras.qml",
    "footprints": "footprints.qml",
}
OPTIONAL_LAYERS = ("control_points",)  # absent from a GeoPackage without them, which is fine
HIDDEN_BY_DEFAULT = ("pairs",)  # the pair graph clutters the map; one click shows it
STYLE_NAME = "alignkit"


def style_path(file_name):
    return os.path.join(STYLE_DIR, file_name)


def geopackage_layer_names(path):
    """Names of the vector layers in a GeoPackage (read with OGR, so no QGIS layer is created)."""
    ds = ogr.Open(str(path))
    if ds is None:
        raise ValueError(f"{path}: not a readable GeoPackage")
    return [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]


def open_layers(gpkg_path, styles, title_prefix=""):
    """Open every layer named in `styles`; raise ValueError naming the first missing or invalid one.

    Nothing is added to the project here, so a bad file never leaves half a result on the map.
    """
    gpkg_path = str(gpkg_path)
    if not os.path.isfile(gpkg_path):
        raise ValueError(f"{gpkg_path}: the GeoPackage does not exist")
    present = set(geopackage_layer_names(gpkg_path))
    layers = {}
    for name in styles:
        if name not in present and name in OPTIONAL_LAYERS:
            continue
        if name not in present:
            raise ValueError(f"{gpkg_path}: layer '{name}' is missing (found: {', '.join(sorted(present))})")
        layer = QgsVectorLayer(f"{gpkg_path}|layername={name}", f"{title_prefix}{name}", "ogr")
        if not layer.isValid():
            raise ValueError(f"{gpkg_path}: layer '{name}' cannot be opened")
        layers[name] = layer
    return layers


def apply_style(layer, qml_file):
    """Apply a .qml file; raise RuntimeError with QGIS's message when it fails."""
    message, ok = layer.loadNamedStyle(style_path(qml_file))
    if not ok:
        raise RuntimeError(f"style {qml_file} for layer {layer.name()}: {message}")
    layer.triggerRepaint()


def configure_camera_tips(layer, image_folder):
    """Map tip with name, time, residuals and a thumbnail, plus an 'Open photo' action."""
    names = set(layer.fields().names())
    layer.setDisplayExpression('"image"')
    rows = ['<b>[% "image" %]</b>']
    if "capture_time" in names:
        rows.append('[% "capture_time" %]')
    if "registered" in names:
        rows.append("registered: [% if(\"registered\", 'yes', 'no') %]")
    if "reproj_rmse_px" in names:
        rows.append('reprojection RMSE: [% format_number("reproj_rmse_px", 2) %] px')
    if {"gps_dx", "gps_dy", "gps_dz"} <= names:
        rows.append(
            'GPS residual E/N/U: [% format_number("gps_dx", 2) %] / [% format_number("gps_dy", 2) %]'
            ' / [% format_number("gps_dz", 2) %] m'
        )
    if "status" in names:
        rows.append('status: [% "status" %]')
    if "problem" in names:  # why a photo was not registered or is unusable
        rows.append("[% if(\"problem\" IS NULL, '', 'problem: ' || \"problem\") %]")
    html = "<br/>".join(rows)
    photo = None
    sample = next(iter(layer.getFeatures()), None) if "path" in names else None
    if sample is not None and sample["path"] and os.path.isabs(str(sample["path"])):
        # The photo's absolute path, as written by the pipeline and photopriors.
        photo = "[% 'file://' || if(left(\"path\", 1) = '/', '', '/') || replace(replace(\"path\", '\\\\', '/'), ' ', '%20') %]"
    elif image_folder:
        base = QUrl.fromLocalFile(os.path.abspath(str(image_folder))).toString()
        photo = f"{base}/[% replace(\"image\", ' ', '%20') %]"
    if photo:
        html += f'<br/><img src="{photo}" width="320"/>'
        actions = layer.actions()
        for action in actions.actions():
            if action.name() == "Open photo":
                actions.removeAction(action.id())
        actions.addAction(QgsAction(QgsAction.OpenUrl, "Open photo", photo, False))
    layer.setMapTipTemplate(html)


def store_style_in_geopackage(layer):
    """Save the layer's current style as the GeoPackage's default; returns '' or the error text."""
    return layer.saveStyleToDatabase(STYLE_NAME, "AlignKit default style", True, "")


def styled_layers(gpkg_path, styles, image_folder=None, store_styles=True):
    """Open the layers named in `styles`, style them, and store each style in the GeoPackage as its
    default (so the file looks the same wherever it is opened). No project is touched: Processing
    algorithms call this from their worker thread."""
    layers = open_layers(gpkg_path, styles)
    for name, layer in layers.items():
        apply_style(layer, styles[name])
        if name == "cameras":
            configure_camera_tips(layer, image_folder)
        if store_styles:
            error = store_style_in_geopackage(layer)
            if error:
                raise RuntimeError(f"{gpkg_path}: cannot store the style of '{name}': {error}")
    return layers


def load_geopackage(gpkg_path, group_name, styles=None, image_folder=None, project=None, store_styles=True):
    """Load a GeoPackage's layers into a new top-level group `group_name`; return (group, layers).

    A group of the same name (an earlier run of the same folder) is replaced. Layer order
    follows `styles` (top first); the pairs layer starts hidden.
    """
    styles = RESULT_STYLES if styles is None else styles
    project = project or QgsProject.instance()
    layers = styled_layers(gpkg_path, styles, image_folder, store_styles)
    remove_group(group_name, project)
    root = project.layerTreeRoot()
    group = root.insertGroup(0, group_name)
    for name, layer in layers.items():
        project.addMapLayer(layer, False)
        node = group.addLayer(layer)
        node.setItemVisibilityChecked(name not in HIDDEN_BY_DEFAULT)
    return group, layers


def remove_group(group_name, project=None):
    """Remove a top-level group and the layers in it from the project; True when one existed."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    group = root.findGroup(group_name)
    if group is None:
        return False
    layer_ids = [node.layerId() for node in group.findLayers()]
    root.removeChildNode(group)
    project.removeMapLayers(layer_ids)
    return True


def reproject_geopackage(src, dst, crs, layer_names=None):
    """Write a copy of `src` with every (or the named) layer reprojected to `crs` (e.g. 'EPSG:3857').

    GDAL's VectorTranslate, so no QGIS object is involved: safe in a background task.
    Heights are kept as they are (only the horizontal CRS changes).
    """
    if layer_names:  # optional layers (control_points) may be absent
        present = set(geopackage_layer_names(src))
        layer_names = [n for n in layer_names if n in present]
    tmp = os.path.splitext(str(dst))[0] + ".partial.gpkg"  # the GPKG driver wants the extension
    if os.path.exists(tmp):
        os.remove(tmp)
    options = gdal.VectorTranslateOptions(
        format="GPKG", dstSRS=str(crs), reproject=True, layers=list(layer_names) if layer_names else None
    )
    ds = gdal.VectorTranslate(tmp, str(src), options=options)
    if ds is None:
        raise RuntimeError(f"{src}: reprojection to {crs} failed")
    ds = None  # closes and flushes
    os.replace(tmp, str(dst))
    return str(dst)
