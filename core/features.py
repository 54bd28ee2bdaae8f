"""Stage 1: SIFT features into an out-of-core store in the workspace.

Per image `i` the store holds, under `<workspace>/features/`:
  `i.kp.npy`   float64 (N, 4): x, y (original pixels, pixel-centre convention), size (diameter of the
               keypoint's neighbourhood in original pixels, OpenCV's `size`), angle (degrees, OpenCV's)
  `i.desc.npy` uint8 (N, 128): SIFT or RootSIFT descriptors
  `i.rgb.npy`  uint8 (N, 3): colour of the original image at the keypoint
  `i.json`     written last: the image identity and the parameters; its presence marks the image done.
Over budget, the coarsest octaves are kept first (see sift_features); OpenCV's doubled first
octave is skipped by default (see sift_features_no_doubling). Stored strongest first. Each worker reads its image, writes
these files and returns a few numbers, so descriptor arrays never cross a process boundary and
no process holds more than one image: peak memory does not grow with the number of images.
"""

import dataclasses
import os
import time

import cv2
import numpy as np

from . import camera, workspace
from .cancel import check
from .executor import SerialExecutor

FEATURES_DIR = "features"
INDEX_FILE = "index.json"
FORMAT_VERSION = 2  # bump when the stored meaning changes, so old workspaces are re-extracted

# Photos above this size are decoded at 1/2, 1/4 or 1/8 of their size where the working size
# allows (JPEG: libjpeg's DCT scaling; other formats: GDAL in strips, box-averaged), so a worker never
# holds a full-size decode of them: a 32000 x 32000 PNG decoded whole in colour took 5.8 GB.
# Below it the full-size decode is kept (a 20 Mpx photo in colour is 60 MB).
REDUCED_DECODE_ABOVE_PIXELS = 40_000_000
_REDUCED_JPEG_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_STRIP_BYTES = 32 << 20  # bytes of full-resolution rows read at a time by the strip decoder

# OpenCV's SIFT keypoints sit +0.25 working pixels right of and below the pixel-centre convention
# (measured: SIFT on an image and on its exact 180 degree rotation gives keypoints 0.5 px apart).
OPENCV_SIFT_OFFSET_PX = 0.25


def feature_params(config):
    """The config values that change extracted features (a dict, so it travels to workers)."""
    return {
        "max_image_size": int(config.max_image_size),
        "max_features": int(config.max_features),
        "contrast_threshold": float(config.sift_contrast_threshold),
        "root_sift": bool(getattr(config, "root_sift", True)),
        "max_tile_pixels": int(getattr(config, "sift_max_tile_pixels", 0)),
        "doubled_octave": bool(getattr(config, "sift_doubled_octave", False)),
        "version": FORMAT_VERSION,
    }


def _paths(features_dir, index):
    stem = os.path.join(features_dir, f"{index:05d}")
    return {
        "kp": stem + ".kp.npy",
        "desc": stem + ".desc.npy",
        "rgb": stem + ".rgb.npy",
        "meta": stem + ".json",
    }


def _image_identity(path):
    st = os.stat(path)
    return {"image": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_complete(files, identity, params):
    if not os.path.exists(files["meta"]):
        return None
    try:
        meta = workspace.read_json(files["meta"])
    except (OSError, ValueError):
        return None
    if meta.get("identity") != identity or meta.get("params") != params:
        return None
    if meta.get("error") is None and not all(os.path.exists(files[k]) for k in ("kp", "desc", "rgb")):
        return None
    return meta


def working_size(width, height, max_image_size):
    """(width, height) of the working image: long side at most max_image_size, aspect kept."""
    scale = max(width, height) / float(max_image_size)
    if scale <= 1.0:
        return width, height
    return max(1, int(round(width / scale))), max(1, int(round(height / scale)))


def root_sift(descriptors):
    """RootSIFT (Arandjelovic & Zisserman 2012): L2 on it is the Hellinger kernel on SIFT, better for matching.

    L1-normalise, square root (unit L2 norm), scaled by 512 into uint8 like OpenCV's own SIFT.
    """
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-12)
    return np.clip(np.rint(np.sqrt(d) * 512.0), 0, 255).astype(np.uint8)


def _tiles(length, count, margin):
    """Split [0, length) into `count` cores; each tile is its core widened by `margin`, clipped."""
    edges = np.linspace(0, length, count + 1).round().astype(int)
    return [(a, b, max(0, a - margin), min(length, b + margin)) for a, b in zip(edges[:-1], edges[1:])]


def _octave(keypoint):
    """The pyramid octave OpenCV detected a keypoint in (-1 = the doubled image)."""
    octave = keypoint.octave & 255
    return octave - 256 if octave >= 128 else octave


def sift_features_no_doubling(gray, max_features, contrast_threshold):
    """SIFT on a grayscale image without OpenCV's doubled first octave; same return as sift_features.

    OpenCV always doubles the image first (octave -1): 4/5 of its work at 3200 px, and the
    coarse-octave-first budget keeps none of those features there. So detect on the image halved
    (SIFT's doubled octave of it is this image's octave 0, band-limited to within ~4% at the DoG
    scales), then compute the descriptors on this image itself, from its octave 0 up.
    Measured on brighton at 3200 px: the same verified matches, 2.5x faster, 1/4 of the memory.
    """
    height, width = gray.shape[:2]
    hw, hh = max(1, int(round(width / 2))), max(1, int(round(height / 2)))
    half = cv2.resize(gray, (hw, hh), interpolation=cv2.INTER_AREA)
    sx, sy = width / hw, height / hh
    sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=float(contrast_threshold))
    found = sift.detect(half, None)
    if not found:
        return np.zeros((0, 4), np.float64), np.zeros((0, 128), np.uint8), np.zeros(0)
    octave = np.array([_octave(k) for k in found])
    response = np.array([k.response for k in found])
    x = np.array([k.pt[0] for k in found])
    y = np.array([k.pt[1] for k in found])
    chosen = np.lexsort((y, x, -response, -octave))[:max_features]
    full = []
    for q in chosen:
        k = found[q]
        # Half-image OpenCV position -> true pixel centre -> this image -> OpenCV's convention again.
        px = (k.pt[0] - OPENCV_SIFT_OFFSET_PX + 0.5) * sx - 0.5 + OPENCV_SIFT_OFFSET_PX
        py = (k.pt[1] - OPENCV_SIFT_OFFSET_PX + 0.5) * sy - 0.5 + OPENCV_SIFT_OFFSET_PX
        packed = (k.octave & ~255) | ((_octave(k) + 1) & 255)  # one octave finer in this image
        full.append(cv2.KeyPoint(px, py, k.size * 0.5 * (sx + sy), k.angle, k.response, packed, k.class_id))
    keypoints, descriptors = sift.compute(gray, full)
    kp = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], dtype=np.float64)
    response = np.array([k.response for k in keypoints], dtype=np.float64)
    kp[:, :2] -= OPENCV_SIFT_OFFSET_PX
    order = np.lexsort((kp[:, 1], kp[:, 0], -response))  # stored strongest first
    descriptors = np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(kp[order]), descriptors, response[order]


def sift_features(gray, max_features, contrast_threshold, max_tile_pixels=0, tile_margin=128):
    """SIFT on a grayscale image: keypoints (N,4) in ITS pixel-centre coordinates, uint8 descriptors, responses.

    Which features to keep when there are more than max_features: the coarsest octaves first, and
    by response within an octave (as COLMAP keeps them). OpenCV's own choice, by response alone,
    fills the budget with the finest octave: on foliage and lawn those are leaves and blades that
    move and alias between photos. Measured on brighton_beach (3200 px, 8000 features): verified
    matches of a forest pair 0 -> 197, of a lawn pair 254 -> 584.

    OpenCV's SIFT doubles the image and keeps an 11-layer float pyramid of it: ~1.4 GB at 3200 x 1800.
    Above `max_tile_pixels` the image is cut into strips across its long side, each SIFT-ed with a
    `tile_margin` overlap; a strip keeps the keypoints in its core.
    """
    height, width = gray.shape[:2]
    count = 1 if max_tile_pixels <= 0 else int(np.ceil(width * height / float(max_tile_pixels)))
    long_axis = 1 if width >= height else 0
    length = gray.shape[long_axis]
    sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=float(contrast_threshold))
    tiles, found = [], []
    for core_a, core_b, a, b in _tiles(length, count, tile_margin if count > 1 else 0):
        tile = np.ascontiguousarray(gray[:, a:b] if long_axis == 1 else gray[a:b, :])
        along = 0 if long_axis == 1 else 1  # pt index of the split axis
        keypoints = [k for k in sift.detect(tile, None) if core_a - 0.5 <= k.pt[along] + a < core_b - 0.5]
        tiles.append((tile, a))
        found += [(len(tiles) - 1, k) for k in keypoints]
    if not found:
        return np.zeros((0, 4), np.float64), np.zeros((0, 128), np.uint8), np.zeros(0)
    octave = np.array([_octave(k) for _, k in found])
    response = np.array([k.response for _, k in found])
    x = np.array([k.pt[0] for _, k in found])
    y = np.array([k.pt[1] for _, k in found])
    tile_of = np.array([t for t, _ in found])
    # Coarsest octave first, strongest first; position breaks ties so thread scheduling never matters.
    chosen = np.lexsort((y, x, tile_of, -response, -octave))[:max_features]
    kps, descs, responses = [], [], []
    for t, (tile, a) in enumerate(tiles):
        mine = chosen[tile_of[chosen] == t]
        if not len(mine):
            continue
        keypoints, descriptors = sift.compute(tile, [found[q][1] for q in mine])
        kp = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], dtype=np.float64)
        kp[:, 1 - long_axis] += a  # pt is (x, y): x offset for strips along the width
        kps.append(kp)
        descs.append(descriptors)
        responses.append(np.array([k.response for k in keypoints], dtype=np.float64))
    kp, descriptors, response = np.concatenate(kps), np.concatenate(descs), np.concatenate(responses)
    kp[:, :2] -= OPENCV_SIFT_OFFSET_PX
    order = np.lexsort((kp[:, 1], kp[:, 0], -response))  # stored strongest first
    descriptors = np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(kp[order]), descriptors, response[order]


def extract_image(item):
    """Worker: extract one image into the store unless already complete. Returns a small summary dict."""
    index, path, features_dir, params = item
    files = _paths(features_dir, index)
    identity = _image_identity(path)
    meta = _is_complete(files, identity, params)
    if meta is not None:
        return {
            "index": index,
            "skipped": True,
            "count": meta.get("count", 0),
            "error": meta.get("error"),
            "seconds": 0.0,
        }
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        bgr, reduction, covered, original = decode_for_features(path, params["max_image_size"])
    except (cv2.error, MemoryError, RuntimeError, ValueError) as exc:  # e.g. OpenCV's pixel limit
        bgr, error = None, f"{path}: cannot decode this image: {str(exc).strip() or type(exc).__name__}"
    else:
        error = None if bgr is not None else (
            f"{path}: OpenCV cannot decode this image (corrupt, truncated or unsupported format)")
    if error is not None:
        workspace.write_json(
            files["meta"], {"identity": identity, "params": params, "error": error, "count": 0}
        )
        return {
            "index": index,
            "skipped": False,
            "count": 0,
            "error": error,
            "seconds": time.perf_counter() - start,
        }
    # The decoded image covers width x height original pixels (a reduced decode drops the last
    # reduction-1 rows/columns at most, so each decoded pixel is exactly one reduction x reduction block).
    gray, (sx, sy) = _working_gray(bgr, covered, params["max_image_size"])
    ww, wh = gray.shape[1::-1]
    if params["doubled_octave"]:
        kp, desc, _ = sift_features(
            gray, params["max_features"], params["contrast_threshold"], params["max_tile_pixels"]
        )
    else:
        kp, desc, _ = sift_features_no_doubling(gray, params["max_features"], params["contrast_threshold"])
    del gray
    # Working -> original pixels with pixel centres at integers: x = (x_w + 0.5) * s - 0.5.
    kp[:, 0] = (kp[:, 0] + 0.5) * sx - 0.5
    kp[:, 1] = (kp[:, 1] + 0.5) * sy - 0.5
    kp[:, 2] *= 0.5 * (sx + sy)
    if params["root_sift"] and len(desc):
        desc = root_sift(desc)
    cols = np.clip(np.rint((kp[:, 0] + 0.5) / reduction - 0.5).astype(np.intp), 0, bgr.shape[1] - 1)
    rows = np.clip(np.rint((kp[:, 1] + 0.5) / reduction - 0.5).astype(np.intp), 0, bgr.shape[0] - 1)
    rgb = np.ascontiguousarray(bgr[rows, cols, ::-1])
    del bgr
    workspace.write_npy(files["kp"], kp)
    workspace.write_npy(files["desc"], desc)
    workspace.write_npy(files["rgb"], rgb)
    seconds = time.perf_counter() - start
    workspace.write_json(
        files["meta"],
        {
            "identity": identity,
            "params": params,
            "error": None,
            "count": int(len(kp)),
            "width": original[0],
            "height": original[1],
            "working_size": [ww, wh],
            "decode_reduction": reduction,
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu_start,
        },
    )
    return {"index": index, "skipped": False, "count": int(len(kp)), "error": None, "seconds": seconds}


def reduction_for(width, height, max_image_size):
    """1, 2, 4 or 8: the largest decode reduction that still leaves the working size's detail."""
    if width * height <= REDUCED_DECODE_ABOVE_PIXELS:
        return 1
    for r in (8, 4, 2):
        if max(width, height) // r >= max_image_size:
            return r
    return 1


def decode_for_features(path, max_image_size):
    """(bgr uint8 image or None, reduction r, (width, height) of original pixels it covers, the
    image's own (width, height)).

    The size comes from the header first: beyond camera.MAX_IMAGE_PIXELS the photo is refused with
    its reason (ValueError). Large photos are decoded reduced (see REDUCED_DECODE_ABOVE_PIXELS);
    pixel (i, j) of a reduced image is the mean of original rows i*r..i*r+r-1, columns j*r..j*r+r-1.
    None: OpenCV cannot decode the file (the caller reports it).
    """
    size = camera.header_size(path)
    if size is not None and camera.size_problem(*size):
        raise ValueError(camera.size_problem(*size))
    r = reduction_for(*size, max_image_size) if size is not None else 1
    # IGNORE_ORIENTATION: keypoints live in the stored pixel grid, whatever the EXIF orientation says.
    if r == 1:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        covered = None if bgr is None else bgr.shape[1::-1]
        return bgr, 1, covered, covered
    width, height = size
    if _is_jpeg(path):
        bgr = cv2.imread(path, _REDUCED_JPEG_FLAGS[r] | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            return None, r, size, size
        bgr = bgr[: height // r, : width // r]  # a partial last block: dropped, so every pixel is r x r
    else:
        bgr = _decode_reduced_in_strips(path, width, height, r)
    return np.ascontiguousarray(bgr), r, (bgr.shape[1] * r, bgr.shape[0] * r), size


def _working_gray(bgr, covered, max_image_size):
    """The grey working image SIFT runs on, and its pixel size in original pixels (sx, sy)."""
    width, height = covered
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    ww, wh = working_size(width, height, max_image_size)
    if (ww, wh) != gray.shape[1::-1]:
        gray = cv2.resize(gray, (ww, wh), interpolation=cv2.INTER_AREA)
    return gray, (width / ww, height / wh)


def working_gray(path, max_image_size):
    """(grey working image, (sx, sy)) of a photo, as feature extraction sees it: original pixel
    x = (x_working + 0.5) * sx - 0.5. Raises ValueError when the photo cannot be decoded."""
    bgr, _, covered, _ = decode_for_features(path, max_image_size)
    if bgr is None:
        raise ValueError(f"{path}: OpenCV cannot decode this image")
    return _working_gray(bgr, covered, max_image_size)


@dataclasses.dataclass(frozen=True)
class WorkingGray:
    """working_gray of photo k of `paths`: picklable, so that an executor's workers read photos themselves."""
    paths: tuple
    max_image_size: int

    def __call__(self, k):
        return working_gray(self.paths[int(k)], self.max_image_size)


def _is_jpeg(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\xff\xd8"


def _decode_reduced_in_strips(path, width, height, r):
    """BGR uint8 at 1/r of the size via GDAL, a strip of rows at a time: memory ~ one strip, not the image."""
    ds = camera._gdal_open(path)
    if ds is None:
        raise ValueError("GDAL cannot open the image")
    bands = [ds.GetRasterBand(k + 1) for k in range(min(ds.RasterCount, 3))]
    if len(bands) == 2:
        bands = bands[:1]  # grey + alpha
    out_w, out_h = width // r, height // r
    out = np.empty((out_h, out_w, len(bands)), np.uint8)
    step = max(1, _STRIP_BYTES // (width * 2 * r)) * r  # rows per strip, a multiple of r
    for y in range(0, out_h * r, step):
        rows = min(step, out_h * r - y)
        for k, band in enumerate(bands):
            strip = band.ReadAsArray(0, y, out_w * r, rows)
            if strip is None:
                raise ValueError(f"GDAL cannot read rows {y}-{y + rows} of band {k + 1}")
            if strip.dtype == np.uint16:
                strip = (strip >> 8).astype(np.uint8)  # as OpenCV's IMREAD_COLOR does with 16-bit images
            elif strip.dtype != np.uint8:
                raise ValueError(f"{strip.dtype} samples are not supported for an image this large")
            out[y // r: (y + rows) // r, :, k] = cv2.resize(strip, (out_w, rows // r), interpolation=cv2.INTER_AREA)
            band.FlushCache()  # drop GDAL's cached blocks of this strip: memory stays one strip
    ds = None
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if len(bands) == 1 else out[:, :, ::-1]


def count_complete(image_paths, workspace_dir, config):
    """How many of `image_paths` already have complete features in the workspace (they will be reused)."""
    features_dir = os.path.join(os.fspath(workspace_dir), FEATURES_DIR)
    params = feature_params(config)
    done = 0
    for i, path in enumerate(image_paths):
        try:
            done += _is_complete(_paths(features_dir, i), _image_identity(os.fspath(path)), params) is not None
        except OSError:
            pass
    return done


def extract_features(image_paths, workspace_dir, config, executor=None, progress=None, is_canceled=None):
    """Extract SIFT features of every image into `<workspace_dir>/features`; resumable.

    Images whose features are already complete for the same file and parameters are skipped.
    Returns a FeatureStore; `store.errors` maps index -> message for images that could not be read.
    """
    image_paths = [os.fspath(p) for p in image_paths]
    features_dir = os.path.join(os.fspath(workspace_dir), FEATURES_DIR)
    os.makedirs(features_dir, exist_ok=True)
    params = feature_params(config)
    executor = executor or SerialExecutor()
    items = [(i, p, features_dir, params) for i, p in enumerate(image_paths)]
    results = {}
    for result in executor.map(
        extract_image, items, progress=progress, is_canceled=is_canceled, message="extracting features"
    ):
        results[result["index"]] = result
    check(is_canceled)
    entries = []
    for i, path in enumerate(image_paths):
        meta = workspace.read_json(_paths(features_dir, i)["meta"])
        entries.append(
            {
                "image": os.path.abspath(path),
                "count": meta.get("count", 0),
                "width": meta.get("width"),
                "height": meta.get("height"),
                "working_size": meta.get("working_size"),
                "error": meta.get("error"),
                "skipped": results[i]["skipped"],
                "seconds": meta.get("seconds", 0.0),
                "cpu_seconds": meta.get("cpu_seconds", 0.0),
            }
        )
    workspace.write_json(os.path.join(features_dir, INDEX_FILE), {"params": params, "images": entries})
    return FeatureStore(workspace_dir)


class FeatureStore:
    """Lazy, read-only access to the features of a workspace (memory-mapped .npy files)."""

    def __init__(self, workspace_dir):
        self.features_dir = os.path.join(os.fspath(workspace_dir), FEATURES_DIR)
        index_path = os.path.join(self.features_dir, INDEX_FILE)
        if not os.path.exists(index_path):
            raise FileNotFoundError(f"{index_path}: no feature index; run extract_features first")
        index = workspace.read_json(index_path)
        self.params = index["params"]
        self.images = index["images"]
        self.errors = {i: e["error"] for i, e in enumerate(self.images) if e.get("error")}

    _opened = {}  # per process: workspace -> (the index file's stat, store)

    @classmethod
    def cached(cls, workspace_dir):
        """The store of `workspace_dir`, read again only when its index file changed: a matching worker
        takes one pair after another, and parsing a 1,000-photo index each time cost ~3 ms a pair."""
        index_path = os.path.join(os.fspath(workspace_dir), FEATURES_DIR, INDEX_FILE)
        try:
            st = os.stat(index_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        hit = cls._opened.get(os.fspath(workspace_dir))
        if stamp is None or hit is None or hit[0] != stamp:
            hit = cls._opened[os.fspath(workspace_dir)] = (stamp, cls(workspace_dir))
        return hit[1]

    def __len__(self):
        return len(self.images)

    def count(self, i):
        return int(self.images[i]["count"])

    def image_size(self, i):
        """(width, height) of the original image."""
        return self.images[i]["width"], self.images[i]["height"]

    def _load(self, i, kind, empty_shape, dtype, mmap=True):
        if self.count(i) == 0:
            return np.zeros(empty_shape, dtype)
        return np.load(
            _paths(self.features_dir, i)[kind], mmap_mode="r" if mmap else None, allow_pickle=False
        )

    def keypoint_table(self, i):
        """(N, 4) float64: x, y, size, angle (memory-mapped)."""
        return self._load(i, "kp", (0, 4), np.float64)

    def keypoints(self, i):
        """(N, 2) float64 original-pixel xy, pixel-centre convention, OpenCV's SIFT offset corrected."""
        return np.ascontiguousarray(self.keypoint_table(i)[:, :2])

    def scales(self, i):
        """(N,) keypoint size (neighbourhood diameter) in original pixels."""
        return np.ascontiguousarray(self.keypoint_table(i)[:, 2])

    def angles(self, i):
        return np.ascontiguousarray(self.keypoint_table(i)[:, 3])

    def descriptors(self, i):
        """(N, 128) uint8, memory-mapped."""
        return self._load(i, "desc", (0, 128), np.uint8)

    def colors(self, i):
        """(N, 3) uint8 RGB."""
        return np.asarray(self._load(i, "rgb", (0, 3), np.uint8))

    def working_scale(self, i):
        """Original pixels per working pixel (for thresholds given in working pixels)."""
        width, _ = self.image_size(i)
        working = self.images[i].get("working_size")
        return width / float(working[0]) if working else 1.0
