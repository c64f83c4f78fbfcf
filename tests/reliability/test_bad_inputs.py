"""Bad inputs fail by name, one slide at a time: corrupt tiles, non-finite features, a full disk,
a slide whose tiling failed. The other slides end exactly as in an uninterrupted clean run."""
from __future__ import annotations

import errno
import shutil
import subprocess
import sys

import numpy as np
import pytest
from reliability_builders import N_SLIDES, assert_same_outputs, extract, read_folder

from wsi_mil.io import atomic
from wsi_mil.io.ledger import StatusLedger
from wsi_mil.testing.faults import flip_tile_bytes, truncate_tile_data


@pytest.mark.parametrize("fault", ["flipped_bytes", "truncated_tiles"])
def test_a_slide_with_corrupt_tiles_fails_by_name_and_the_others_are_unchanged(
        cohort, histo, reference_features, tmp_path, fault):
    table, tiling = cohort
    broken = tmp_path / "s1.svs"
    shutil.copy(table.path[1], broken)
    if fault == "flipped_bytes":  # 8 bytes in each of the 48 stored tiles
        flip_tile_bytes(broken, range(48), n_bytes=8, seed=1)
    else:
        truncate_tile_data(broken, range(48), keep=0.6)
    bad = table.copy()
    bad.loc[1, "path"] = str(broken)
    result = extract(bad, tiling, tmp_path / "out", histo)
    assert result.counts == {"done": N_SLIDES - 1, "skipped": 0, "failed": 1}
    assert result.failed["s1"].startswith("CorruptTileError: s1.svs: stored tile (row ")
    assert "does not decode cleanly: Corrupt JPEG data" in result.failed["s1"] \
        or "Unsupported marker" in result.failed["s1"]
    want = {k: v for k, v in reference_features.items() if k != "s1"}
    assert_same_outputs(read_folder(result.output_root), want)


@pytest.mark.parametrize(("fault", "dtype", "match"), [
    ("nan", "float16", r"1 NaN and 0 inf value\(s\) in 1 tile"),
    ("inf_column", "float32", r"0 NaN and \d+ inf value"),
    ("overflow", "float16", r"exceed the float16 range \(\|x\| up to 1e\+06 > 65504\).*float32"),
])
def test_non_finite_or_overflowing_features_fail_the_slide_before_anything_is_stored(
        cohort, histo, tmp_path, monkeypatch, fault, dtype, match):
    table, tiling = cohort
    forward, calls = type(histo).forward, {"n": 0}

    def faulty(self, images):  # the first batch (of slide s0) goes wrong
        out = forward(self, images)
        calls["n"] += 1
        if calls["n"] == 1:
            out = out.clone()
            if fault == "nan":
                out[0, 0] = float("nan")
            elif fault == "inf_column":
                out[:, 3] = float("inf")
            else:
                out[0, 1] = 1e6  # a valid float32, inf once stored as float16
        return out

    monkeypatch.setattr(type(histo), "forward", faulty)
    result = extract(table, tiling, tmp_path / "out", histo, features_dtype=dtype)
    assert result.counts == {"done": N_SLIDES - 1, "skipped": 0, "failed": 1}
    assert result.failed["s0"].startswith("NonFiniteFeaturesError: ")
    assert __import__("re").search(match, result.failed["s0"]), result.failed["s0"]
    assert not (result.output_root / "s0.h5").exists()
    if fault == "overflow":  # stored as float32 the same value is fine
        calls["n"] = 0
        ok = extract(table, tiling, tmp_path / "out32", histo, features_dtype="float32")
        assert ok.counts["done"] == N_SLIDES


def test_a_full_disk_fails_the_slide_being_written_and_a_rerun_completes(
        cohort, histo, reference_features, tmp_path, monkeypatch):
    table, tiling = cohort
    real, calls = atomic.write_bytes_atomic, {"n": 0}

    def disk_full_once(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the second slide's h5
            with atomic.atomic_path(path) as tmp:
                tmp.write_bytes(data[:100])
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes_atomic", disk_full_once)
    result = extract(table, tiling, tmp_path / "out", histo)
    assert result.counts == {"done": N_SLIDES - 1, "skipped": 0, "failed": 1}
    (reason,) = result.failed.values()
    assert reason.startswith("OSError: [Errno 28] No space left on device")
    assert not list(result.output_root.glob(".*tmp*"))  # the partial file is gone
    monkeypatch.setattr(atomic, "write_bytes_atomic", real)
    again = extract(table, tiling, tmp_path / "out", histo)
    assert again.counts == {"done": 1, "skipped": N_SLIDES - 1, "failed": 0}
    assert_same_outputs(read_folder(again.output_root), reference_features)


def test_an_h5_write_hitting_a_full_disk_exits_cleanly_not_with_a_segfault(tmp_path):
    """HDF5 crashed at interpreter exit after ENOSPC (exit 139); now the OSError comes from a
    plain Python write and the process exits normally."""
    script = f"""
import errno, sys
import numpy as np
from wsi_mil.io import atomic
from wsi_mil.io.features import write_features

def full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

atomic.write_bytes_atomic = full
try:
    write_features({str(tmp_path / 'x.h5')!r}, np.ones((5000, 384), np.float32),
                   np.zeros((5000, 3)), np.zeros((5000, 2)), {{}})
except OSError as err:
    print(err.errno)
    sys.exit(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3 and proc.stdout.strip() == str(errno.ENOSPC), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_extraction_names_why_tiling_failed_instead_of_asking_to_tile(cohort, histo, tmp_path):
    table, tiling = cohort
    bad = table.iloc[:2].copy()
    bad.loc[1, "slide_id"] = "missing"
    bad.loc[1, "path"] = str(tmp_path / "missing.svs")
    tiles = tmp_path / "tiles"
    shutil.copytree(tiling, tiles / tiling.name)
    ledger = StatusLedger(tiles / tiling.name)
    ledger.record("missing", "failed", "SlideReadError: slide file not found: /data/missing.svs")
    result = extract(bad, tiles / tiling.name, tmp_path / "out", histo)
    assert result.failed["missing"] == (
        f"ConfigError: tiling of this slide failed: SlideReadError: slide file not found: "
        f"/data/missing.svs (see {tiles / tiling.name / 'status.csv'}); fix it and rerun "
        "`wsi-mil tile`")
    assert np.isfinite(read_folder(result.output_root)["s0"][0].astype(np.float32)).all()


@pytest.mark.slow
def test_a_really_full_disk_during_extract_is_a_named_failure_not_a_segfault(cohort, tmp_path):
    """A 40 KiB tmpfs as output_dir: every h5 write hits ENOSPC. The previous writer (h5py
    straight to disk) crashed the interpreter at exit (exit 139); now exit 1, named rows."""
    table, tiling = cohort
    disk = tmp_path / "tiny"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        csv = tmp_path / "slides.csv"
        table.to_csv(csv, index=False)
        proc = subprocess.run(
            [sys.executable, "-m", "wsi_mil.cli.main", "extract", f"slides={csv}",
             f"coords_dir={tiling}", f"output_dir={disk}", "encoder=histo_stats",
             "num_workers=0", "device=cpu", "features_dtype=float32", "batch_size=64"],
            capture_output=True, text=True, timeout=300)
        ledger = StatusLedger(disk / "histo_stats" / tiling.name)
        reasons = [row.reason for row in ledger.failed()]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert reasons and all(r.startswith("OSError: [Errno 28] No space left on device: ")
                           for r in reasons), reasons
