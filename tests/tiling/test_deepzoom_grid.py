"""The DeepZoom grid: level choice, origins identical to DeepZoomGenerator, tissue fractions."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator

from wsi_mil.errors import ResolutionError
from wsi_mil.slides import open_slide
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling.grid import (
    deepzoom_level_dimensions,
    deepzoom_level_mpps,
    make_tile_grid,
    select_dz_level,
    tissue_fraction_grid,
)
from wsi_mil.tiling.lowres import read_lowres
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tile import tile_slide
from wsi_mil.tiling.tissue import make_tissue_mask


class _GeometryOnly(openslide.AbstractSlide):
    """A single-level slide with geometry and no pixels (what DeepZoomGenerator reads)."""

    def __init__(self, size):
        self._size = size

    dimensions = property(lambda self: self._size)
    level_count = property(lambda self: 1)
    level_dimensions = property(lambda self: (self._size,))
    level_downsamples = property(lambda self: (1.0,))
    properties = property(lambda self: {})
    associated_images = property(lambda self: {})

    def get_best_level_for_downsample(self, downsample):
        return 0

    @classmethod
    def detect_format(cls, filename):
        return None

    def read_region(self, location, level, size):
        raise NotImplementedError

    def close(self):
        pass


@pytest.mark.parametrize("size", [(1, 1), (2220, 2967), (1001, 333), (4097, 3), (40000, 30000)])
def test_level_dimensions_equal_deepzoom_generator(size):
    dz = DeepZoomGenerator(_GeometryOnly(size), 224, overlap=0, limit_bounds=False)
    assert deepzoom_level_dimensions(*size) == [tuple(d) for d in dz.level_dimensions]


def test_40x_slide_picks_the_20x_level_for_half_a_micron():
    dims = deepzoom_level_dimensions(40000, 30000)
    max_level = len(dims) - 1
    assert select_dz_level(40000, 30000, 0.25, 0.5, 0.1) == max_level - 1
    assert select_dz_level(40000, 30000, 0.25, 0.25, 0.1) == max_level
    assert select_dz_level(40000, 30000, 0.25, 1.0, 0.1) == max_level - 2


def test_slightly_off_mpp_is_accepted_within_the_relative_tolerance():
    assert select_dz_level(2220, 2967, 0.499, 0.5, 0.1) == 12
    assert deepzoom_level_mpps(2220, 2967, 0.499)[12] == pytest.approx(0.499)


def test_no_level_within_tolerance_raises_resolution_error_listing_mpps():
    with pytest.raises(ResolutionError, match=r"available um/px: .*0\.5.*1"):
        select_dz_level(40000, 30000, 0.25, 0.7, 0.1)


def test_tissue_fraction_grid_equals_a_naive_loop(rng):
    mask = rng.random((37, 53)) > 0.6
    ds = (7.3, 6.1)
    x0 = np.arange(0, 380, 20.0)
    y0 = np.arange(0, 220, 15.0)
    x1, y1 = np.minimum(x0 + 20, 53 * ds[0]), np.minimum(y0 + 15, 37 * ds[1])
    fast = tissue_fraction_grid(mask, ds, (x0, x1), (y0, y1))
    for r in range(len(y0)):
        for c in range(len(x0)):
            # pixel (i, j) counts when its centre lies in the tile (at least one pixel)
            cols = [j for j in range(53) if x0[c] <= (j + 0.5) * ds[0] < x1[c]]
            rows = [i for i in range(37) if y0[r] <= (i + 0.5) * ds[1] < y1[r]]
            if cols and rows:
                assert fast[r, c] == pytest.approx(mask[np.ix_(rows, cols)].mean())


def _naive_reference_count(mask, ds_xy, dz, dz_level, tile_size, min_tissue):
    """Visit every DeepZoom tile of the level; full tiles with enough tissue are counted."""
    count = 0
    cols, rows = dz.level_tiles[dz_level]
    for row in range(rows):
        for col in range(cols):
            (x, y), _, size = dz.get_tile_coordinates(dz_level, (col, row))
            if dz.get_tile_dimensions(dz_level, (col, row)) != (tile_size, tile_size):
                continue
            x1 = x + size[0] * 2 ** (dz.level_count - 1 - dz_level)
            y1 = y + size[1] * 2 ** (dz.level_count - 1 - dz_level)
            j0, j1 = (int(np.ceil(v / ds_xy[0] - 0.5)) for v in (x, x1))
            i0, i1 = (int(np.ceil(v / ds_xy[1] - 0.5)) for v in (y, y1))
            block = mask[max(i0, 0):max(i1, i0 + 1), max(j0, 0):max(j1, j0 + 1)]
            count += block.size > 0 and block.mean() >= min_tissue
    return count


@pytest.mark.parametrize("tile_size", [224, 100])
def test_real_slide_coords_match_deepzoom_and_the_reference_count(cmu_slide_path, tile_size):
    params = TilingParams(target_mpp=0.5, tile_size=tile_size)
    with open_slide(cmu_slide_path) as reader:
        result = tile_slide(reader, params)
        dz = DeepZoomGenerator(reader.osr, tile_size, overlap=0, limit_bounds=False)
        grid = result.grid
        assert grid.dz_level == dz.level_count - 1  # 0.499 um/px: the full-resolution level
        assert len(grid) > 10
        for (level, col, row), xy in zip(grid.coords, grid.coords_level0, strict=True):
            origin, read_level, _ = dz.get_tile_coordinates(int(level), (int(col), int(row)))
            assert origin == tuple(xy)
            assert read_level == grid.read_level
        expected = _naive_reference_count(result.mask, result.lowres.downsample_xy, dz,
                                          grid.dz_level, tile_size, params.min_tissue)
    assert len(grid) == expected


def test_coords_match_deepzoom_on_a_multi_level_40x_slide(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.svs", width=5000, height=3001, tile_px=128)
    with open_slide(slide.path) as reader:
        result = tile_slide(reader, TilingParams(target_mpp=0.5, tile_size=224, min_tissue=0.2))
        dz = DeepZoomGenerator(reader.osr, 224, overlap=0, limit_bounds=False)
        assert result.grid.dz_level == dz.level_count - 2  # 20x level of a 40x slide
        assert result.grid.read_level == 1
        for (level, col, row), xy in zip(result.grid.coords, result.grid.coords_level0, strict=True):
            assert dz.get_tile_coordinates(int(level), (int(col), int(row)))[0] == tuple(xy)
            assert dz.get_tile_dimensions(int(level), (int(col), int(row))) == (224, 224)


def test_partial_edge_tiles_are_kept_only_when_asked(cmu_slide_path):
    with open_slide(cmu_slide_path) as reader:
        low = read_lowres(reader, 8.0)
        mask = np.ones(low.rgb.shape[:2], bool)
        args = (mask, low.downsample_xy, reader.dimensions, reader.mpp,
                reader.level_downsamples, reader.get_best_level_for_downsample, 0.5, 224)
        full = make_tile_grid(*args, min_tissue=0.0, full_tiles_only=True)
        every = make_tile_grid(*args, min_tissue=0.0, full_tiles_only=False)
    assert len(full) == (2220 // 224) * (2967 // 224)
    assert len(every) == int(np.ceil(2220 / 224) * np.ceil(2967 / 224))


def test_grid_rows_are_in_row_major_order_with_the_dz_level_in_column_0(cmu_slide_path):
    with open_slide(cmu_slide_path) as reader:
        low = read_lowres(reader, 8.0)
        mask = make_tissue_mask(low.rgb, TilingParams().tissue, low.mpp)
        grid = make_tile_grid(mask, low.downsample_xy, reader.dimensions, reader.mpp,
                              reader.level_downsamples, reader.get_best_level_for_downsample,
                              0.5, 224)
    assert grid.coords.dtype == np.int64 and grid.coords_level0.dtype == np.int64
    assert (grid.coords[:, 0] == grid.dz_level).all()
    order = np.lexsort((grid.coords[:, 1], grid.coords[:, 2]))
    assert (order == np.arange(len(order))).all()
