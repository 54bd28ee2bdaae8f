"""Fusion of an aligned image stack into one image: a focus stack into one image sharp everywhere, an
exposure bracket into one image with detail in shadows and highlights.

- focus: Laplacian-pyramid fusion (Burt & Adelson; what focus-stack and enfuse --hard-mask
  --contrast-weight do). Every frame is split into band-pass levels; at each level and pixel the frame
  with the most local Laplacian energy (squared band-pass response of the grey image, smoothed by a
  Gaussian so that noise does not flip the choice) gives the coefficient; the coarsest level is the mean
  of all frames. Choosing per band rather than per pixel is what keeps edges from haloing: a blurred
  frame's spread edge cannot win the fine bands where the sharp frame's edge is. The depth (index) map is
  the level-0 choice, median-filtered.
- exposure: Mertens exposure fusion (contrast, saturation and well-exposedness weights, blended on a
  Laplacian pyramid), with a mid-scale detail weight that keeps each region's best local contrast.

Frames are the aligned, cropped images: same size, same dtype; the result keeps that dtype (8 or 16 bit).
`fuse(frames, mode)` works on arrays; `fuse_files(paths, mode, output)` on files, usable on its own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .stack_io import StackError, data_range, read_image, to_gray, write_output

FUSE_MODES = ("none", "focus", "exposure")


@dataclass
class FusionConfig:
    min_level_side: int = 4  # coarsest focus pyramid level's short side (px): deep, so that its mean of the
    # frames is blur-free (16 px: a blurred step edge left a 9-level bump beside the sharp one; 4 px: 1)
    energy_sigma: float = 1.5  # Gaussian (level px) smoothing the Laplacian energy before the choice
    depth_median: int = 5  # median filter (px) of the depth map (index of the chosen frame)
    contrast_power: float = 1.0  # exposure: Mertens' exponent of the contrast weight (|Laplacian|)
    saturation_power: float = 1.0  # exposure: ... of the saturation weight (std over the colour channels)
    exposed_power: float = 0.5  # exposure: ... of well-exposedness (Mertens 1; lower keeps more contrast)
    well_exposed_sigma: float = 0.2  # exposure: width of the well-exposedness Gaussian around 0.5 (Mertens)
    detail_power: float = 4.0  # exposure: exponent of the mid-scale detail term (local grey std)
    detail_window: int = 31  # exposure: window (px) of that local std
    jpeg_quality: int = 95  # quality of a JPEG fused output


def _levels(shape, config):
    short = min(shape[:2])
    return max(1, int(np.floor(np.log2(max(short, 1) / config.min_level_side))) + 1)


def _pyramid(image, levels):
    """Laplacian pyramid: band-pass levels finest first, then the coarsest Gaussian level."""
    gaussian = [image]
    for _ in range(levels - 1):
        gaussian.append(cv2.pyrDown(gaussian[-1]))
    bands = []
    for fine, coarse in zip(gaussian[:-1], gaussian[1:]):
        bands.append(fine - cv2.pyrUp(coarse, dstsize=(fine.shape[1], fine.shape[0])))
    return bands + [gaussian[-1]]


def _collapse(pyramid):
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = cv2.pyrUp(image, dstsize=(band.shape[1], band.shape[0])) + band
    return image


class FocusFusion:
    """Streaming focus fusion: add() the aligned frames one by one (two pyramids in memory, not N)."""

    def __init__(self, config=None):
        self.config = config or FusionConfig()
        self.best = None  # chosen band-pass coefficients per level (+ the sum of coarsest levels)
        self.energy = None  # their grey Laplacian energy per level
        self.index = None  # level-0 choice: index of the frame
        self.count = 0
        self.shape = self.dtype = None

    def add(self, frame, name="frame"):
        if self.shape is None:
            self.shape, self.dtype = frame.shape, frame.dtype
        elif frame.shape != self.shape or frame.dtype != self.dtype:
            raise StackError(f"cannot fuse {name}: {frame.shape} {frame.dtype} where the stack is "
                             f"{self.shape} {self.dtype}")
        levels = _levels(frame.shape, self.config)
        colour = _pyramid(frame.astype(np.float32), levels)
        grey = _pyramid(to_gray(frame), levels)
        energy = [cv2.GaussianBlur(band * band, (0, 0), self.config.energy_sigma) for band in grey[:-1]]
        if self.best is None:
            self.best, self.energy = colour, energy
            self.index = np.zeros(frame.shape[:2], np.int32)
        else:
            for level, (band, e) in enumerate(zip(colour[:-1], energy)):
                wins = e > self.energy[level]
                self.energy[level] = np.where(wins, e, self.energy[level])
                if band.ndim == 3:
                    self.best[level] = np.where(wins[:, :, None], band, self.best[level])
                else:
                    self.best[level] = np.where(wins, band, self.best[level])
                if level == 0:
                    self.index[wins] = self.count
            self.best[-1] = self.best[-1] + colour[-1]
        self.count += 1

    def result(self):
        """(fused image in the frames' dtype, depth map: uint8 index of the sharpest frame per pixel)."""
        if self.count == 0:
            raise StackError("nothing to fuse")
        pyramid = self.best[:-1] + [self.best[-1] / self.count]
        fused = _to_dtype(_collapse(pyramid), self.dtype)
        depth = cv2.medianBlur(np.clip(self.index, 0, 255).astype(np.uint8), self.config.depth_median)
        return fused, depth


def _local_std(gray, window):
    mean = cv2.boxFilter(gray, -1, (window, window))
    return np.sqrt(np.maximum(cv2.boxFilter(gray * gray, -1, (window, window)) - mean * mean, 0.0))


def _exposure_weight(frame, config):
    """Mertens' per-pixel weight (contrast * saturation * well-exposedness) times the mid-scale detail term."""
    f = frame.astype(np.float32) * np.float32(1.0 / data_range(frame))
    colour = f.ndim == 3 and f.shape[2] >= 3
    f = f[:, :, :3] if colour else (f if f.ndim == 2 else f[:, :, 0])
    gray = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) if colour else f
    contrast = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
    exposed = np.exp(-((f - 0.5) ** 2) / np.float32(2 * config.well_exposed_sigma ** 2))
    if colour:
        exposed = np.prod(exposed, axis=2)
    weight = contrast ** config.contrast_power * exposed ** config.exposed_power
    if colour:
        weight *= f.std(axis=2) ** config.saturation_power
    detail = _local_std(gray, config.detail_window) + np.float32(1e-3)
    return weight * detail ** config.detail_power + np.float32(1e-12)


def exposure_fusion(frames, names=None, config=None):
    """Exposure fusion of 8- or 16-bit frames (grey or colour), in their dtype.

    Mertens, Kautz & Van Reeth (2007), as OpenCV's MergeMertens: per-pixel weights of contrast (|Laplacian|),
    saturation and well-exposedness, normalised over the frames and blended on a full-depth Laplacian
    pyramid. One addition: a mid-scale detail term (grey-level standard deviation in a window, to a power)
    so that each region keeps the local contrast of the frame that shows it best; plain Mertens averages
    it away (exposure_house: median 64 px tile contrast 0.87 of the best frame's with plain Mertens, 0.91
    with the term, clipped pixels still 3x fewer than the best single frame)."""
    config = config or FusionConfig()
    first = frames[0]
    for k, frame in enumerate(frames):
        if frame.shape != first.shape or frame.dtype != first.dtype:
            name = names[k] if names else f"frame {k}"
            raise StackError(f"cannot fuse {name}: {frame.shape} {frame.dtype} where the stack is "
                             f"{first.shape} {first.dtype}")
    weights = [_exposure_weight(frame, config) for frame in frames]
    total = np.sum(weights, axis=0)
    levels = int(np.log2(max(2, min(first.shape[:2])))) + 1  # full depth: the coarsest level a few pixels
    scale = np.float32(1.0 / data_range(first))
    fused = None
    for frame, weight in zip(frames, weights):
        bands = _pyramid(frame.astype(np.float32) * scale, levels)
        weight_pyramid = [weight / total]
        for _ in range(levels - 1):
            weight_pyramid.append(cv2.pyrDown(weight_pyramid[-1]))
        terms = [b * (w[:, :, None] if b.ndim == 3 else w) for b, w in zip(bands, weight_pyramid)]
        fused = terms if fused is None else [a + t for a, t in zip(fused, terms)]
    image = np.clip(_collapse(fused), 0.0, 1.0) * np.float32(data_range(first))
    return _to_dtype(image, first.dtype)


def _to_dtype(image, dtype):
    if np.dtype(dtype).kind == "f":
        return image.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(image), info.min, info.max).astype(dtype)


def fuse(frames, mode, config=None, names=None):
    """Fuse a list of aligned frames: (image, depth map or None)."""
    if mode not in FUSE_MODES or mode == "none":
        raise StackError(f"unknown fusion {mode!r}; use one of {', '.join(m for m in FUSE_MODES if m != 'none')}")
    if len(frames) < 2:
        raise StackError(f"fusion needs at least two aligned frames, got {len(frames)}")
    if mode == "exposure":
        return exposure_fusion(frames, names, config), None
    fusion = FocusFusion(config)
    for k, frame in enumerate(frames):
        fusion.add(frame, names[k] if names else f"frame {k}")
    return fusion.result()


def fused_name(mode, suffix, taken=()):
    """File name of the fused image ("fused_focus.jpg"), not one of `taken`."""
    name = f"fused_{mode}{suffix}"
    while name in taken:
        name = "_" + name
    return name


def fuse_files(paths, mode, output, config=None):
    """Fuse aligned images (same size and dtype) read from `paths` into `output` (its format from its suffix;
    JPEG keeps the first image's EXIF). Returns the output path."""
    paths = [Path(p) for p in paths]
    frames = [read_image(p) for p in paths]
    image, _ = fuse(frames, mode, config, [p.name for p in paths])
    write_output(paths[0], Path(output), image, None, None, (config or FusionConfig()).jpeg_quality)
    return Path(output)


class StackFusion:
    """The stack job's fusion (core.stack): collects the aligned, cropped frames while they are written
    (focus: streamed) and writes the fused image beside them; `mode` is one of FUSE_MODES."""

    def __init__(self, mode, names, ref_index, jpeg_quality=95):
        self.mode, self.names, self.ref_index, self.jpeg_quality = mode, names, ref_index, jpeg_quality
        self.focus = FocusFusion() if mode == "focus" else None
        self.frames, self.used = [], []
        self.seconds = 0.0

    def add(self, k, frame):
        if self.mode == "none":
            return
        t0 = time.perf_counter()
        self.used.append(k)
        if self.focus is not None:
            self.focus.add(frame, self.names[k])
        else:
            self.frames.append(frame)
        self.seconds += time.perf_counter() - t0

    def write(self, output_folder, reference_path, georef, crop, taken):
        """Write the fused image (and the focus depth map); the transforms.json keys that describe them."""
        info = {"fuse": self.mode, "fused": None, "fused_from": [self.names[k] for k in self.used]}
        left_out = [n for k, n in enumerate(self.names) if k not in self.used]
        if left_out:
            info["fused_without"] = left_out  # rejected or unreadable: not part of the fused image
        if len(self.used) < 2:
            info["fused_note"] = (f"nothing fused: {len(self.used)} aligned frame(s) (the reference "
                                  f"{self.names[self.ref_index]}); fusion needs two or more")
            return info
        if self.focus is not None:
            image, depth = self.focus.result()
        else:
            image, depth = exposure_fusion(self.frames, [self.names[k] for k in self.used]), None
        info["fused"] = fused_name(self.mode, reference_path.suffix, taken)
        write_output(reference_path, output_folder / info["fused"], image, georef, crop, self.jpeg_quality)
        if depth is not None:
            # the index into fused_from of the sharpest frame at each pixel, lossless (GeoTIFF beside GeoTIFFs)
            info["fused_depth"] = fused_name("depth", ".tif" if georef else ".png", taken)
            write_output(reference_path, output_folder / info["fused_depth"], depth, georef, crop,
                         self.jpeg_quality)
        if left_out:
            info["fused_note"] = f"fused from {len(self.used)} aligned frames; left out: {', '.join(left_out)}"
        return info
