"""kill -9 at random points of tiling and extraction, and two extractions on one folder:
the final outputs equal an uninterrupted run's, nothing finished is recomputed, nothing is
encoded twice, no ledger row is lost, no temporary or lock file is left behind."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch
from reliability_builders import (
    N_SLIDES,
    TILING,
    assert_same_outputs,
    extract,
    fork,
    kill_after,
    read_folder,
)

from wsi_mil.io.coords import read_coords
from wsi_mil.io.ledger import StatusLedger
from wsi_mil.pipeline import tile_stage
from wsi_mil.pipeline.tile_stage import run_tiling
from wsi_mil.tiling import TilingParams

KILL_SEEDS = (0, 1, 2)


def _leftovers(folder) -> list:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.suffix == ".lock"
            and not p.name.startswith(".status")]


def _assert_all_finished(ledger: StatusLedger) -> None:
    """Every slide finished; a slide killed between its output and its ledger row is recorded
    as skipped by the rerun (at most one), the others keep their done rows."""
    counts = ledger.counts()
    assert counts["failed"] == 0 and counts["done"] + counts["skipped"] == N_SLIDES, counts
    assert counts["skipped"] <= 1, counts


def _tile_child(table, out):
    torch.set_num_threads(1)
    run_tiling(table, out, TilingParams(), previews=False)


@pytest.mark.slow
def test_tiling_killed_at_random_points_ends_with_the_outputs_of_an_uninterrupted_run(
        cohort, tmp_path, monkeypatch):
    table, reference = cohort
    tile = tile_stage.tile_slide

    def slow_tile(*args, **kw):  # ~0.1 s more per slide, so kills land mid-run
        time.sleep(0.1)
        return tile(*args, **kw)

    monkeypatch.setattr(tile_stage, "tile_slide", slow_tile)
    rng = np.random.default_rng(0)
    finished_at_kill = []
    for seed in KILL_SEEDS:
        out = tmp_path / f"kill{seed}"
        kill_after(fork(_tile_child, table, out), float(rng.uniform(0.1, 1.2)))
        before = {p.name: p.stat().st_mtime_ns for p in (out / TILING / "coords").glob("[!.]*")} \
            if (out / TILING / "coords").exists() else {}
        finished_at_kill.append(len(before))
        ledger = run_tiling(table, out, TilingParams(), previews=False)
        _assert_all_finished(ledger)
        for sid in table.slide_id:
            got = read_coords(out / TILING / "coords" / f"{sid}.h5")
            want = read_coords(reference / "coords" / f"{sid}.h5")
            np.testing.assert_array_equal(got.coords, want.coords)
            np.testing.assert_array_equal(got.coords_level0, want.coords_level0)
        for name, stamp in before.items():  # finished slides were not recomputed
            assert (out / TILING / "coords" / name).stat().st_mtime_ns == stamp, (seed, name)
        assert _leftovers(out) == [], seed
    assert min(finished_at_kill) < N_SLIDES, finished_at_kill  # the kills were mid-run


def _extract_child(table, tiling, out, encoder):
    torch.set_num_threads(1)
    extract(table, tiling, out, encoder)


@pytest.mark.slow
def test_extraction_killed_at_random_points_ends_with_the_features_of_an_uninterrupted_run(
        cohort, slow_encoder, reference_features, tmp_path):
    table, tiling = cohort
    rng = np.random.default_rng(1)
    finished_at_kill = []
    for seed in KILL_SEEDS:
        out = tmp_path / f"kill{seed}"
        kill_after(fork(_extract_child, table, tiling, out, slow_encoder),
                   float(rng.uniform(0.2, 1.5)))
        feats = out / "histo_stats" / TILING
        before = {p.name: p.stat().st_mtime_ns for p in feats.glob("[!.]*.h5")}
        finished_at_kill.append(len(before))
        result = extract(table, tiling, out, slow_encoder)
        assert result.counts["failed"] == 0
        assert result.counts["skipped"] == len(before)  # finished slides are not recomputed
        for name, stamp in before.items():
            assert (feats / name).stat().st_mtime_ns == stamp, (seed, name)
        assert_same_outputs(read_folder(feats), reference_features)
        _assert_all_finished(StatusLedger(feats))
        assert _leftovers(out) == [], seed  # the killed run's temp and lock files are swept
    assert min(finished_at_kill) < N_SLIDES, finished_at_kill  # the kills were mid-run


@pytest.mark.parametrize("overlap", ["same_slides", "disjoint_shards"])
def test_two_extractions_on_one_folder_never_encode_a_slide_twice_nor_lose_a_row(
        cohort, slow_encoder, reference_features, tmp_path, monkeypatch, overlap):
    table, tiling = cohort
    encoded: mp.Queue = mp.get_context("fork").Queue()
    ledger_record = StatusLedger.record

    def recording(self, slide_id, status, *args, **kw):  # runs in the forked children
        if status == "done":
            encoded.put((os.getpid(), slide_id))
        return ledger_record(self, slide_id, status, *args, **kw)

    monkeypatch.setattr(StatusLedger, "record", recording)
    if overlap == "same_slides":
        parts = [table, table.iloc[::-1].reset_index(drop=True)]
    else:
        parts = [table.iloc[:3], table.iloc[3:]]
    procs = [fork(_extract_child, part, tiling, tmp_path, slow_encoder) for part in parts]
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    done = []
    while not encoded.empty():
        done.append(encoded.get())
    assert sorted(s for _, s in done) == sorted(table.slide_id)  # each encoded exactly once
    assert len({pid for pid, _ in done}) == 2  # both processes worked, side by side
    feats = tmp_path / "histo_stats" / TILING
    assert StatusLedger(feats).counts() == {"done": N_SLIDES, "skipped": 0, "failed": 0}
    assert_same_outputs(read_folder(feats), reference_features)
    assert _leftovers(tmp_path) == []
