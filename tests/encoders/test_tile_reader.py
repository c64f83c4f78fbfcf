"""The tile reader against DeepZoomGenerator.get_tile, and its decode-once promise."""
from __future__ import annotations

import os
import shutil
from collections import Counter

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator

from wsi_mil.encoders.tiff_direct import TiffLevelSource
from wsi_mil.encoders.tile_reader import (
    TileReader,
    _plan_loop,
    plan_tiles,
    read_order,
    verify_sample,
)
from wsi_mil.encoders.tile_stream import make_tile_loader, make_work_items
from wsi_mil.errors import ConfigError, CorruptTileError, SlideReadError, TileMismatchError
from wsi_mil.testing.faults import flip_tile_bytes, stored_tiles, truncate_tile_data
from wsi_mil.testing.synthetic_slides import write_synthetic_slide

TILE = 224
# Stated tolerance of resample="dct"/"box" vs get_tile (LANCZOS), in grey levels over all
# channels and pixels; measured: CMU 2x mean 1.20 / p99 11, synthetic 40x mean 0.31 / p99 3.
MEAN_TOL = 1.5
P99_TOL = 12


def _grid(path, from_top: int) -> tuple[np.ndarray, DeepZoomGenerator]:
    dz = DeepZoomGenerator(openslide.OpenSlide(str(path)), TILE, 0, False)
    level = dz.level_count - 1 - from_top
    cols, rows = dz.level_tiles[level]
    coords = np.array([(level, c, r) for r in range(rows) for c in range(cols)], np.int64)
    return coords, dz


def _diffs(tiles: np.ndarray, coords: np.ndarray, dz: DeepZoomGenerator) -> np.ndarray:
    out = []
    for tile, (level, col, row) in zip(tiles, coords, strict=True):
        ref = np.asarray(dz.get_tile(int(level), (int(col), int(row)))).astype(np.int16)
        out.append(np.abs(tile[:ref.shape[0], :ref.shape[1]].astype(np.int16) - ref).ravel())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def slide_40x_level0_only(tmp_path_factory):
    """A 40x Aperio-like slide with no 2x level: 20x tiles come from level 0 (like a 4x pyramid)."""
    path = tmp_path_factory.mktemp("syn") / "syn40x.svs"
    return write_synthetic_slide(path, width=2600, height=2000, mpp=0.25, n_levels=1, seed=1).path


@pytest.fixture(scope="module")
def slide_40x_pyramid(tmp_path_factory):
    path = tmp_path_factory.mktemp("synp") / "syn40x_pyr.svs"
    return write_synthetic_slide(path, width=2600, height=2000, mpp=0.25, seed=2).path


def test_native_resolution_tiles_are_identical_to_get_tile_on_the_cmu_slide(cmu_slide_path):
    coords, dz = _grid(cmu_slide_path, 0)
    with TileReader(cmu_slide_path, coords, TILE) as reader:
        tiles = reader.read_all()
        assert reader.decode_count > 0  # the direct TIFF decoder was used
    assert tiles.shape == (len(coords), TILE, TILE, 3)
    assert _diffs(tiles, coords, dz).max() == 0


@pytest.mark.parametrize("from_top", [1, 2])
def test_lanczos_resample_is_bit_identical_to_get_tile_when_shrinking(cmu_slide_path, from_top):
    coords, dz = _grid(cmu_slide_path, from_top)
    with TileReader(cmu_slide_path, coords, TILE, resample="lanczos") as reader:
        assert _diffs(reader.read_all(), coords, dz).max() == 0


@pytest.mark.parametrize("resample", ["dct", "box"])
def test_fast_resampling_agrees_with_get_tile_within_tolerance_on_the_cmu_slide(
        cmu_slide_path, resample):
    coords, dz = _grid(cmu_slide_path, 1)
    with TileReader(cmu_slide_path, coords, TILE, resample=resample) as reader:
        d = _diffs(reader.read_all(), coords, dz)
    assert d.mean() < MEAN_TOL and np.percentile(d, 99) <= P99_TOL


@pytest.mark.parametrize("resample", ["dct", "box", "lanczos"])
def test_fast_reader_agrees_with_get_tile_at_20x_on_a_40x_synthetic_slide(
        slide_40x_level0_only, resample):
    coords, dz = _grid(slide_40x_level0_only, 1)
    with TileReader(slide_40x_level0_only, coords, TILE, resample=resample) as reader:
        d = _diffs(reader.read_all(), coords, dz)
    assert d.mean() < MEAN_TOL and np.percentile(d, 99) <= P99_TOL
    if resample == "lanczos":
        assert d.max() == 0


def test_reading_a_stored_2x_level_is_exact_on_a_pyramidal_synthetic_slide(slide_40x_pyramid):
    coords, dz = _grid(slide_40x_pyramid, 1)
    with TileReader(slide_40x_pyramid, coords, TILE) as reader:
        assert _diffs(reader.read_all(), coords, dz).max() == 0


@pytest.mark.parametrize("from_top", [0, 1])
def test_exact_mode_is_bit_identical_to_get_tile(cmu_slide_path, from_top):
    coords, dz = _grid(cmu_slide_path, from_top)
    with TileReader(cmu_slide_path, coords, TILE, mode="exact") as reader:
        assert _diffs(reader.read_all(), coords, dz).max() == 0


@pytest.mark.parametrize("resample", ["dct", "lanczos"])
@pytest.mark.parametrize("which", ["cmu", "syn"])
def test_each_stored_tile_is_decoded_at_most_once(cmu_slide_path, slide_40x_level0_only,
                                                  monkeypatch, resample, which):
    path = cmu_slide_path if which == "cmu" else slide_40x_level0_only
    calls: Counter = Counter()
    original = TiffLevelSource.read_tile

    def counting(self, row, col, scale=1):
        calls[(row, col)] += 1
        return original(self, row, col, scale)

    monkeypatch.setattr(TiffLevelSource, "read_tile", counting)
    coords, _ = _grid(path, 1)
    with TileReader(path, coords, TILE, resample=resample) as reader:
        reader.read_all()
        src = reader._sources[0]
        n_stored = src.n_rows * src.n_cols
    assert calls and max(calls.values()) == 1
    assert len(calls) == n_stored  # the grid covers the slide: every stored tile, once


def test_openslide_backend_gives_the_same_tiles_as_direct_decoding(cmu_slide_path):
    coords, _ = _grid(cmu_slide_path, 1)
    with TileReader(cmu_slide_path, coords, TILE, resample="lanczos") as reader:
        direct = reader.read_all()
    with TileReader(cmu_slide_path, coords, TILE, resample="lanczos",
                    backend="openslide") as reader:
        via_openslide = reader.read_all()
        assert reader.decode_count == 0
    np.testing.assert_array_equal(direct, via_openslide)


def test_a_subset_of_indices_comes_back_in_raster_order_with_its_own_indices(cmu_slide_path):
    coords, _ = _grid(cmu_slide_path, 0)
    subset = np.array([40, 3, 17, 5])
    with TileReader(cmu_slide_path, coords, TILE) as reader:
        got = [i for i, _ in reader.iter_tiles(subset)]
        full = reader.read_all()
        part = reader.read_all(subset)
    assert got == list(subset[read_order(coords[subset])])
    np.testing.assert_array_equal(part, full[subset])


def test_tile_stream_with_two_workers_yields_every_tile_once(cmu_slide_path):
    coords, _ = _grid(cmu_slide_path, 0)
    with TileReader(cmu_slide_path, coords, TILE) as reader:
        expected = reader.read_all()
    items = make_work_items([(0, cmu_slide_path, coords, TILE), (1, cmu_slide_path, coords[:7],
                                                                TILE)], chunk_tiles=32)
    seen = {0: [], 1: []}
    for batch in make_tile_loader(items, batch_size=16, num_workers=2):
        assert "error" not in batch
        idx = batch["index"].numpy()
        seen[int(batch["slide"])].extend(idx)
        np.testing.assert_array_equal(batch["tiles"].numpy(), expected[idx])
    assert sorted(seen[0]) == list(range(len(coords)))
    assert sorted(seen[1]) == list(range(7))


def test_an_unreadable_slide_is_reported_by_the_stream_not_raised(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    items = make_work_items([(0, bad, np.array([[0, 0, 0]]), TILE)])
    batches = list(make_tile_loader(items, batch_size=4, num_workers=0))
    assert len(batches) == 1 and "SlideReadError" in batches[0]["error"]
    with pytest.raises(SlideReadError):
        TileReader(bad, np.array([[0, 0, 0]]), TILE)


@pytest.mark.parametrize("tile_size", [224, 240, 256])
def test_the_vectorised_plan_equals_deepzoom_on_every_level(cmu_slide_path, slide_40x_pyramid,
                                                            tile_size):
    for path in (cmu_slide_path, slide_40x_pyramid):
        osr = openslide.OpenSlide(str(path))
        dz = DeepZoomGenerator(osr, tile_size, 0, False)
        coords = np.array([(lv, c, r) for lv in range(dz.level_count)
                           for c in range(dz.level_tiles[lv][0])
                           for r in range(dz.level_tiles[lv][1])])
        plan = plan_tiles(osr, coords, tile_size)
        level, xy0, size_l, size_z = _plan_loop(dz, coords)
        np.testing.assert_array_equal(plan.level, level)
        np.testing.assert_array_equal(plan.xy_level0, xy0)
        np.testing.assert_array_equal(plan.size_level, size_l)
        np.testing.assert_array_equal(plan.size_out, size_z)


def test_coords_outside_the_deepzoom_grid_are_config_errors(cmu_slide_path):
    with pytest.raises(ConfigError, match="outside the DeepZoom grid"):
        TileReader(cmu_slide_path, np.array([[12, 999, 0]]), TILE)


def test_unknown_reader_options_are_config_errors(cmu_slide_path):
    with pytest.raises(ConfigError, match="resample"):
        TileReader(cmu_slide_path, np.zeros((0, 3)), TILE, resample="bicubic")
    with pytest.raises(ConfigError, match="mode"):
        TileReader(cmu_slide_path, np.zeros((0, 3)), TILE, mode="slow")


# -- nothing wrong passes silently: corrupt stored tiles, verification against OpenSlide -------

@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    """A 2048 x 1536 Aperio-like slide, one level of 8 x 6 stored tiles of 256 px."""
    path = tmp_path_factory.mktemp("small") / "small.svs"
    return write_synthetic_slide(path, width=2048, height=1536, mpp=0.25, n_levels=1,
                                 seed=3).path


def _damaged_copy(src, dst, flipped=(), truncated=(), seed=0):
    shutil.copy(src, dst)
    if flipped:
        flip_tile_bytes(dst, flipped, n_bytes=8, seed=seed)
    if truncated:
        truncate_tile_data(dst, truncated, keep=0.5)
    return dst


def _openslide_reads_stored_tile(path, row, col, size=256) -> bool:
    try:  # a fresh handle per tile: OpenSlide refuses every call after an error
        openslide.OpenSlide(str(path)).read_region((col * size, row * size), 0, (size, size))
        return True
    except openslide.OpenSlideError:
        return False


@pytest.mark.parametrize("seed", [0, 1])
def test_strict_decoding_rejects_every_stored_tile_openslide_rejects(small_slide,
                                                                           tmp_path, seed):
    bad = _damaged_copy(small_slide, tmp_path / "bad.svs", flipped=range(0, 48, 4),
                        truncated=[1, 2], seed=seed)
    _, _, n_cols = stored_tiles(bad)
    rejected = 0
    with TiffLevelSource(bad, (2048, 1536)) as src:
        for index in range(48):
            row, col = divmod(index, n_cols)
            ours, last_error = [], ""
            for scale in (1, 2):  # DCT-scaled decoding is as strict
                try:
                    src.read_tile(row, col, scale)
                    ours.append(True)
                except CorruptTileError as err:
                    assert "does not decode cleanly" in str(err) and f"row {row}" in str(err)
                    ours.append(False)
                    last_error = str(err)
            # every tile OpenSlide refuses is refused; OpenSlide is the more lenient one only for
            # "extraneous bytes before marker 0xd9" (it never finishes decompression)
            assert ours[0] == ours[1] and (ours[0] or not _openslide_reads_stored_tile(
                bad, row, col) or "extraneous bytes" in last_error), index
            assert not ours[0] or _openslide_reads_stored_tile(bad, row, col), index
            rejected += not ours[0]
    assert rejected >= 2 + 6  # both cut tiles and most of the 12 flipped ones


def test_a_tile_cut_short_by_the_end_of_the_file_is_a_corrupt_tile_error(small_slide, tmp_path):
    cut = tmp_path / "cut.svs"
    shutil.copy(small_slide, cut)
    offsets, counts, _ = stored_tiles(cut)
    os.truncate(cut, int(offsets[-1] + counts[-1] // 2))  # OpenSlide cannot even open it
    with TiffLevelSource(cut, (2048, 1536)) as src, \
            pytest.raises(CorruptTileError, match=r"truncated: \d+ of \d+ bytes"):
        src.read_tile(*divmod(len(offsets) - 1, src.n_cols))


@pytest.mark.parametrize("resample", ["dct", "lanczos"])
def test_a_slide_with_corrupt_tiles_fails_in_the_stream_and_the_next_slide_goes_on(
        small_slide, tmp_path, resample):
    bad = _damaged_copy(small_slide, tmp_path / "bad.svs", truncated=[9, 10])
    coords, _ = _grid(small_slide, 1)  # 2x from level 0: every stored tile is read
    items = make_work_items([(0, bad, coords, TILE), (1, small_slide, coords, TILE)])
    seen, errors = set(), {}
    for batch in make_tile_loader(items, batch_size=8, num_workers=0, resample=resample):
        if "error" in batch:
            errors[int(batch["slide"])] = batch["error"]
        elif int(batch["slide"]) == 1:
            seen.update(batch["index"].tolist())
    assert list(errors) == [0] and errors[0].startswith("CorruptTileError")
    assert "premature end of data segment" in errors[0]
    assert seen == set(range(len(coords)))
    with pytest.raises(openslide.OpenSlideError, match="Corrupt JPEG data"):  # as OpenSlide
        for level, col, row in coords:
            DeepZoomGenerator(openslide.OpenSlide(str(bad)), TILE, 0, False).get_tile(
                int(level), (int(col), int(row)))


@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_sampled_tiles_are_checked_against_get_tile(cmu_slide_path, backend):
    coords, _ = _grid(cmu_slide_path, 1)
    sample = verify_sample(coords, 5)
    assert len(sample) == 5 and len(set(sample.tolist())) == 5
    with TileReader(cmu_slide_path, coords, TILE, backend=backend, verify=sample) as reader:
        reader.read_all()
        assert reader.verified == 5
    with TileReader(cmu_slide_path, coords, TILE, mode="exact", verify=sample) as reader:
        reader.read_all()
        assert reader.verified == 0  # exact mode is get_tile itself


def test_a_fast_tile_that_disagrees_with_openslide_fails_the_slide_with_its_address(
        cmu_slide_path, monkeypatch):
    coords, _ = _grid(cmu_slide_path, 0)
    original = TileReader._iter_tiff

    def shifted(self, src, idx):  # a geometry bug: every tile comes from its right neighbour
        tiles = dict(original(self, src, idx))
        for i in idx.tolist():
            yield i, tiles.get(i + 1, tiles[i])

    monkeypatch.setattr(TileReader, "_iter_tiff", shifted)
    sample = verify_sample(coords, 2)
    with TileReader(cmu_slide_path, coords, TILE, verify=sample) as reader, \
            pytest.raises(TileMismatchError, match=r"disagree on DeepZoom tile \(\d+, \d+, \d+\)"):
        reader.read_all()
    items = make_work_items([(0, cmu_slide_path, coords, TILE)], chunk_tiles=16, verify_tiles=2)
    assert sum(len(item.verify) for item in items) == 2  # per slide, not per band
    errors = [b["error"] for b in make_tile_loader(items, 16, 0) if "error" in b]
    assert errors and errors[0].startswith("TileMismatchError")
