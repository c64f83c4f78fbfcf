"""Every registered slide reader honours the SlideReader contract."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_mil.errors import MissingMppError, SlideReadError
from wsi_mil.slides import SlideReader, list_readers, open_slide
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tile import tile_slide


def _make(backend: str, folder) -> tuple:
    if backend == "openslide":
        return write_synthetic_slide(folder / "s.svs", width=2048, height=1536, mpp=0.5).path, 0.5
    if backend == "pil":
        slide = write_synthetic_slide(folder / "s.svs", width=2048, height=1536, mpp=0.5)
        with open_slide(slide.path) as reader:
            rgb = reader.read_region((0, 0), 0, reader.dimensions)
        Image.fromarray(rgb).save(folder / "s.png", dpi=(50800, 50800))  # 0.5 um/px
        return folder / "s.png", 0.5
    raise AssertionError(f"add a sample file for the new reader {backend!r}")


@pytest.mark.parametrize("backend", list_readers())
def test_reader_contract(backend, tmp_path):
    path, mpp = _make(backend, tmp_path)
    with open_slide(path, backend=backend) as reader:
        assert isinstance(reader, SlideReader) and reader.backend == backend
        assert reader.slide_id == "s" and reader.dimensions == (2048, 1536)
        assert reader.mpp == pytest.approx(mpp, rel=1e-3)
        assert len(reader.level_dimensions) == len(reader.level_downsamples) == reader.level_count
        assert reader.level_dimensions[0] == reader.dimensions
        assert reader.level_downsamples[0] == 1.0
        region = reader.read_region((2040, 1530), 0, (16, 12))
        assert region.shape == (12, 16, 3) and region.dtype == np.uint8
        assert (region[6:, 8:] == 255).all()  # outside the slide: white background
        thumb = reader.get_thumbnail((256, 256))
        assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) == 256
        assert reader.get_best_level_for_downsample(1.0) == 0
        assert len(tile_slide(reader, TilingParams(tile_size=128)).grid) > 0
        assert repr(reader).startswith(type(reader).__name__)


def test_pil_reader_without_dpi_needs_an_override(tmp_path):
    Image.new("RGB", (64, 64), "white").save(tmp_path / "x.png")
    with pytest.raises(MissingMppError):
        open_slide(tmp_path / "x.png", backend="pil")
    with open_slide(tmp_path / "x.png", backend="pil", mpp_override=1.0) as reader:
        assert reader.mpp == 1.0
    (tmp_path / "y.png").write_text("nope")
    with pytest.raises(SlideReadError):
        open_slide(tmp_path / "y.png", backend="pil")
