"""EXIF and DJI-like XMP for the synthetic survey's JPEGs (core/synthetic.py): the same tags real
DJI photos carry (focal, 35 mm focal, GPS, capture time; XMP altitudes, gimbal and flight attitude),
so the readers run the same code paths."""

import cv2

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"



def _dms(value):
    value = abs(float(value))
    d = int(value)
    m = int((value - d) * 60.0)
    s = (value - d - m / 60.0) * 3600.0
    return (float(d), float(m), round(s, 6))


def _time_plus(start, seconds):
    from datetime import datetime, timedelta

    t = datetime.strptime(start, "%Y:%m:%d %H:%M:%S") + timedelta(seconds=seconds)
    return t.strftime("%Y:%m:%d %H:%M:%S")


def _signed(x):
    return f"{x:+.2f}"


def _dji_yaw(deg):
    """DJI writes yaw in (-180, 180]."""
    return 180.0 - (180.0 - deg) % 360.0


def _xmp_packet(spec, rel_alt, abs_alt, gimbal, flight):
    gimbal = (_dji_yaw(gimbal[0]), gimbal[1], gimbal[2])
    flight = (_dji_yaw(flight[0]), flight[1], flight[2])
    attrs = {
        "tiff:Make": spec.make,
        "tiff:Model": spec.model,
        "dc:format": "image/jpeg",
        "drone-dji:AbsoluteAltitude": _signed(abs_alt),
        "drone-dji:RelativeAltitude": _signed(rel_alt),
    }
    if spec.attitude_records:
        attrs.update({
            "drone-dji:GimbalRollDegree": _signed(gimbal[2]),
            "drone-dji:GimbalYawDegree": _signed(gimbal[0]),
            "drone-dji:GimbalPitchDegree": _signed(gimbal[1]),
            "drone-dji:FlightRollDegree": _signed(flight[2]),
            "drone-dji:FlightYawDegree": _signed(flight[0]),
            "drone-dji:FlightPitchDegree": _signed(flight[1]),
        })
    body = "\n".join(f'   {k}="{v}"' for k, v in attrs.items())
    xml = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="DJI Meta Data"\n'
        '    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"\n'
        f"{body}>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return XMP_HEADER + xml.encode("utf-8")


def _insert_app1(jpeg, payload):
    """Insert an APP1 segment after the leading APP0/APP1 segments of a JPEG."""
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("APP1 payload too large")
    pos = 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] in (0xE0, 0xE1):
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    seg = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:pos] + seg + jpeg[pos:]


def jpeg_with_metadata(pixels, spec, index, lat, lon, alt, rel_alt, gimbal, flight):
    import exif

    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(spec.jpeg_quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    im = exif.Image(buf.tobytes())
    im.make = spec.make
    im.model = spec.model
    im.software = "AlignKit synthetic survey"
    im.orientation = exif.Orientation.TOP_LEFT
    im.datetime_original = _time_plus(spec.start_time, index)
    im.focal_length = round(float(spec.focal_mm), 4)
    im.focal_length_in_35mm_film = int(round(spec.focal_35mm_exact))
    im.pixel_x_dimension = int(spec.width)
    im.pixel_y_dimension = int(spec.height)
    im.gps_latitude = _dms(lat)
    im.gps_latitude_ref = "N" if lat >= 0 else "S"
    im.gps_longitude = _dms(lon)
    im.gps_longitude_ref = "E" if lon >= 0 else "W"
    im.gps_altitude = round(abs(float(alt)), 3)
    im.gps_altitude_ref = (
        exif.GpsAltitudeRef.ABOVE_SEA_LEVEL if alt >= 0 else exif.GpsAltitudeRef.BELOW_SEA_LEVEL
    )
    data = im.get_file()
    return _insert_app1(data, _xmp_packet(spec, rel_alt, alt, gimbal, flight))
