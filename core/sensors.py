"""Physical sensor size (and the fixed lens's focal length) of common drone and compact cameras.

EXIF rarely says how wide the sensor is, yet `focal_mm / sensor_width_mm * image_width_px` is the
most direct focal length in pixels. The rows below are keyed by EXIF Make + Model as the cameras
write them. Sensor "type" sizes (1/2.3", 1", 4/3 ...) are nominal names, not dimensions; the
millimetre figures are the active-area dimensions commonly used for them (Wikipedia, "Image sensor
format", table of sensor formats and sizes) unless a row cites something more specific.
`focal_mm` is filled only for fixed-lens cameras whose focal length is certain; it is used only
when a photo's EXIF lacks FocalLength.
"""
import re
from dataclasses import dataclass

FORMAT_SOURCE = "Wikipedia 'Image sensor format', table of sensor formats and sizes"


@dataclass(frozen=True)
class SensorSpec:
    width_mm: float  # active sensor width (long side)
    height_mm: float  # active sensor height (short side)
    focal_mm: float | None  # fixed lens focal length, None for zoom / interchangeable lenses or unsure
    source: str  # where the figures come from


_TYPE_1_2_3 = (6.17, 4.55)  # 1/2.3" type
_TYPE_1_2 = (6.40, 4.80)  # 1/2" type
_TYPE_1 = (13.2, 8.8)  # 1" type
_TYPE_4_3 = (17.3, 13.0)  # Four Thirds
_FULL_FRAME_P1 = (35.9, 24.0)  # DJI Zenmuse P1 full frame

_DJI_P3 = "DJI Phantom 3 specs: 1/2.3\" CMOS, FOV 94deg, 20 mm (35 mm format equivalent) f/2.8; "
_DJI_P4P = "DJI Phantom 4 Pro specs: 1\" CMOS 20 MP, FOV 84deg, 8.8 mm / 24 mm (35 mm format equivalent); "

# Key: lower-case "make model" with runs of spaces collapsed.
SENSORS: dict[str, SensorSpec] = {
    # Phantom 3 Advanced / Professional / Standard and Phantom 4: 3.61 mm lens (brighton_beach's
    # FC300S photos carry FocalLength 3.61 and FocalLengthIn35mmFilm 20 in their own EXIF).
    "dji fc300s": SensorSpec(*_TYPE_1_2_3, 3.61, _DJI_P3 + FORMAT_SOURCE + "; 3.61 mm from the camera's EXIF"),
    "dji fc300x": SensorSpec(*_TYPE_1_2_3, 3.61, _DJI_P3 + FORMAT_SOURCE),
    "dji fc300c": SensorSpec(*_TYPE_1_2_3, 3.61, _DJI_P3 + FORMAT_SOURCE),
    "dji fc330": SensorSpec(*_TYPE_1_2_3, 3.61,
                            "DJI Phantom 4 specs: 1/2.3\" CMOS, FOV 94deg 20 mm (35 mm equivalent); " + FORMAT_SOURCE),
    "dji fc220": SensorSpec(*_TYPE_1_2_3, None,
                            "DJI Mavic Pro specs: 1/2.3\" CMOS, FOV 78.8deg 26 mm (35 mm equivalent); " + FORMAT_SOURCE),
    "dji fc7303": SensorSpec(*_TYPE_1_2_3, None,
                             "DJI Mini 2 specs: 1/2.3\" CMOS, FOV 83deg, 24 mm (35 mm equivalent); " + FORMAT_SOURCE),
    "dji fc7203": SensorSpec(*_TYPE_1_2_3, None,
                             "DJI Mavic Mini specs: 1/2.3\" CMOS, 24 mm (35 mm equivalent); " + FORMAT_SOURCE),
    "dji fc3170": SensorSpec(*_TYPE_1_2, None,
                             "DJI Mavic Air 2 specs: 1/2\" CMOS 48 MP, 24 mm (35 mm equivalent); " + FORMAT_SOURCE),
    "dji fc6310": SensorSpec(*_TYPE_1, 8.8, _DJI_P4P + FORMAT_SOURCE),
    "dji fc6310s": SensorSpec(*_TYPE_1, 8.8, _DJI_P4P + "(Phantom 4 Pro V2.0); " + FORMAT_SOURCE),
    "dji fc6310r": SensorSpec(*_TYPE_1, 8.8, "DJI Phantom 4 RTK specs: 1\" CMOS, 8.8 mm / 24 mm; " + FORMAT_SOURCE),
    "dji fc6510": SensorSpec(*_TYPE_1, 8.8, "DJI Zenmuse X4S specs: 1\" CMOS, 8.8 mm / 24 mm; " + FORMAT_SOURCE),
    "dji fc6520": SensorSpec(*_TYPE_4_3, None, "DJI Zenmuse X5S specs: 4/3 CMOS, interchangeable lens; "
                             + FORMAT_SOURCE),
    "dji zenmusep1": SensorSpec(*_FULL_FRAME_P1, None, "DJI Zenmuse P1 specs: full frame 35.9 x 24 mm, "
                                "interchangeable lens"),
    # Mavic 2 Pro: Hasselblad writes its own make.
    "hasselblad l1d-20c": SensorSpec(*_TYPE_1, 10.26,
                                     "DJI Mavic 2 Pro specs: 1\" CMOS, FOV 77deg, 28 mm (35 mm equivalent); "
                                     + FORMAT_SOURCE + "; 10.26 mm = 28 mm x 13.2 mm-wide 3:2 diagonal / 43.27"),
    "hasselblad l2d-20c": SensorSpec(*_TYPE_4_3, None,
                                     "DJI Mavic 3 specs: 4/3 CMOS, 24 mm (35 mm equivalent); " + FORMAT_SOURCE),
    # senseFly eBee's Canon S110 (WebODM fixtures). Canon's own EXIF writes FocalPlaneX/YResolution
    # 13651.88 / 13636.36 px per inch for its 4000 x 3000 output: 7.44 x 5.59 mm.
    "canon powershot s110": SensorSpec(7.44, 5.59, None,
                                             "Canon S110 EXIF FocalPlaneX/YResolution at 4000x3000 px "
                                             "(WebODM app/fixtures/tiny_drone_image.jpg); 1/1.7\" type"),
}


def _key(text):
    return re.sub(r"\s+", " ", text.strip().lower())


def lookup_sensor(make, model):
    """The SensorSpec for an EXIF make and model, or None. Tolerates a model that repeats the make."""
    if not model:
        return None
    make, model = _key(make or ""), _key(model)
    for key in (f"{make} {model}", model):
        if key in SENSORS:
            return SENSORS[key]
    return None
