"""Tissue masks and DeepZoom tile grids -> per-slide tile coordinates."""
from wsi_mil.tiling.grid import TileGrid, deepzoom_level_dimensions, make_tile_grid, select_dz_level
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tile import SlideTiling, tile_slide
from wsi_mil.tiling.tissue import (
    TISSUE_DETECTORS,
    TissueParams,
    list_tissue_detectors,
    make_tissue_mask,
)

__all__ = ["TISSUE_DETECTORS", "SlideTiling", "TileGrid", "TilingParams", "TissueParams",
           "deepzoom_level_dimensions", "list_tissue_detectors", "make_tile_grid",
           "make_tissue_mask", "select_dz_level", "tile_slide"]
