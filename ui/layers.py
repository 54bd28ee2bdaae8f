"""Load AlignKit GeoPackages into the QGIS project: one group per run, styled, with photo map tips.

Layers are read from the GeoPackage itself (so they survive saving and reopening the project),
styled from resources/styles/*.qml, and the style is also stored in the GeoPackage's
`layer_styles` table as the default, so the file looks the same wherever it is opened.

Storing a style never goes through QgsVectorLayer.saveStyleToDatabase: over a file that already
holds a style of that name, QGIS's OGR provider asks "overwrite?" in a modal dialog (a headless
qgis_process then waits forever), and storing into the file that the just-opened layers read from
left them empty on the map. Instead the style documents are exported from layers that are then
dropped, written by core.gpkg.write_layer_styles (plain OGR, replace without asking), and the
layers handed out are opened afresh, after the write.
load_geopackage runs in the main thread (it touches the project); styled_layers touches none.
"""
import os

from osgeo import gdal, ogr
from qgis.core import Qgis, QgsAction, QgsMessageLog, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtXml import QDomDocument

from ..core.gpkg import Style, write_layer_styles

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
# Where the "Open photo" action is offered: Identify results and the attribute table ("Feature"),
# and the map canvas's Run Feature Action tool ("Canvas"). A QgsAction made without scopes is
# offered nowhere.
PHOTO_ACTION_SCOPES = {"Feature", "Canvas"}


def style_path(file_name):
    return os.path.join(STYLE_DIR, file_name)


def geopackage_layer_names(path):
    """Names of the vector layers in a GeoPackage (read with OGR, so no QGIS layer is created)."""
    ds = ogr.Open(str(path))
    if ds is None:
        raise ValueError(f"{path}: not a readable GeoPackage")
    return [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]


def check_layers(gpkg_path, styles):
    """ValueError naming the file and the first missing layer; read-only OGR, no QGIS layer is made."""
    gpkg_path = str(gpkg_path)
    if not os.path.isfile(gpkg_path):
        raise ValueError(f"{gpkg_path}: the GeoPackage does not exist")
    present = set(geopackage_layer_names(gpkg_path))
    for name in styles:
        if name not in present and name not in OPTIONAL_LAYERS:
            raise ValueError(f"{gpkg_path}: layer '{name}' is missing (found: {', '.join(sorted(present))})")
    return present


def open_layers(gpkg_path, styles, title_prefix=""):
    """Open every layer named in `styles`; raise ValueError naming the first missing or invalid one.

    Nothing is added to the project here, so a bad file never leaves half a result on the map.
    """
    gpkg_path = str(gpkg_path)
    present = check_layers(gpkg_path, styles)
    layers = {}
    for name in styles:
        if name not in present:  # an optional layer this run did not write
            continue
        layer = QgsVectorLayer(f"{gpkg_path}|layername={name}", f"{title_prefix}{name}", "ogr")
        if not layer.isValid():
            raise ValueError(f"{gpkg_path}: layer '{name}' cannot be opened")
        layers[name] = layer
    return layers


def apply_style(layer, qml_file):
    """Apply a .qml file; raise RuntimeError with QGIS's message when it fails.

    Not loadNamedStyle(path): on a GeoPackage layer that applies the file's stored default style
    instead whenever there is one ("Loaded from Provider"), whatever the path says.
    """
    path = style_path(qml_file)
    doc = QDomDocument("qgis")
    with open(path, encoding="utf-8") as f:
        parsed = doc.setContent(f.read())
    ok, message = layer.importNamedStyle(doc) if parsed[0] else (False, f"{path}: not a readable style document")
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
        actions.addAction(
            QgsAction(QgsAction.OpenUrl, "Open photo", photo, "", False, "Open photo", PHOTO_ACTION_SCOPES)
        )
    layer.setMapTipTemplate(html)


def style_documents(layer):
    """(QML text, SLD text) of a layer's current style; RuntimeError with QGIS's message on failure."""
    qml = QDomDocument()
    error = layer.exportNamedStyle(qml)
    if error:
        raise RuntimeError(f"style of layer {layer.name()}: {error}")
    sld = QDomDocument()
    layer.exportSldStyle(sld, "")  # the error text is an out-parameter PyQt cannot return: check the result
    return qml.toString(), sld.toString() if not sld.documentElement().isNull() else ""


def _style_layers(gpkg_path, styles, image_folder):
    layers = open_layers(gpkg_path, styles)
    for name, layer in layers.items():
        apply_style(layer, styles[name])
        if name == "cameras":
            configure_camera_tips(layer, image_folder)
    return layers


def styled_layers(gpkg_path, styles, image_folder=None, store_styles=True):
    """Open the layers named in `styles` and style them; with `store_styles`, first store each style
    in the GeoPackage as its default (so the file looks the same wherever it is opened), replacing an
    earlier one without asking. No project is touched: Processing algorithms call this from their
    worker thread."""
    if store_styles:
        styled = _style_layers(gpkg_path, styles, image_folder)
        documents = [Style(name, *style_documents(layer), STYLE_NAME, "AlignKit default style")
                     for name, layer in styled.items()]
        styled.clear()  # the last references: nothing of QGIS's holds the file while it is written
        try:
            write_layer_styles(gpkg_path, documents)
        except (ValueError, RuntimeError) as exc:
            raise RuntimeError(f"{gpkg_path}: cannot store the layer styles: {exc}") from exc
    return _style_layers(gpkg_path, styles, image_folder)


def load_geopackage(gpkg_path, group_name, styles=None, image_folder=None, project=None, store_styles=True):
    """Load a GeoPackage's layers into a new top-level group `group_name`; return (group, layers).

    A group of the same name (an earlier run of the same folder) is replaced. Layer order
    follows `styles` (top first); the pairs layer starts hidden. When the style cannot be stored in
    the file (read-only), the layers are loaded styled all the same and the AlignKit log says why.
    """
    styles = RESULT_STYLES if styles is None else styles
    project = project or QgsProject.instance()
    check_layers(gpkg_path, styles)  # a bad file raises here and leaves the project as it was
    # The replaced layers go first: they may hold the same path open (in SQLite's WAL mode, whose -wal
    # and -shm files are found by name) while the pipeline has replaced the file under them; no QGIS
    # layer may open the new file before they are closed.
    remove_group(group_name, project)
    try:
        layers = styled_layers(gpkg_path, styles, image_folder, store_styles)
    except RuntimeError as exc:  # e.g. a read-only file: the layers still load, styled in the project
        QgsMessageLog.logMessage(f"{exc}; the layers are loaded without it", "AlignKit", Qgis.Warning)
        layers = styled_layers(gpkg_path, styles, image_folder, store_styles=False)
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
