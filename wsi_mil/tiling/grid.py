"""The DeepZoom tile grid of a slide and the tissue fraction of every tile (vectorised).

Semantics are exactly those of ``openslide.deepzoom.DeepZoomGenerator(osr, tile_size,
overlap=0, limit_bounds=False)``: DeepZoom level ``L`` has the level-0 dimensions
halved (rounding up) ``max_level - L`` times, so its resolution is
``slide_mpp * 2 ** (max_level - L)`` um/px; tile ``(col, row)`` of level ``L`` starts at
DeepZoom pixel ``(col * tile_size, row * tile_size)``. Level-0 origins are computed
with the generator's own floating-point steps, so they match
``DeepZoomGenerator.get_tile_coordinates`` bit for bit.

The level whose resolution is closest to ``target_mpp`` is used if it is within the
relative tolerance ``|level_mpp - target_mpp| / target_mpp <= mpp_tolerance``
(default 0.1, i.e. 0.45-0.55 um/px for 0.5); otherwise :class:`ResolutionError`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wsi_mil.errors import ResolutionError


def deepzoom_level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) px of every DeepZoom level, index = dz level (0 = 1 x 1 px)."""
    size = (int(width), int(height))
    dims = [size]
    while size[0] > 1 or size[1] > 1:
        size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
        dims.append(size)
    return dims[::-1]


def deepzoom_level_mpps(width: int, height: int, slide_mpp: float) -> list[float]:
    """um/px of every DeepZoom level (index = dz level)."""
    n = len(deepzoom_level_dimensions(width, height))
    return [slide_mpp * 2 ** (n - 1 - level) for level in range(n)]


def select_dz_level(width: int, height: int, slide_mpp: float, target_mpp: float,
                    mpp_tolerance: float) -> int:
    """The DeepZoom level closest to ``target_mpp`` (um/px) within the relative tolerance."""
    mpps = deepzoom_level_mpps(width, height, slide_mpp)
    errors = [abs(m - target_mpp) / target_mpp for m in mpps]
    best = int(np.argmin(errors))
    if errors[best] > mpp_tolerance:
        shown = ", ".join(f"level {lv}: {m:.3g}" for lv, m in enumerate(mpps)
                          if m <= 64 * max(target_mpp, slide_mpp))
        raise ResolutionError(
            f"no DeepZoom level within {mpp_tolerance:.0%} of target_mpp={target_mpp} um/px "
            f"(slide mpp {slide_mpp:.4g}); available um/px: {shown}. Choose one of these as "
            "target_mpp, raise mpp_tolerance, or check the slide's mpp.")
    return best


def deepzoom_origins_level0(index: np.ndarray, tile_size: int, dz_downsample: int,
                            level_downsample: float) -> np.ndarray:
    """Level-0 px of tile starts along one axis, as ``DeepZoomGenerator._get_tile_info``.

    ``index``: tile cols (or rows); ``dz_downsample``: level-0 px per DeepZoom px (2**k);
    ``level_downsample``: downsample of the slide level the generator reads from.
    """
    l_z_downsample = dz_downsample / level_downsample  # float, as in the generator
    z = np.asarray(index, dtype=np.int64) * int(tile_size)
    level_px = l_z_downsample * z.astype(np.float64)
    return np.trunc(level_downsample * level_px).astype(np.int64)


def _mask_index(edges_level0: np.ndarray, downsample: float) -> np.ndarray:
    """Mask pixel index of level-0 edges: a pixel counts when its centre is inside."""
    return np.ceil(edges_level0 / downsample - 0.5).astype(np.int64)


def tissue_fraction_grid(mask: np.ndarray, mask_downsample_xy: tuple[float, float],
                         x_edges: tuple[np.ndarray, np.ndarray],
                         y_edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Tissue fraction (rows, cols) of the tiles spanned by level-0 edges, from a bool mask.

    ``x_edges``: (start, end) level-0 px per column; ``y_edges``: same per row. A tile
    counts the mask pixels whose centres fall inside it (at least one pixel), using an
    integral image, so the cost is O(mask + tiles) with no per-tile loop.
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def bounds(edges: tuple[np.ndarray, np.ndarray], ds: float, n: int):
        i0 = np.clip(_mask_index(edges[0], ds), 0, n - 1)
        i1 = np.clip(_mask_index(edges[1], ds), i0 + 1, n)
        return i0, i1

    c0, c1 = bounds(x_edges, mask_downsample_xy[0], w)
    r0, r1 = bounds(y_edges, mask_downsample_xy[1], h)
    sums = (integral[r1[:, None], c1[None, :]] - integral[r0[:, None], c1[None, :]]
            - integral[r1[:, None], c0[None, :]] + integral[r0[:, None], c0[None, :]])
    counts = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return sums / counts


@dataclass
class TileGrid:
    """Kept tiles of one slide.

    ``coords`` (N, 3) int64 (dz_level, col, row); ``coords_level0`` (N, 2) int64 level-0
    (x, y); ``tissue_fraction`` (N,) float; ``dz_level``; ``dz_mpp`` (um/px of the dz
    level); ``downsample`` (level-0 px per output px, 2**k); ``read_level`` (slide level
    the generator reads); ``tile_size`` (px); ``level_tiles`` (cols, rows) of the dz level;
    ``n_candidates`` tiles considered (full ones only if ``full_tiles_only``).
    """

    coords: np.ndarray
    coords_level0: np.ndarray
    tissue_fraction: np.ndarray
    dz_level: int
    dz_mpp: float
    downsample: int
    read_level: int
    tile_size: int
    level_tiles: tuple[int, int]
    n_candidates: int

    @property
    def tile_extent_level0(self) -> int:
        """Side of a full tile in level-0 px."""
        return self.tile_size * self.downsample

    def __len__(self) -> int:
        return len(self.coords)


def make_tile_grid(mask: np.ndarray, mask_downsample_xy: tuple[float, float],
                   dimensions: tuple[int, int], slide_mpp: float,
                   level_downsamples: Sequence[float],
                   best_level_for_downsample: Callable[[float], int], target_mpp: float,
                   tile_size: int, mpp_tolerance: float = 0.1, min_tissue: float = 0.5,
                   full_tiles_only: bool = True) -> TileGrid:
    """The DeepZoom tiles of the level matching ``target_mpp`` whose tissue fraction
    (from ``mask``, one pixel = ``mask_downsample_xy`` level-0 px) is >= ``min_tissue``.

    Tiles are in row-major order (row, then col). ``best_level_for_downsample`` is the
    reader's (OpenSlide's) rule, needed to reproduce the generator's origins.
    """
    width, height = int(dimensions[0]), int(dimensions[1])
    dz_dims = deepzoom_level_dimensions(width, height)
    dz_level = select_dz_level(width, height, slide_mpp, target_mpp, mpp_tolerance)
    dz_ds = 2 ** (len(dz_dims) - 1 - dz_level)
    z_w, z_h = dz_dims[dz_level]
    n_cols, n_rows = math.ceil(z_w / tile_size), math.ceil(z_h / tile_size)
    read_level = int(best_level_for_downsample(dz_ds))
    level_ds = float(level_downsamples[read_level])

    cols, rows = np.arange(n_cols), np.arange(n_rows)
    x0 = deepzoom_origins_level0(cols, tile_size, dz_ds, level_ds)
    y0 = deepzoom_origins_level0(rows, tile_size, dz_ds, level_ds)
    w_dz = np.minimum(tile_size, z_w - cols * tile_size)  # tile width in dz px
    h_dz = np.minimum(tile_size, z_h - rows * tile_size)
    x1 = np.minimum(x0 + w_dz * dz_ds, width)
    y1 = np.minimum(y0 + h_dz * dz_ds, height)
    fraction = tissue_fraction_grid(mask, mask_downsample_xy, (x0, x1), (y0, y1))
    candidate = np.ones((n_rows, n_cols), bool)
    if full_tiles_only:
        candidate = (h_dz == tile_size)[:, None] & (w_dz == tile_size)[None, :]
    keep = candidate & (fraction >= min_tissue)
    r_idx, c_idx = np.nonzero(keep)
    coords = np.stack([np.full_like(r_idx, dz_level), c_idx, r_idx], axis=1).astype(np.int64)
    coords_level0 = np.stack([x0[c_idx], y0[r_idx]], axis=1).astype(np.int64)
    return TileGrid(coords.reshape(-1, 3), coords_level0.reshape(-1, 2),
                    fraction[r_idx, c_idx].astype(np.float64), dz_level, slide_mpp * dz_ds,
                    dz_ds, read_level, int(tile_size), (n_cols, n_rows), int(candidate.sum()))
