"""Builders of the fault-injection suite: a small tiled cohort, a slowed encoder, forked runs.

Runs that are killed or run side by side are forked from the test process
(``multiprocessing`` fork context: no interpreter start, the monkeypatched slow
encoder is inherited), so each fault costs a fraction of a second of real work.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from wsi_mil.encoders import create_encoder
from wsi_mil.pipeline.extract_stage import run_extraction
from wsi_mil.pipeline.tile_stage import run_tiling
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling import TilingParams

N_SLIDES = 6
TILING = "mpp0.50_px224"


@pytest.fixture(scope="package")
def cohort(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """(slide table, tiling root) of six one-level 40x synthetic slides, tiled at 0.5 um/px."""
    root = tmp_path_factory.mktemp("reliability")
    rows = []
    for i in range(N_SLIDES):
        path = write_synthetic_slide(root / "slides" / f"s{i}.svs", width=2048, height=1536,
                                     n_levels=1, tumor_fraction=0.3 * (i % 2), seed=i).path
        rows.append({"slide_id": f"s{i}", "path": str(path), "mpp": float("nan")})
    table = pd.DataFrame(rows)
    ledger = run_tiling(table, root / "tiles", TilingParams(), previews=False)
    assert ledger.counts()["done"] == N_SLIDES
    return table, root / "tiles" / TILING


@pytest.fixture(scope="package")
def histo():
    return create_encoder("histo_stats")


def extract(table, tiling, out, encoder, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    return run_extraction(table, tiling, out, encoder=encoder, device="cpu", **kw)


@pytest.fixture(scope="package")
def reference_features(cohort, histo, tmp_path_factory) -> dict[str, np.ndarray]:
    """Features of an uninterrupted run (what every faulty run must end with)."""
    table, tiling = cohort
    result = extract(table, tiling, tmp_path_factory.mktemp("reference"), histo)
    assert result.counts["done"] == N_SLIDES
    return read_folder(result.output_root)


def read_folder(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """``{slide_id: (features, attrs without library versions)}`` of the h5 files of a folder."""
    out = {}
    for path in sorted(Path(folder).glob("[!.]*.h5")):
        with h5py.File(path) as f:
            attrs = {k: str(v) for k, v in f.attrs.items() if k != "library_versions"}
            out[path.stem] = (f["features"][()], attrs)
    return out


def assert_same_outputs(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for sid, (feats, attrs) in want.items():
        np.testing.assert_array_equal(got[sid][0], feats, err_msg=sid)
        assert got[sid][1] == attrs, sid


@pytest.fixture
def slow_encoder(histo, monkeypatch):
    """histo_stats taking ~40 ms per batch, so forked runs can be killed or overlap mid-slide."""
    forward = type(histo).forward

    def slow(self, images):
        time.sleep(0.04)
        return forward(self, images)

    monkeypatch.setattr(type(histo), "forward", slow)
    return histo


def fork(target, *args) -> mp.Process:
    proc = mp.get_context("fork").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def kill_after(proc: mp.Process, seconds: float) -> None:
    """SIGKILL ``proc`` after ``seconds`` (or let it be, if it already ended)."""
    proc.join(seconds)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
