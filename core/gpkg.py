"""Write GeoPackages with GDAL/OGR (no QGIS needed), atomically: all layers or no file.

A layer is described by plain data, so every stage can hand its product to export without
knowing OGR:  Layer("cameras", "PointZ", [("image", "str"), ("registered", "bool")],
[((x, y, z), {"image": "a.jpg", "registered": True}), ...]).
Geometry coordinates: a point is (x, y[, z]); a line string is [(x, y[, z]), ...]; a polygon
is [outer_ring, hole, ...] with each ring a list of (x, y[, z]) (closed automatically).
"""
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone

from osgeo import gdal, ogr, osr

from .workspace import atomic_output

ogr.UseExceptions()
osr.UseExceptions()

_FIELD_TYPES = {
    "int": (ogr.OFTInteger64, None),
    "real": (ogr.OFTReal, None),
    "str": (ogr.OFTString, None),
    "bool": (ogr.OFTInteger, ogr.OFSTBoolean),
    "datetime": (ogr.OFTDateTime, None),
}
_GEOMETRY_TYPES = {
    "Point": ogr.wkbPoint,
    "PointZ": ogr.wkbPoint25D,
    "LineString": ogr.wkbLineString,
    "LineStringZ": ogr.wkbLineString25D,
    "Polygon": ogr.wkbPolygon,
    "PolygonZ": ogr.wkbPolygon25D,
}


@dataclass
class Layer:
    name: str
    geometry: str  # a key of _GEOMETRY_TYPES
    fields: list  # [(name, type)] with type a key of _FIELD_TYPES
    features: list = field(default_factory=list)  # [(coordinates or None, {field: value})]


def spatial_reference(crs):
    """An OGR spatial reference from 'EPSG:n', WKT or PROJ text; None for a local (CRS-less) frame."""
    if not crs:
        return None
    srs = osr.SpatialReference()
    srs.SetFromUserInput(str(crs))
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_identifier(name, what="layer"):
    """`name` if it is a plain SQL identifier (letters, digits, underscore); ValueError otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r}: letters, digits and '_' only, not starting with a digit")
    return name


def write_geopackage(path, crs, layers, description=""):
    """Write `layers` (list of Layer) into a new GeoPackage at `path`, replacing any old file.
    `description` goes into every layer's gpkg_contents.description (e.g. the heights' reference)."""
    srs = spatial_reference(crs)
    for layer in layers:
        check_identifier(layer.name)
        for name, _ in layer.fields:
            check_identifier(name, "field")

    def write(tmp):
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        for layer in layers:
            _write_layer(ds, layer, srs, description)
        ds = None  # closes and flushes
        if srs is None:
            _mark_cartesian(tmp, [layer.name for layer in layers])

    atomic_output(path, write)


def _mark_cartesian(path, table_names):
    """File CRS-less layers under srs_id -1, the GeoPackage's "Undefined Cartesian SRS" (no CRS, metres).

    OGR files them under srs_id 0, "Undefined geographic SRS": QGIS would read local metres as degrees.
    Plain sqlite with bound parameters, on the closed file (OGR has no API for it).
    """
    con = sqlite3.connect(path)
    try:
        with con:
            for statement in ("UPDATE gpkg_contents SET srs_id = -1 WHERE table_name = ?",
                              "UPDATE gpkg_geometry_columns SET srs_id = -1 WHERE table_name = ?"):
                con.executemany(statement, [(name,) for name in table_names])
    finally:
        con.close()


def _write_layer(ds, layer, srs, description=""):
    gtype = _GEOMETRY_TYPES[layer.geometry]
    options = ["SPATIAL_INDEX=YES"] + ([f"DESCRIPTION={description}"] if description else [])
    lyr = ds.CreateLayer(layer.name, srs=srs, geom_type=gtype, options=options)
    for name, kind in layer.fields:
        ftype, subtype = _FIELD_TYPES[kind]
        fdef = ogr.FieldDefn(name, ftype)
        if subtype is not None:
            fdef.SetSubType(subtype)
        lyr.CreateField(fdef)
    defn = lyr.GetLayerDefn()
    # Field setters by index, chosen once per layer: the per-feature loop is the export's hot path.
    casts = [(k, name, _CASTS[kind]) for k, (name, kind) in enumerate(layer.fields)]
    ds.StartTransaction()
    for coords, attrs in layer.features:
        feat = ogr.Feature(defn)
        for k, name, cast in casts:
            value = attrs.get(name)
            if value is None:
                feat.SetFieldNull(k)
            else:
                feat.SetField(k, cast(value))
        if coords is not None:
            feat.SetGeometry(_geometry(layer.geometry, coords))
        lyr.CreateFeature(feat)
    ds.CommitTransaction()


_CASTS = {"bool": lambda v: int(bool(v)), "int": int, "real": float, "str": str, "datetime": str}


def _geometry(kind, coords):
    g = ogr.Geometry(_GEOMETRY_TYPES[kind])
    if kind.startswith("Point"):
        g.AddPoint(*map(float, coords)) if len(coords) == 3 else g.AddPoint_2D(*map(float, coords))
    elif kind.startswith("LineString"):
        _add_points(g, coords)
    else:
        for ring_coords in coords:
            ring = ogr.Geometry(ogr.wkbLinearRing)
            _add_points(ring, list(ring_coords) + [ring_coords[0]])
            g.AddGeometry(ring)
    return g


def _add_points(g, coords):
    for c in coords:
        if len(c) == 3:
            g.AddPoint(float(c[0]), float(c[1]), float(c[2]))
        else:
            g.AddPoint_2D(float(c[0]), float(c[1]))


# --------------------------------------------------------------------------- layer styles
# QGIS's own `layer_styles` table (as QgsVectorLayer.saveStyleToDatabase creates it in a GeoPackage).
# Written here with plain OGR calls, never through QGIS: QGIS's OGR provider asks "a style of this
# name exists, overwrite?" in a modal dialog that a headless qgis_process never answers, and storing
# into the file that just-opened layers read from left them empty. Here a style of the same name is
# replaced without asking, and only one style per table is the default.
STYLE_TABLE = "layer_styles"
_STYLE_FIELDS = [
    ("f_table_catalog", ogr.OFTString, None, 256), ("f_table_schema", ogr.OFTString, None, 256),
    ("f_table_name", ogr.OFTString, None, 256), ("f_geometry_column", ogr.OFTString, None, 256),
    ("styleName", ogr.OFTString, None, 30), ("styleQML", ogr.OFTString, None, 0),
    ("styleSLD", ogr.OFTString, None, 0), ("useAsDefault", ogr.OFTInteger, ogr.OFSTBoolean, 0),
    ("description", ogr.OFTString, None, 0), ("owner", ogr.OFTString, None, 30),
    ("ui", ogr.OFTString, None, 30), ("update_time", ogr.OFTDateTime, None, 0),
]


@dataclass
class Style:
    table: str  # the layer (table) the style is for
    qml: str  # QGIS style document (.qml text)
    sld: str = ""  # the same style as OGC SLD, for other software ("" when unknown)
    name: str = "default"  # styleName: a style of the same name for the same table is replaced
    description: str = ""
    default: bool = True  # QGIS applies the default style when it opens the layer


def write_layer_styles(path, styles):
    """Store `styles` (list of Style) in the GeoPackage's layer_styles table, replacing styles of the
    same table and name, in one transaction; never asks anything. Raises ValueError naming the file
    and the problem (not a GeoPackage, a table that is not in it)."""
    path = str(path)
    try:
        ds = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=["GPKG"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot open the GeoPackage to store layer styles: {exc}") from exc
    if ds is None:
        raise ValueError(f"{path}: cannot open the GeoPackage to store layer styles")
    try:
        geometry_columns = {}
        for style in styles:
            check_identifier(style.table)
            layer = ds.GetLayerByName(style.table)
            if layer is None:
                raise ValueError(f"{path}: no layer '{style.table}' to store a style for")
            geometry_columns[style.table] = layer.GetGeometryColumn()
        table = ds.GetLayerByName(STYLE_TABLE) or _create_style_table(ds)
        names = {table.GetLayerDefn().GetFieldDefn(k).GetName()
                 for k in range(table.GetLayerDefn().GetFieldCount())}
        missing = [f[0] for f in _STYLE_FIELDS if f[0] not in names]
        if missing:
            raise ValueError(f"{path}: its {STYLE_TABLE} table lacks the field(s) {', '.join(missing)}")
        now = datetime.now(timezone.utc).strftime("%Y/%m/%d %H:%M:%S+00")
        ds.StartTransaction()
        try:
            replaced, demoted = set(), []
            targets = {(s.table, s.name) for s in styles}
            default_tables = {s.table for s in styles if s.default}
            for feature in table:
                key = (feature.GetField("f_table_name"), feature.GetField("styleName"))
                if key in targets:
                    replaced.add(feature.GetFID())
                elif key[0] in default_tables and feature.GetField("useAsDefault"):
                    demoted.append(feature)
            for fid in replaced:
                table.DeleteFeature(fid)
            for feature in demoted:
                feature.SetField("useAsDefault", 0)
                table.SetFeature(feature)
            for style in styles:
                feature = ogr.Feature(table.GetLayerDefn())
                values = {"f_table_catalog": "", "f_table_schema": "", "f_table_name": style.table,
                          "f_geometry_column": geometry_columns[style.table], "styleName": style.name,
                          "styleQML": style.qml, "styleSLD": style.sld or "",
                          "useAsDefault": int(bool(style.default)), "description": style.description,
                          "owner": "", "update_time": now}
                for key, value in values.items():
                    feature.SetField(key, value)
                table.CreateFeature(feature)
            ds.CommitTransaction()
        except BaseException:
            ds.RollbackTransaction()
            raise
    finally:
        ds = None  # closes the file: nothing stays open, no -wal/-shm is left


def _create_style_table(ds):
    table = ds.CreateLayer(STYLE_TABLE, geom_type=ogr.wkbNone, options=["FID=id"])
    for name, ftype, subtype, width in _STYLE_FIELDS:
        fdef = ogr.FieldDefn(name, ftype)
        if subtype is not None:
            fdef.SetSubType(subtype)
        if width:
            fdef.SetWidth(width)
        table.CreateField(fdef)
    return table


def read_layer_styles(path):
    """[(table, styleName, useAsDefault, styleQML)] from a GeoPackage's layer_styles ([] when none)."""
    ds = ogr.Open(str(path))
    if ds is None:
        raise ValueError(f"{path}: not a readable GeoPackage")
    table = ds.GetLayerByName(STYLE_TABLE)
    rows = [] if table is None else [
        (f.GetField("f_table_name"), f.GetField("styleName"), bool(f.GetField("useAsDefault")), f.GetField("styleQML"))
        for f in table
    ]
    ds = None
    return rows
