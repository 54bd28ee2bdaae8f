"""Write GeoPackages with GDAL/OGR (no QGIS needed), atomically: all layers or no file.

A layer is described by plain data, so every stage can hand its product to export without
knowing OGR:  Layer("cameras", "PointZ", [("image", "str"), ("registered", "bool")],
[((x, y, z), {"image": "a.jpg", "registered": True}), ...]).
Geometry coordinates: a point is (x, y[, z]); a line string is [(x, y[, z]), ...]; a polygon
is [outer_ring, hole, ...] with each ring a list of (x, y[, z]) (closed automatically).
"""
from dataclasses import dataclass, field

from osgeo import ogr, osr

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


def write_geopackage(path, crs, layers):
    """Write `layers` (list of Layer) into a new GeoPackage at `path`, replacing any old file."""
    srs = spatial_reference(crs)

    def write(tmp):
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        for layer in layers:
            _write_layer(ds, layer, srs)
        ds = None  # closes and flushes

    atomic_output(path, write)


def _write_layer(ds, layer, srs):
    gtype = _GEOMETRY_TYPES[layer.geometry]
    lyr = ds.CreateLayer(layer.name, srs=srs, geom_type=gtype, options=["SPATIAL_INDEX=YES"])
    if srs is None:
        # OGR files a CRS-less layer under srs_id 0, "Undefined geographic SRS": QGIS would read local
        # metres as degrees. -1 is the GeoPackage's "Undefined Cartesian SRS": no CRS, in metres.
        for table in ("gpkg_contents", "gpkg_geometry_columns"):
            ds.ExecuteSQL(f"UPDATE {table} SET srs_id = -1 WHERE table_name = '{layer.name}'")
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
