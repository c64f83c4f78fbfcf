"""A SIGKILLed `wsi-mil extract` resumes without recomputing finished slides, leaving no corrupt file."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from wsi_mil.io.ledger import StatusLedger
from wsi_mil.pipeline.tile_stage import run_tiling
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling import TilingParams

N_SLIDES = 6


@pytest.fixture(scope="module")
def tiled_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_extract")
    rows = []
    for i in range(N_SLIDES):
        path = root / f"s{i}.svs"
        write_synthetic_slide(path, width=3072, height=2048, tumor_fraction=0.3 * (i % 2), seed=i)
        rows.append({"slide_id": f"s{i}", "path": str(path)})
    table = pd.DataFrame(rows)
    table.to_csv(root / "slides.csv", index=False)
    ledger = run_tiling(table, root / "tiles", TilingParams(), previews=False)
    assert ledger.counts()["done"] == N_SLIDES
    return root / "slides.csv", root / "tiles" / "mpp0.50_px224"


def _extract(slides, tiling, out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wsi_mil.cli.main", "extract", f"slides={slides}",
         f"coords_dir={tiling}", f"output_dir={out}", "encoder=histo_stats", "num_workers=0",
         "batch_size=8", "device=cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _features(folder) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.glob("[!.]*.h5")):
        with h5py.File(path) as f:
            out[path.stem] = f["features"][:]
    return out


@pytest.mark.integration
def test_killed_extraction_resumes_and_matches_an_uninterrupted_run(tiled_cohort, tmp_path):
    slides, tiling = tiled_cohort
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    feats = killed / "histo_stats" / "mpp0.50_px224"
    proc = _extract(slides, tiling, killed)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if feats.exists() and any(feats.glob("[!.]*.h5")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = {p.name: p.stat().st_mtime_ns for p in feats.glob("[!.]*.h5")}
    assert 1 <= len(finished) < N_SLIDES, "the run must be killed after its first slide"
    for path in feats.glob("[!.]*.h5"):  # every visible file is complete
        with h5py.File(path) as f:
            assert f["features"].shape[0] == f["coords"].shape[0] > 0

    rerun = _extract(slides, tiling, killed)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    for name, mtime in finished.items():  # finished slides were not recomputed
        assert (feats / name).stat().st_mtime_ns == mtime, name
    ledger = StatusLedger(feats)
    assert ledger.counts()["failed"] == 0 and len(ledger) == N_SLIDES

    run = _extract(slides, tiling, clean)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()[-2000:]
    resumed, reference = _features(feats), _features(clean / "histo_stats" / "mpp0.50_px224")
    assert resumed.keys() == reference.keys() and len(reference) == N_SLIDES
    for slide_id in reference:
        np.testing.assert_array_equal(resumed[slide_id], reference[slide_id])
