"""open_slide, the OpenSlide backend and the mpp rules."""
from __future__ import annotations

import numpy as np
import pytest

from wsi_mil.errors import MissingMppError, RegistryError, SlideReadError
from wsi_mil.slides import OpenSlideReader, SlideReader, list_readers, open_slide
from wsi_mil.slides.mpp import mpp_from_properties, resolve_mpp
from wsi_mil.testing.synthetic_slides import write_synthetic_slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    small = dict(width=2048, height=1536)
    return {
        "aperio": write_synthetic_slide(root / "a.svs", flavor="aperio", **small).path,
        "generic": write_synthetic_slide(root / "g.tif", flavor="generic", mpp=0.5, **small).path,
        "no_mpp": write_synthetic_slide(root / "n.tif", flavor="generic", with_mpp=False,
                                        **small).path,
    }


def test_real_aperio_slide_reports_its_mpp_dimensions_and_hash(cmu_slide_path):
    with open_slide(cmu_slide_path) as slide:
        assert isinstance(slide, OpenSlideReader) and isinstance(slide, SlideReader)
        assert slide.slide_id == "CMU-1-Small-Region"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "openslide.mpp-x"
        assert slide.vendor == "aperio"
        assert len(slide.quickhash) == 64


def test_read_region_returns_rgb_uint8_of_the_requested_size(cmu_slide_path):
    with open_slide(cmu_slide_path) as slide:
        region = slide.read_region((100, 200), 0, (64, 32))
        thumb = slide.get_thumbnail((128, 128))
    assert region.shape == (32, 64, 3) and region.dtype == np.uint8
    assert max(thumb.shape[:2]) == 128 and thumb.shape[2] == 3


def test_region_outside_the_slide_is_filled_with_the_background_colour(cmu_slide_path):
    with open_slide(cmu_slide_path) as slide:
        region = slide.read_region((2220 - 8, 0), 0, (16, 16))
    assert (region[:, 8:] == 255).all()


def test_generic_tiff_mpp_comes_from_the_resolution_tags(slides):
    with open_slide(slides["generic"]) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.mpp == pytest.approx(0.5)


def test_slide_without_mpp_raises_missing_mpp_error_explaining_the_fix(slides):
    with pytest.raises(MissingMppError, match="mpp_override.*`mpp` column.*mpp="):
        open_slide(slides["no_mpp"])


def test_mpp_override_wins_and_is_recorded_as_the_source(slides):
    with open_slide(slides["no_mpp"], mpp_override=0.3) as slide:
        assert slide.mpp == 0.3 and slide.mpp_source == "override"
    with open_slide(slides["aperio"], mpp_override=0.26) as slide:
        assert slide.mpp == 0.26


def test_non_positive_override_is_rejected():
    with pytest.raises(MissingMppError, match="> 0"):
        resolve_mpp({}, -1.0, "x.svs")


def test_nan_override_means_not_given():
    assert resolve_mpp({"openslide.mpp-x": "0.25"}, float("nan"), "x") == (0.25, "openslide.mpp-x")


@pytest.mark.parametrize("unit, per_unit, expected", [
    ("centimeter", "40000", 0.25), ("inch", "101600", 0.25), ("centimeter", "20000", 0.5)])
def test_tiff_resolution_tags_give_mpp_in_centimeter_or_inch(unit, per_unit, expected):
    mpp, source = mpp_from_properties({"tiff.XResolution": per_unit, "tiff.ResolutionUnit": unit})
    assert mpp == pytest.approx(expected) and source.startswith("tiff.XResolution")


@pytest.mark.parametrize("props", [
    {"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"},
    {"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"},   # image editor default
    {"openslide.mpp-x": "0"},
    {"tiff.ResolutionUnit": "inch"},
    {},
])
def test_missing_unitless_or_implausible_resolution_is_not_guessed(props):
    assert mpp_from_properties(props) is None


def test_text_file_named_svs_is_a_slide_read_error(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("not a slide\n")
    with pytest.raises(SlideReadError, match="not a slide file"):
        open_slide(path)


def test_truncated_slide_is_a_slide_read_error_that_says_truncated(tmp_path, slides):
    data = slides["aperio"].read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="truncated"):
        open_slide(path)


def test_missing_file_is_a_slide_read_error(tmp_path):
    with pytest.raises(SlideReadError, match="not found"):
        open_slide(tmp_path / "absent.svs")


def test_unknown_backend_lists_the_registered_readers(cmu_slide_path):
    assert "openslide" in list_readers()
    with pytest.raises(RegistryError, match="openslide"):
        open_slide(cmu_slide_path, backend="nope")


def test_best_level_rule_of_the_interface_matches_openslide(slides):
    with open_slide(slides["aperio"]) as slide:
        for ds in (0.5, 1, 1.5, 2, 3.9, 4, 7, 100):
            assert SlideReader.get_best_level_for_downsample(slide, ds) == \
                slide.get_best_level_for_downsample(ds)


def test_a_valid_strip_tiff_is_named_as_such_not_as_truncated(tmp_path):
    import tifffile

    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.zeros((300, 400, 3), np.uint8), photometric="rgb")
    with pytest.raises(SlideReadError, match=r"strip \(untiled\) TIFF of 400 x 300 px.*backend=pil"):
        open_slide(path, mpp_override=0.5)
    path.write_bytes(path.read_bytes()[:100])  # now really truncated
    with pytest.raises(SlideReadError, match="truncated or corrupt"):
        open_slide(path, mpp_override=0.5)
