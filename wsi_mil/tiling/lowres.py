"""A low-resolution RGB image of the whole slide, read from the pyramid (not resampled).

The tissue mask and the preview are made from it. The pyramid level closest to
(and not coarser than) the wanted resolution is read in blocks and block-averaged
by an integer factor, so memory stays bounded even for a single-level slide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_mil.slides.base import SlideReader

BLOCK_PX = 4096  # side of the blocks read from the pyramid level (level px)


@dataclass
class LowResImage:
    """``rgb`` (h, w, 3) uint8 covering the whole slide; ``downsample_xy`` = level-0 px per
    pixel along x and y; ``mpp`` = um/px (x); ``level`` = pyramid level read;
    ``factor`` = extra block-averaging factor applied to that level."""

    rgb: np.ndarray
    downsample_xy: tuple[float, float]
    mpp: float
    level: int
    factor: int


def _block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of (H, W, 3) uint8 (pads with edge pixels)."""
    if factor == 1:
        return rgb
    h, w = rgb.shape[:2]
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = rgb.shape[0] // factor, rgb.shape[1] // factor
    out = rgb.reshape(hh, factor, ww, factor, 3).mean(axis=(1, 3), dtype=np.float32)
    return (out + 0.5).astype(np.uint8)


def read_lowres(reader: SlideReader, target_mpp: float) -> LowResImage:
    """The whole slide at about ``target_mpp`` um/px (never coarser than the pyramid allows
    by more than a factor 2), from the best pyramid level plus integer block-averaging."""
    want_ds = max(target_mpp / reader.mpp, 1.0)  # level-0 px per output px
    level = reader.get_best_level_for_downsample(want_ds)
    level_ds = float(reader.level_downsamples[level])
    factor = max(1, int(math.floor(want_ds / level_ds)))
    w_l, h_l = reader.level_dimensions[level]
    block = BLOCK_PX - BLOCK_PX % factor if factor <= BLOCK_PX else factor
    rows = []
    for y in range(0, h_l, block):
        row = []
        for x in range(0, w_l, block):
            size = (min(block, w_l - x), min(block, h_l - y))
            xy0 = (int(round(x * level_ds)), int(round(y * level_ds)))
            row.append(_block_mean(reader.read_region(xy0, level, size), factor))
        rows.append(np.concatenate(row, axis=1))
    rgb = np.concatenate(rows, axis=0)
    w0, h0 = reader.dimensions
    ds_xy = (w0 / w_l * factor, h0 / h_l * factor)  # the last pixel may overhang the slide
    return LowResImage(rgb, ds_xy, reader.mpp * ds_xy[0], level, factor)
