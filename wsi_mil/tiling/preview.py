"""Tiling preview: low-resolution slide image, tissue contour (green), kept tiles (blue)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from wsi_mil.tiling.grid import TileGrid

CONTOUR_RGB = (0, 200, 0)
TILE_RGB = (30, 60, 230)


def make_preview(rgb: np.ndarray, mask: np.ndarray, grid: TileGrid,
                 downsample_xy: tuple[float, float], max_px: int = 1024) -> Image.Image:
    """A PIL RGB preview at most ``max_px`` on its long side.

    ``rgb`` (h, w, 3) uint8 and ``mask`` (h, w) bool share one grid whose pixel is
    ``downsample_xy`` level-0 px; tile outlines come from ``grid.coords_level0``.
    """
    h, w = rgb.shape[:2]
    scale = min(1.0, max_px / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = Image.fromarray(rgb).resize(size, Image.BILINEAR) if scale < 1 else \
        Image.fromarray(rgb.copy())
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    contour = small & ~ndimage.binary_erosion(small, np.ones((3, 3), bool), border_value=0)
    pixels = np.array(image)
    pixels[contour] = CONTOUR_RGB
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    # preview px per level-0 px, per axis
    sx, sy = size[0] / (w * downsample_xy[0]), size[1] / (h * downsample_xy[1])
    ext = grid.tile_extent_level0
    boxes = np.column_stack([grid.coords_level0[:, 0] * sx, grid.coords_level0[:, 1] * sy,
                             (grid.coords_level0[:, 0] + ext) * sx - 1,
                             (grid.coords_level0[:, 1] + ext) * sy - 1])
    for box in boxes.tolist():
        draw.rectangle(box, outline=TILE_RGB, width=1)
    return image
