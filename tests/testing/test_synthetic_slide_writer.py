"""The synthetic slide writer: OpenSlide opens both flavours with the stated geometry."""
from __future__ import annotations

import numpy as np
import openslide
import pytest

from wsi_mil.errors import ConfigError
from wsi_mil.testing.synthetic_slides import true_tissue_fraction, write_synthetic_slide
from wsi_mil.tiling.tissue import saturation


@pytest.mark.parametrize("flavor, vendor, suffix", [("aperio", "aperio", ".svs"),
                                                    ("generic", "generic-tiff", ".tif")])
def test_openslide_reads_both_flavours_with_their_mpp_and_dimensions(tmp_path, flavor, vendor,
                                                                      suffix):
    slide = write_synthetic_slide(tmp_path / f"s{suffix}", width=3000, height=2100, mpp=0.25,
                                  flavor=flavor, tile_px=128)
    osr = openslide.OpenSlide(str(slide.path))
    assert osr.properties["openslide.vendor"] == vendor
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert osr.dimensions == (3000, 2100) == slide.dimensions
    assert osr.level_dimensions == slide.level_dimensions
    assert osr.level_dimensions[1] == (1500, 1050)
    assert osr.level_dimensions[-1][0] < 1024
    assert osr.properties["openslide.level[0].tile-width"] == "128"
    if flavor == "aperio":
        assert osr.properties["aperio.AppMag"] == "40"


def test_without_mpp_no_flavour_reports_a_resolution(tmp_path):
    for flavor in ("aperio", "generic"):
        slide = write_synthetic_slide(tmp_path / f"{flavor}.tif", width=1024, height=1024,
                                      flavor=flavor, with_mpp=False)
        props = openslide.OpenSlide(str(slide.path)).properties
        assert "openslide.mpp-x" not in props


def test_masks_have_the_stated_downsample_and_tumour_lies_in_tissue(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.svs", width=2000, height=1000,
                                  tumor_fraction=0.3, mask_downsample=16)
    assert slide.tissue_mask.shape == (63, 125) and slide.tissue_mask.dtype == bool
    assert slide.tumor_mask.shape == slide.tissue_mask.shape
    assert not (slide.tumor_mask & ~slide.tissue_mask).any()
    assert slide.tumor_mask.sum() == pytest.approx(0.3 * slide.tissue_mask.sum(), rel=0.05)
    assert 0.1 < slide.tissue_mask.mean() < 0.7


def test_pixels_follow_the_masks_and_tumour_is_darker_and_denser(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.svs", width=2048, height=2048,
                                  tumor_fraction=0.3, seed=3)
    osr = openslide.OpenSlide(str(slide.path))
    image = np.asarray(osr.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    ds = slide.mask_downsample
    cells = image.reshape(2048 // ds, ds, 2048 // ds, ds, 3).transpose(0, 2, 1, 3, 4)
    sat = saturation(image).reshape(2048 // ds, ds, 2048 // ds, ds).mean(axis=(1, 3))
    inner = lambda m: m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)  # noqa: E731
    background = inner(~slide.tissue_mask)
    normal = inner(slide.tissue_mask & ~slide.tumor_mask)
    tumour = inner(slide.tumor_mask)
    assert sat[background].max() < 15
    assert sat[normal].min() > 40
    brightness = cells.mean(axis=(2, 3, 4))
    assert brightness[tumour].mean() < brightness[normal].mean() - 15
    dark = (cells.min(axis=4) < 90).mean(axis=(2, 3))  # share of nucleus-dark pixels
    assert dark[tumour].mean() > 2 * dark[normal].mean()


def test_same_seed_gives_the_same_slide(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.svs", width=1024, height=768, seed=5)
    b = write_synthetic_slide(tmp_path / "b.svs", width=1024, height=768, seed=5)
    assert (a.tissue_mask == b.tissue_mask).all()
    assert a.path.read_bytes() == b.path.read_bytes()


def test_true_tissue_fraction_weights_partial_mask_cells(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.svs", width=512, height=512, tissue=False)
    slide.tissue_mask[:] = False
    slide.tissue_mask[0, 0] = True  # level-0 px [0, 16) x [0, 16)
    frac = true_tissue_fraction(slide, np.array([[0, 0], [8, 8], [16, 0]]), 16)
    assert frac.tolist() == pytest.approx([1.0, 0.25, 0.0])


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match="flavor"):
        write_synthetic_slide(tmp_path / "x.tif", flavor="hamamatsu")
    with pytest.raises(ConfigError, match="tile_px"):
        write_synthetic_slide(tmp_path / "x.tif", tile_px=100)


@pytest.mark.slow
def test_large_slide_is_written_tile_by_tile_and_opens(tmp_path):
    slide = write_synthetic_slide(tmp_path / "big.svs", width=12000, height=9000,
                                  mask_downsample=32)
    osr = openslide.OpenSlide(str(slide.path))
    assert osr.dimensions == (12000, 9000)
    assert osr.level_count == 5  # down to 750 x 563 px
    assert slide.tissue_mask.shape == (282, 375)
