"""`wsi-mil extract` / `extract-tiles` and the reference tools/ entry points."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from wsi_mil.cli.main import main
from wsi_mil.io.coords import write_coords
from wsi_mil.io.features import read_features, read_tile_features
from wsi_mil.io.ledger import StatusLedger
from wsi_mil.testing.tiny_models import save_tiny_timm_generic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return save_tiny_timm_generic(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, cmu_slide_path):
    """slides.csv with the CMU slide + a coords file of 8 tiles at 0.5 mpp."""
    root = tmp_path_factory.mktemp("tiled")
    dz = DeepZoomGenerator(openslide.OpenSlide(str(cmu_slide_path)), 224, 0, False)
    level = dz.level_count - 1
    coords = np.array([(level, c, r) for r in range(2) for c in range(4)])
    write_coords(root / "mpp0.50_px224" / "coords" / "cmu.h5", coords, coords[:, 1:] * 224,
                 {"tile_size": 224, "target_mpp": 0.5, "slide_mpp": 0.499, "dz_level": level})
    csv = root / "slides.csv"
    pd.DataFrame({"slide_id": ["cmu"], "path": [str(cmu_slide_path)]}).to_csv(csv, index=False)
    return csv, root / "mpp0.50_px224"


def _overrides(tiled, vit, out, **extra):
    csv, tiling = tiled
    args = {"slides": csv, "coords_dir": tiling, "output_dir": out, "encoder": vit["name"],
            "weights": vit["weights"], "device": "cpu", "num_workers": 0, "batch_size": 4,
            **extra}
    return [f"{k}={v}" for k, v in args.items()]


def test_extract_writes_features_config_and_log(tiled, vit, tmp_path):
    assert main(["extract", *_overrides(tiled, vit, tmp_path)]) == 0
    out = tmp_path / "timm_vit_small_patch16_224" / "mpp0.50_px224"
    assert read_features(out / "cmu.h5").features.shape == (8, 32)
    assert StatusLedger(out).status("cmu") == "done"
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "extract.log").exists()


def test_extract_exits_non_zero_when_a_slide_fails(tiled, vit, tmp_path):
    csv, tiling = tiled
    bad_csv = tmp_path / "bad.csv"
    pd.DataFrame({"slide_id": ["cmu", "ghost"], "path": [pd.read_csv(csv).path[0],
                                                         str(tmp_path / "ghost.svs")]}
                 ).to_csv(bad_csv, index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", *_overrides(tiled, vit, tmp_path, slides=bad_csv)])
    assert exit_info.value.code == 1
    out = tmp_path / "timm_vit_small_patch16_224" / "mpp0.50_px224"
    assert StatusLedger(out).counts() == {"done": 1, "skipped": 0, "failed": 1}


def test_a_stale_output_is_a_clean_error_with_exit_code_2(tiled, vit, tmp_path, capsys):
    assert main(["extract", *_overrides(tiled, vit, tmp_path)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", *_overrides(tiled, vit, tmp_path, features_dtype="float32")])
    assert exit_info.value.code == 2
    assert "StaleOutputError" in capsys.readouterr().err
    assert main(["extract", *_overrides(tiled, vit, tmp_path, features_dtype="float32",
                                        overwrite="true")]) == 0


@pytest.fixture
def tile_folder(tmp_path, rng):
    root = tmp_path / "NCT-mini"
    for label in ("TUM", "STR"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}-{i}.png")
    return root


def test_extract_tiles_encodes_a_class_subfolder_dataset(tile_folder, vit, tmp_path):
    out = tmp_path / "out"
    assert main(["extract-tiles", f"dataset={tile_folder}", f"output_dir={out}",
                 f"encoder={vit['name']}", f"weights={vit['weights']}", "device=cpu",
                 "num_workers=0", "batch_size=4"]) == 0
    feats, ids, labels = read_tile_features(out / "timm_vit_small_patch16_224" / "NCT-mini")
    assert feats.shape == (6, 32)
    assert ids.tolist()[0] == "STR/STR-0.png" and sorted(set(labels)) == ["STR", "TUM"]


def test_extract_tiles_reads_a_path_label_csv(tile_folder, vit, tmp_path):
    from wsi_mil.pipeline.extract_tiles_stage import run_tile_extraction

    csv = tile_folder / "tiles.csv"
    pd.DataFrame({"path": ["TUM/TUM-0.png", "STR/STR-1.png"], "label": ["tumor", "stroma"]}
                 ).to_csv(csv, index=False)
    out = run_tile_extraction(csv, tmp_path / "o", encoder_name=vit["name"],
                              weights=vit["weights"], device="cpu", num_workers=0)
    feats, ids, labels = read_tile_features(out)
    assert feats.shape == (2, 32) and labels.tolist() == ["tumor", "stroma"]
    assert out.name == "tiles"


def test_tile_features_made_with_another_encoder_are_not_reused(tile_folder, vit, tmp_path):
    from wsi_mil.errors import StaleOutputError
    from wsi_mil.pipeline.extract_tiles_stage import run_tile_extraction

    kw = dict(encoder_name=vit["name"], weights=vit["weights"], device="cpu", num_workers=0)
    out = run_tile_extraction(tile_folder, tmp_path, **kw)
    stamp = (out / "tile_features.npy").stat().st_mtime_ns
    assert run_tile_extraction(tile_folder, tmp_path, **kw) == out  # same settings: kept
    assert (out / "tile_features.npy").stat().st_mtime_ns == stamp
    with pytest.raises(StaleOutputError, match="features_dtype"):
        run_tile_extraction(tile_folder, tmp_path, features_dtype="float16", **kw)


def test_the_reference_tools_script_runs_the_extract_section_of_conf_yaml(tiled, vit,
                                                                         tmp_path):
    args = [f"++extract.{a}" for a in _overrides(tiled, vit, tmp_path)]  # ++: add or set
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "extract_features" /
                                               "extract_slide_features.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "timm_vit_small_patch16_224" / "mpp0.50_px224"
    assert read_features(out / "cmu.h5").features.shape == (8, 32)


def test_the_reference_tile_tools_script_knows_the_extract_tiles_section():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "extract_features" /
                                               "extract_tile_features.py"), "--cfg", "job"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "extract_tiles:" in proc.stdout
