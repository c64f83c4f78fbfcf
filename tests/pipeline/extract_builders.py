"""Builders shared by the extraction tests: coords files for a slide, slide tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pandas as pd
from openslide.deepzoom import DeepZoomGenerator

from wsi_mil.io.coords import write_coords
from wsi_mil.io.paths import coords_path, tiling_name


def write_grid_coords(slide_path: Path, tiling_root: Path, slide_id: str, tile_size: int = 224,
                      dz_from_top: int = 0, max_tiles: int | None = None,
                      target_mpp: float = 0.5) -> Path:
    """Coords of every full tile of DeepZoom level ``level_count - 1 - dz_from_top``."""
    osr = openslide.OpenSlide(str(slide_path))
    dz = DeepZoomGenerator(osr, tile_size, 0, False)
    level = dz.level_count - 1 - dz_from_top
    cols, rows = dz.level_tiles[level]
    coords = np.array([(level, c, r) for r in range(rows) for c in range(cols)
                       if dz.get_tile_dimensions(level, (c, r)) == (tile_size, tile_size)],
                      dtype=np.int64)
    if max_tiles is not None:
        coords = coords[:max_tiles]
    ds = 2 ** dz_from_top
    level0 = coords[:, 1:] * tile_size * ds
    mpp = float(osr.properties.get("openslide.mpp-x", 0.25))
    path = coords_path(tiling_root, slide_id)
    write_coords(path, coords, level0, {
        "tile_size": tile_size, "target_mpp": target_mpp, "slide_mpp": mpp,
        "dz_level": level, "downsample": ds, "read_level": 0, "slide_path": str(slide_path),
    })
    osr.close()
    return path


def tiling_root_of(root: Path, target_mpp: float = 0.5, tile_size: int = 224) -> Path:
    return root / tiling_name(target_mpp, tile_size)


def slide_table(rows: list[tuple[str, Path]]) -> pd.DataFrame:
    return pd.DataFrame({"slide_id": [r[0] for r in rows], "path": [str(r[1]) for r in rows],
                         "mpp": [float("nan")] * len(rows)})
