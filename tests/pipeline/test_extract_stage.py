"""Extraction stage: outputs, resume, failures, stale outputs, sharding, torchrun."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from extract_builders import slide_table, tiling_root_of, write_grid_coords

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.tile_reader import TileReader
from wsi_mil.errors import StaleOutputError
from wsi_mil.io.coords import read_coords
from wsi_mil.io.features import read_features, read_reference_features
from wsi_mil.io.ledger import StatusLedger
from wsi_mil.io.paths import safe_name
from wsi_mil.pipeline import extract_stage
from wsi_mil.pipeline.distributed import shard_by_cost
from wsi_mil.pipeline.extract_stage import run_extraction
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.testing.tiny_models import save_tiny_timm_generic

N_TILES = 12  # per slide


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, cmu_slide_path):
    """Three slides (CMU twice with different tiles, one 40x synthetic) + their coords."""
    root = tmp_path_factory.mktemp("cohort")
    syn = write_synthetic_slide(root / "syn40x.svs", width=2048, height=1536, mpp=0.25,
                                n_levels=1, seed=3).path
    tiling = tiling_root_of(root)
    write_grid_coords(cmu_slide_path, tiling, "cmu_a", max_tiles=N_TILES)
    write_grid_coords(cmu_slide_path, tiling, "cmu_b", dz_from_top=1, max_tiles=6)
    write_grid_coords(syn, tiling, "syn", dz_from_top=1, max_tiles=N_TILES)
    table = slide_table([("cmu_a", cmu_slide_path), ("cmu_b", cmu_slide_path), ("syn", syn)])
    return table, tiling


@pytest.fixture(scope="module")
def histo():
    return create_encoder("histo_stats")


@pytest.fixture(scope="module")
def vit_info(tmp_path_factory):
    """A tiny timm ViT saved locally (fast stand-in for a foundation model)."""
    return save_tiny_timm_generic(tmp_path_factory.mktemp("vit") / "vit")


@pytest.fixture(scope="module")
def vit(vit_info):
    return create_encoder(vit_info["name"], weights=vit_info["weights"])


def _run(data, out, encoder, **kw):
    table, tiling = data
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    return run_extraction(table, tiling, out, encoder=encoder, batch_size=5, **kw)


def test_each_slide_gets_an_h5_with_the_contract_layout_and_attrs(cohort, histo, tmp_path):
    result = _run(cohort, tmp_path, histo, num_workers=2)
    assert result.counts == {"done": 3, "skipped": 0, "failed": 0}
    assert result.output_root == tmp_path / "histo_stats" / "mpp0.50_px224"
    table, tiling = cohort
    for sid, path in zip(table.slide_id, table.path, strict=True):
        f = read_features(result.output_root / f"{sid}.h5")
        coords = read_coords(tiling / "coords" / f"{sid}.h5")
        np.testing.assert_array_equal(f.coords, coords.coords)
        np.testing.assert_array_equal(f.coords_level0, coords.coords_level0)
        assert f.features.shape == (len(coords), histo.embed_dim)
        assert f.features.dtype == np.float16
        for key in ("wsi_mil_version", "encoder", "embed_dim", "weights_sha256", "precision",
                    "mean", "std", "input_size", "tile_size", "target_mpp", "slide_mpp",
                    "dz_level", "library_versions", "slide_id"):
            assert key in f.attrs, key
        assert f.attrs["encoder"] == "histo_stats" and "torch" in f.attrs["library_versions"]
        with TileReader(path, coords.coords, 224) as reader:  # the same tiles, encoded directly
            tiles = torch.from_numpy(reader.read_all())
        with torch.inference_mode():
            direct = histo(histo.preprocess(tiles)).numpy()
        np.testing.assert_allclose(f.features.astype(np.float32), direct, rtol=2e-3, atol=2e-3)
    assert (result.output_root / "status.csv").exists()


def test_reference_layout_writes_features_npy_per_slide(cohort, vit, tmp_path):
    result = _run(cohort, tmp_path, vit, layout="reference", cohort="tcga_x",
                  features_dtype="float32")
    assert result.counts["done"] == 3
    coords, feats = read_reference_features(tmp_path / safe_name(vit.name) / "tcga_x" / "syn"
                                            / "features.npy")
    np.testing.assert_array_equal(coords, read_coords(cohort[1] / "coords" / "syn.h5").coords)
    assert feats.shape == (N_TILES, vit.embed_dim)
    again = _run(cohort, tmp_path, vit, layout="reference", cohort="tcga_x",
                 features_dtype="float32")
    assert again.counts == {"done": 0, "skipped": 3, "failed": 0}


def test_a_rerun_skips_finished_slides_without_rewriting_them(cohort, vit, tmp_path):
    first = _run(cohort, tmp_path, vit)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.output_root.glob("*.h5")}
    again = _run(cohort, tmp_path, vit)
    assert again.counts == {"done": 0, "skipped": 3, "failed": 0}
    assert {p.name: p.stat().st_mtime_ns for p in again.output_root.glob("*.h5")} == stamps


def test_a_killed_run_resumes_without_recomputing_and_leaves_no_corrupt_file(
        cohort, vit, tmp_path, monkeypatch):
    real_write = extract_stage.write_features
    written = []

    def dying_write(path, *args, **kwargs):
        if written:  # the second slide: die in the middle of writing it
            from wsi_mil.io.atomic import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half an h5")
                raise KeyboardInterrupt
        written.append(Path(path).stem)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(extract_stage, "write_features", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(cohort, tmp_path, vit)
    out = tmp_path / safe_name(vit.name) / "mpp0.50_px224"
    assert [p.stem for p in out.glob("*.h5")] == written  # only the finished slide, no partial
    assert not list(out.glob(".*tmp*"))
    finished = out / f"{written[0]}.h5"
    stamp = finished.stat().st_mtime_ns
    monkeypatch.setattr(extract_stage, "write_features", real_write)
    resumed = _run(cohort, tmp_path, vit)
    assert resumed.counts == {"done": 2, "skipped": 1, "failed": 0}
    assert finished.stat().st_mtime_ns == stamp
    row = StatusLedger(out).rows[written[0]]  # the rerun keeps the first run's row
    assert row.status == "done" and row.reason.endswith("tiles") and row.seconds > 0
    for p in out.glob("*.h5"):
        read_features(p)


def test_a_bad_slide_is_recorded_and_the_batch_goes_on(cohort, vit, tmp_path):
    table, tiling = cohort
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x00" * 100)
    write_grid_coords(table.path[0], tiling, "broken", max_tiles=2)
    rows = [*zip(table.slide_id, table.path, strict=True), ("broken", bad),
            ("untiled", table.path[0])]
    try:
        result = run_extraction(slide_table(rows), tiling, tmp_path / "out", encoder=vit,
                                num_workers=0, device="cpu")
    finally:
        (tiling / "coords" / "broken.h5").unlink()
    assert result.counts == {"done": 3, "skipped": 0, "failed": 2}
    assert "SlideReadError" in result.failed["broken"]
    assert "no coords file" in result.failed["untiled"]
    assert not (result.output_root / "broken.h5").exists()


def test_an_output_made_with_other_settings_is_never_silently_reused(cohort, vit, tmp_path):
    _run(cohort, tmp_path, vit, features_dtype="float16")
    with pytest.raises(StaleOutputError, match="features_dtype"):
        _run(cohort, tmp_path, vit, features_dtype="float32")
    redone = _run(cohort, tmp_path, vit, features_dtype="float32", overwrite=True)
    assert redone.counts["done"] == 3
    out = redone.output_root / "cmu_a.h5"
    assert read_features(out).features.dtype == np.float32
    # re-tiling the slide (other coords) makes its features stale too
    table, tiling = cohort
    coords_file = tiling / "coords" / "cmu_a.h5"
    saved = coords_file.read_bytes()
    try:
        write_grid_coords(table.path[0], tiling, "cmu_a", max_tiles=N_TILES - 1)
        with pytest.raises(StaleOutputError, match="coords_sha1"):
            _run(cohort, tmp_path, vit, features_dtype="float32")
    finally:
        coords_file.write_bytes(saved)


def test_a_tiny_timm_vit_saved_locally_extracts_through_the_weights_path(cohort, vit_info,
                                                                        tmp_path):
    info = vit_info
    table, tiling = cohort
    result = run_extraction(table.iloc[:1], tiling, tmp_path / "out", encoder_name=info["name"],
                            weights=info["weights"], num_workers=0, device="cpu", batch_size=8)
    assert result.counts["done"] == 1
    f = read_features(result.output_root / "cmu_a.h5")
    assert f.features.shape == (N_TILES, 32) and np.isfinite(f.features).all()
    assert len(f.attrs["weights_sha256"]) == 64


def test_lpt_sharding_is_deterministic_balanced_and_complete():
    costs = [50, 10, 40, 30, 30, 20, 5]
    items = list("abcdefg")
    shards = [shard_by_cost(items, costs, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == items
    loads = [sum(costs[items.index(i)] for i in s) for s in shards]
    assert max(loads) - min(loads) <= 10
    assert shards == [shard_by_cost(items, costs, r, 3) for r in range(3)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.integration
def test_two_torchrun_processes_give_the_same_features_as_one(cohort, vit, vit_info,
                                                              tmp_path):
    table, tiling = cohort
    csv = tmp_path / "slides.csv"
    table.to_csv(csv, index=False)
    single = _run(cohort, tmp_path / "one", vit, features_dtype="float32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "wsi_mil.cli.main", "extract",
           f"slides={csv}", f"coords_dir={tiling}", f"output_dir={tmp_path / 'two'}",
           f"encoder={vit_info['name']}", f"weights={vit_info['weights']}", "device=cpu", "num_workers=0", "features_dtype=float32",
           "batch_size=5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_two = tmp_path / "two" / safe_name(vit.name) / "mpp0.50_px224"
    for sid in table.slide_id:
        a = read_features(single.output_root / f"{sid}.h5").features
        b = read_features(out_two / f"{sid}.h5").features
        # same tiles, same batches; only float summation order may differ (threads)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ledger = StatusLedger(out_two)
    assert ledger.counts() == {"done": 3, "skipped": 0, "failed": 0}
    assert not list(out_two.glob("status.rank*.csv"))
    assert (tmp_path / "two" / "extract.rank0.log").exists()
    assert (tmp_path / "two" / "extract.rank1.log").exists()


def test_a_runtime_error_while_encoding_fails_the_slide_in_flight_and_the_others_complete(
        cohort, vit, tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = type(vit).forward

    def crash_once(self, images):
        calls["n"] += 1
        if calls["n"] == 1:  # e.g. a reader worker killed by a signal, or CUDA out of memory
            raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Segmentation fault")
        return forward(self, images)

    monkeypatch.setattr(type(vit), "forward", crash_once)
    result = _run(cohort, tmp_path / "out", vit)
    assert result.counts["failed"] == 1 and result.counts["done"] == 2, result.counts
    (reason,) = result.failed.values()
    assert "killed by signal" in reason
    rerun = _run(cohort, tmp_path / "out", vit)  # the failed slide is retried on resume
    assert rerun.counts == {"done": 1, "skipped": 2, "failed": 0}
