"""Tile one slide: low-resolution image -> tissue mask -> DeepZoom grid -> coords attrs."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
from loguru import logger

from wsi_mil.errors import NoTissueError
from wsi_mil.slides.base import SlideReader
from wsi_mil.tiling.grid import TileGrid, make_tile_grid
from wsi_mil.tiling.lowres import LowResImage, read_lowres
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tissue import make_tissue_mask
from wsi_mil.version import __version__


@dataclass
class SlideTiling:
    """Result of :func:`tile_slide`: the kept tiles, the mask and its image, coords attrs.

    ``mask`` (h, w) bool is aligned with ``lowres.rgb``; ``seconds`` = wall time of
    the mask + grid computation.
    """

    slide_id: str
    grid: TileGrid
    mask: np.ndarray
    lowres: LowResImage
    attrs: dict = field(default_factory=dict)
    seconds: float = 0.0


def coords_attrs(reader: SlideReader, grid: TileGrid, params: TilingParams,
                 mpp_override: float | None) -> dict:
    """The attributes stored in a coords file (see :mod:`wsi_mil.io.coords`)."""
    return {
        "slide_id": reader.slide_id,
        "slide_path": str(reader.path),
        "tile_size": grid.tile_size,
        "target_mpp": float(params.target_mpp),
        "slide_mpp": float(reader.mpp),
        "mpp_source": reader.mpp_source,
        "mpp_override": float("nan") if mpp_override is None else float(mpp_override),
        "dz_level": grid.dz_level,
        "dz_mpp": float(grid.dz_mpp),
        "downsample": grid.downsample,
        "read_level": grid.read_level,
        "overlap": 0,
        "limit_bounds": False,
        "min_tissue": float(params.min_tissue),
        "mpp_tolerance": float(params.mpp_tolerance),
        "full_tiles_only": bool(params.full_tiles_only),
        "tissue_params": json.dumps(params.tissue.to_dict(), sort_keys=True),
        "tiling_params": params.to_json(),
        "slide_width": int(reader.dimensions[0]),
        "slide_height": int(reader.dimensions[1]),
        "level_count": int(reader.level_count),
        "quickhash": reader.quickhash,
        "backend": reader.backend,
        "wsi_mil_version": __version__,
        "n_tiles": len(grid),
    }


def tile_slide(reader: SlideReader, params: TilingParams,
               mpp_override: float | None = None) -> SlideTiling:
    """Tissue mask and kept DeepZoom tiles of an open slide.

    Raises :class:`NoTissueError` when no tile reaches ``params.min_tissue`` and
    :class:`ResolutionError` when no DeepZoom level matches ``params.target_mpp``.
    """
    start = time.perf_counter()
    lowres = read_lowres(reader, params.tissue.mask_mpp)
    mask = make_tissue_mask(lowres.rgb, params.tissue, lowres.mpp)
    grid = make_tile_grid(mask, lowres.downsample_xy, reader.dimensions, reader.mpp,
                          reader.level_downsamples, reader.get_best_level_for_downsample,
                          params.target_mpp, params.tile_size, params.mpp_tolerance,
                          params.min_tissue, params.full_tiles_only)
    seconds = time.perf_counter() - start
    if len(grid) == 0:
        raise NoTissueError(
            f"{reader.slide_id}: no tile with tissue fraction >= {params.min_tissue} "
            f"({mask.mean():.2%} of the slide detected as tissue, {grid.n_candidates} "
            f"candidate tiles at dz level {grid.dz_level})")
    logger.debug("{}: {} / {} tiles kept at dz level {} ({:.3f} um/px), mask {}x{} from "
                 "level {} in {:.2f}s", reader.slide_id, len(grid), grid.n_candidates,
                 grid.dz_level, grid.dz_mpp, mask.shape[1], mask.shape[0], lowres.level,
                 seconds)
    return SlideTiling(reader.slide_id, grid, mask, lowres,
                       coords_attrs(reader, grid, params, mpp_override), seconds)
