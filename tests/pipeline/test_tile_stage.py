"""run_tiling: outputs, ledger reasons, skip on rerun, stale outputs, overrides."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from openslide.deepzoom import DeepZoomGenerator

import wsi_mil.pipeline.tile_stage as tile_stage
from wsi_mil.io.coords import read_coords, read_reference_coords
from wsi_mil.io.paths import coords_path, preview_path, reference_coords_path
from wsi_mil.io.slide_table import read_slide_table
from wsi_mil.pipeline.tile_stage import run_tiling
from wsi_mil.slides import open_slide
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling.params import TilingParams


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, cmu_slide_path):
    root = tmp_path_factory.mktemp("cohort")
    shutil.copy(cmu_slide_path, root / "cmu.svs")
    write_synthetic_slide(root / "x40.svs", width=4096, height=3072, seed=1)
    write_synthetic_slide(root / "nompp.tif", width=2048, height=2048, flavor="generic",
                          with_mpp=False, seed=2)
    write_synthetic_slide(root / "blank.svs", width=2048, height=2048, tissue=False)
    (root / "text.svs").write_text("this is not a slide\n")
    data = (root / "x40.svs").read_bytes()
    (root / "cut.svs").write_bytes(data[: len(data) // 3])
    return root


def _statuses(ledger):
    return {sid: (row.status, row.reason) for sid, row in ledger.rows.items()}


def test_bad_slides_are_recorded_with_their_reason_and_the_others_complete(cohort, tmp_path):
    params = TilingParams()
    ledger = run_tiling(read_slide_table(cohort), tmp_path, params, write_reference=True)
    rows = _statuses(ledger)
    assert rows["cmu"][0] == rows["x40"][0] == "done"
    assert rows["text"] == ("failed", rows["text"][1]) and "SlideReadError" in rows["text"][1]
    assert "not a slide file" in rows["text"][1]
    assert "SlideReadError" in rows["cut"][1] and "truncated" in rows["cut"][1]
    assert "NoTissueError" in rows["blank"][1]
    assert "MissingMppError" in rows["nompp"][1]
    assert ledger.counts() == {"done": 2, "skipped": 0, "failed": 4}
    root = tmp_path / "mpp0.50_px224"
    assert (root / "status.csv").exists()
    for sid in ("cmu", "x40"):
        coords = read_coords(coords_path(root, sid))
        assert preview_path(root, sid).stat().st_size > 0
        assert (read_reference_coords(reference_coords_path(root, sid)) == coords.coords).all()
        assert coords.attrs["slide_path"].endswith(f"{sid}.svs")
        assert len(coords.attrs["quickhash"]) == 64
    assert not coords_path(root, "blank").exists()


def test_40x_slide_is_tiled_at_the_20x_deepzoom_level(cohort, tmp_path):
    table = read_slide_table(cohort / "x40.svs")
    run_tiling(table, tmp_path, TilingParams(), previews=False)
    coords = read_coords(coords_path(tmp_path / "mpp0.50_px224", "x40"))
    with open_slide(cohort / "x40.svs") as reader:
        dz = DeepZoomGenerator(reader.osr, 224, overlap=0, limit_bounds=False)
        assert coords.attrs["dz_level"] == dz.level_count - 2
        assert coords.attrs["downsample"] == 2 and coords.attrs["read_level"] == 1
        assert coords.attrs["slide_mpp"] == pytest.approx(0.25)
        for (level, col, row), xy in zip(coords.coords, coords.coords_level0, strict=True):
            assert dz.get_tile_coordinates(int(level), (int(col), int(row)))[0] == tuple(xy)


def test_rerun_skips_finished_slides_and_retries_failed_ones(cohort, tmp_path):
    table = read_slide_table(cohort)
    run_tiling(table, tmp_path, TilingParams(), previews=False)
    before = read_coords(coords_path(tmp_path / "mpp0.50_px224", "cmu")).coords
    ledger = run_tiling(table, tmp_path, TilingParams(), previews=False)
    assert ledger.session_counts() == {"done": 0, "skipped": 2, "failed": 4}
    assert ledger.counts() == {"done": 2, "skipped": 0, "failed": 4}  # done rows are kept
    assert ledger.rows["cmu"].reason.endswith("um/px)")  # with their tile count
    assert (read_coords(coords_path(tmp_path / "mpp0.50_px224", "cmu")).coords == before).all()


def test_other_parameters_in_the_same_folder_are_stale_unless_overwrite(cohort, tmp_path):
    table = read_slide_table(cohort / "cmu.svs")
    run_tiling(table, tmp_path, TilingParams(min_tissue=0.5), previews=False)
    ledger = run_tiling(table, tmp_path, TilingParams(min_tissue=0.8), previews=False)
    status, reason = _statuses(ledger)["cmu"]
    assert status == "failed" and "StaleOutputError" in reason and "overwrite" in reason
    ledger = run_tiling(table, tmp_path, TilingParams(min_tissue=0.8), previews=False,
                        overwrite=True)
    assert _statuses(ledger)["cmu"][0] == "done"
    attrs = read_coords(coords_path(tmp_path / "mpp0.50_px224", "cmu")).attrs
    assert attrs["min_tissue"] == 0.8


def test_global_mpp_override_rescues_a_slide_without_mpp_and_table_mpp_wins(cohort, tmp_path):
    table = read_slide_table(cohort / "nompp.tif")
    ledger = run_tiling(table, tmp_path, TilingParams(), previews=False, mpp_override=0.25)
    assert _statuses(ledger)["nompp"][0] == "done"
    attrs = read_coords(coords_path(tmp_path / "mpp0.50_px224", "nompp")).attrs
    assert attrs["slide_mpp"] == 0.25 and attrs["mpp_source"] == "override"
    table["mpp"] = 0.5
    out = tmp_path / "second"
    run_tiling(table, out, TilingParams(), previews=False, mpp_override=0.25)
    attrs = read_coords(coords_path(out / "mpp0.50_px224", "nompp")).attrs
    assert attrs["slide_mpp"] == 0.5


def test_unexpected_errors_are_recorded_with_their_origin_and_the_batch_goes_on(
        cohort, tmp_path, monkeypatch):
    real = tile_stage.tile_slide

    def flaky(reader, params, mpp_override=None):
        if reader.slide_id == "cmu":
            raise RuntimeError("boom")
        return real(reader, params, mpp_override)

    monkeypatch.setattr(tile_stage, "tile_slide", flaky)
    table = pd.concat([read_slide_table(cohort / "cmu.svs"), read_slide_table(cohort / "x40.svs")])
    ledger = run_tiling(table, tmp_path, TilingParams(), previews=False)
    status, reason = _statuses(ledger)["cmu"]
    assert status == "failed"
    assert "unexpected RuntimeError: boom" in reason and "test_tile_stage.py" in reason
    assert _statuses(ledger)["x40"][0] == "done"


def test_preview_is_a_png_of_the_requested_size(cohort, tmp_path):
    from PIL import Image

    run_tiling(read_slide_table(cohort / "cmu.svs"), tmp_path, TilingParams(), preview_px=512)
    image = Image.open(preview_path(tmp_path / "mpp0.50_px224", "cmu"))
    assert image.format == "PNG" and max(image.size) == 512
    pixels = np.asarray(image.convert("RGB"))
    assert ((pixels == (30, 60, 230)).all(axis=2)).any()  # tile outlines drawn


def test_an_unreadable_coords_file_left_by_a_crash_is_recomputed(tmp_path, cmu_slide_path):
    from wsi_mil.io.coords import read_coords
    from wsi_mil.pipeline.tile_stage import run_tiling
    from wsi_mil.tiling import TilingParams

    table = pd.DataFrame({"slide_id": ["cmu"], "path": [str(cmu_slide_path)]})
    run_tiling(table, tmp_path, TilingParams(), previews=False)
    out = tmp_path / "mpp0.50_px224" / "coords" / "cmu.h5"
    good = read_coords(out).coords
    out.write_bytes(out.read_bytes()[:100])  # truncated
    ledger = run_tiling(table, tmp_path, TilingParams(), previews=False)
    assert ledger.status("cmu") == "done"
    assert (read_coords(out).coords == good).all()
