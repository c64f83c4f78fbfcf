"""Tissue masks and kept tiles against the ground truth of synthetic slides."""
from __future__ import annotations

import numpy as np
import pytest
from openslide.deepzoom import DeepZoomGenerator

from wsi_mil.errors import ConfigError, NoTissueError
from wsi_mil.slides import open_slide
from wsi_mil.testing.synthetic_slides import true_tissue_fraction, write_synthetic_slide
from wsi_mil.tiling.lowres import read_lowres
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tile import tile_slide
from wsi_mil.tiling.tissue import (
    TissueParams,
    list_tissue_detectors,
    make_tissue_mask,
    saturation,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("tissue")
    return [write_synthetic_slide(root / f"s{seed}.svs", width=4096, height=3072, seed=seed,
                                  tumor_fraction=0.25, flavor=("aperio", "generic")[seed % 2])
            for seed in range(3)]


def test_saturation_is_zero_for_greys_and_max_for_pure_colours():
    rgb = np.array([[[0, 0, 0], [128, 128, 128], [255, 0, 0], [200, 100, 100]]], np.uint8)
    assert saturation(rgb).tolist() == [[0, 0, 255, 127]]


def test_blank_image_has_no_tissue(rng):
    rgb = (245 + rng.normal(0, 2, (200, 300, 3))).clip(0, 255).astype(np.uint8)
    for method in list_tissue_detectors():
        assert not make_tissue_mask(rgb, TissueParams(method=method), 8.0).any()


def test_black_and_white_artefacts_are_not_tissue():
    rgb = np.full((100, 100, 3), 250, np.uint8)
    rgb[10:40, 10:40] = (5, 5, 20)         # black (slightly blue) border / pen
    rgb[50:90, 50:90] = (230, 150, 200)    # pink tissue
    mask = make_tissue_mask(rgb, TissueParams(), 8.0)
    assert not mask[10:40, 10:40].any()
    assert mask[55:85, 55:85].all()


def test_small_specks_are_removed_and_small_holes_filled():
    rgb = np.full((200, 200, 3), 250, np.uint8)
    rgb[20:120, 20:120] = (230, 150, 200)
    rgb[60:64, 60:64] = 250                  # 4x4 px hole = 1024 um^2 at 8 um/px
    rgb[170:173, 170:173] = (230, 150, 200)  # 3x3 px speck
    mask = make_tissue_mask(rgb, TissueParams(opening_um=0, closing_um=0), 8.0)
    assert mask[60:64, 60:64].all()
    assert not mask[165:180, 165:180].any()


def test_invalid_tissue_params_name_the_bad_value():
    with pytest.raises(ConfigError, match="unknown"):
        TissueParams(method="magic")
    with pytest.raises(ConfigError, match="min_saturation"):
        TissueParams(min_saturation=2.0)


def test_mask_agrees_with_the_true_tissue_mask(synthetic):
    for slide in synthetic:
        with open_slide(slide.path) as reader:
            low = read_lowres(reader, 8.0)
            mask = make_tissue_mask(low.rgb, TissueParams(), low.mpp)
        # ground truth on the mask grid (nearest)
        ys = ((np.arange(mask.shape[0]) + 0.5) * low.downsample_xy[1] / slide.mask_downsample)
        xs = ((np.arange(mask.shape[1]) + 0.5) * low.downsample_xy[0] / slide.mask_downsample)
        truth = slide.tissue_mask[ys.astype(int)[:, None].clip(0, slide.tissue_mask.shape[0] - 1),
                                  xs.astype(int)[None, :].clip(0, slide.tissue_mask.shape[1] - 1)]
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.95


@pytest.mark.parametrize("tile_size, min_tissue", [(224, 0.5), (96, 0.5), (224, 0.9)])
def test_kept_tiles_cover_95_percent_of_true_tissue_tiles_and_no_background(
        synthetic, tile_size, min_tissue):
    params = TilingParams(target_mpp=0.5, tile_size=tile_size, min_tissue=min_tissue)
    n_should = n_found = 0  # over all slides
    for slide in synthetic:
        with open_slide(slide.path) as reader:
            result = tile_slide(reader, params)
            grid = result.grid
            dz = DeepZoomGenerator(reader.osr, tile_size, overlap=0, limit_bounds=False)
            cols, rows = grid.level_tiles
            cc, rr = np.meshgrid(np.arange(cols), np.arange(rows))
            full = ((cc + 1) * tile_size * grid.downsample <= slide.dimensions[0]) & \
                   ((rr + 1) * tile_size * grid.downsample <= slide.dimensions[1])
            all_xy = np.stack([cc[full], rr[full]], 1) * grid.tile_extent_level0
            truth = true_tissue_fraction(slide, all_xy, grid.tile_extent_level0)
            should = {tuple(xy) for xy in all_xy[truth >= min_tissue]}
            kept = {tuple(xy) for xy in grid.coords_level0}
            assert should, "the slide must have tissue tiles"
            n_should, n_found = n_should + len(should), n_found + len(should & kept)
            kept_truth = true_tissue_fraction(slide, grid.coords_level0, grid.tile_extent_level0)
            assert (kept_truth > 0).all()
            for level, col, row in grid.coords[:: max(1, len(grid) // 25)]:
                tile = np.asarray(dz.get_tile(int(level), (int(col), int(row))))
                assert (saturation(tile) > 40).mean() > 0.05  # stained pixels, not background
    assert n_found >= 0.95 * n_should


def test_slide_without_tissue_raises_no_tissue_error(tmp_path):
    slide = write_synthetic_slide(tmp_path / "blank.svs", width=2048, height=2048, tissue=False)
    with open_slide(slide.path) as reader, pytest.raises(NoTissueError, match="no tile"):
        tile_slide(reader, TilingParams())
