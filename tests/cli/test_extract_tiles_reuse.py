"""``extract-tiles`` reuse keyed on the label table, dataset-aware tile identity, unlabelled CSVs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsi_mil.errors import ConfigError, FileFormatError
from wsi_mil.evaluation.tile_tasks import load_tile_task
from wsi_mil.io.features import read_tile_feature_set
from wsi_mil.pipeline.extract_tiles_stage import run_tile_extraction

KW = dict(encoder_name="histo_stats", device="cpu", num_workers=0, batch_size=8)


def _tree(root, rng, n=3):
    for label in ("TUM", "STR"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / label / f"{label}-{i}.png")
    return root


def test_relabelling_the_csv_rewrites_labels_without_encoding_again(tmp_path, rng):
    root = _tree(tmp_path / "ds", rng)
    csv = root / "tiles.csv"
    paths = ["TUM/TUM-0.png", "TUM/TUM-1.png", "STR/STR-0.png"]
    pd.DataFrame({"path": paths, "label": ["tumor", "tumor", "stroma"]}).to_csv(csv, index=False)
    out = run_tile_extraction(csv, tmp_path / "o", **KW)
    stamp = (out / "tile_features.npy").stat().st_mtime_ns
    pd.DataFrame({"path": paths, "label": ["tumor", "stroma", "stroma"]}).to_csv(csv, index=False)
    assert run_tile_extraction(csv, tmp_path / "o", **KW) == out
    got = read_tile_feature_set(out)
    assert got.labels.tolist() == ["tumor", "stroma", "stroma"]  # the new labels ...
    assert (out / "tile_features.npy").stat().st_mtime_ns == stamp  # ... on the same features
    assert got.meta["classes"] == ["stroma", "tumor"]
    assert got.provenance.encoder == "histo_stats"


def test_a_captions_csv_without_labels_is_embedded_once_per_image(tmp_path, rng):
    root = _tree(tmp_path / "ds", rng)
    csv = root / "captions.csv"
    pd.DataFrame({"path": ["TUM/TUM-0.png", "TUM/TUM-0.png", "STR/STR-1.png"],
                  "caption": ["a tumour", "malignant cells", "stroma"],
                  "group": ["p1", "p1", "p2"]}).to_csv(csv, index=False)
    got = read_tile_feature_set(run_tile_extraction(csv, tmp_path / "o", **KW))
    assert got.tile_ids.tolist() == ["TUM/TUM-0.png", "STR/STR-1.png"] and got.labels is None
    assert got.sources[0] == (root / "TUM" / "TUM-0.png").resolve().as_posix()
    with pytest.raises(ConfigError, match="no tile labels"):
        load_tile_task(got.folder)
    pd.DataFrame({"path": ["TUM/TUM-0.png", "TUM/TUM-0.png"], "label": ["a", "b"]}).to_csv(
        csv, index=False)
    with pytest.raises(FileFormatError, match="listed twice"):
        run_tile_extraction(csv, tmp_path / "o2", **KW)


def test_separate_datasets_with_equal_relative_names_are_not_a_leak(tmp_path, rng):
    train = run_tile_extraction(_tree(tmp_path / "train", rng), tmp_path / "o", **KW)
    test = run_tile_extraction(_tree(tmp_path / "test", rng), tmp_path / "o", **KW)
    assert read_tile_feature_set(train).tile_ids.tolist() == read_tile_feature_set(test).tile_ids.tolist()
    task = load_tile_task(train, test_features_dir=test)
    assert len(task.train_y) == len(task.test_y) == 6


def test_a_test_set_listing_training_images_is_still_a_leak(tmp_path, rng):
    root = _tree(tmp_path / "train", rng)
    train = run_tile_extraction(root, tmp_path / "o", **KW)
    csv = tmp_path / "test.csv"  # another dataset, other ids, but two of the training images
    pd.DataFrame({"path": [str(root / "TUM" / "TUM-0.png"), str(root / "STR" / "STR-2.png")],
                  "label": ["TUM", "STR"], "tile_id": ["x1", "x2"]}).to_csv(csv, index=False)
    test = run_tile_extraction(csv, tmp_path / "o", **KW)
    with pytest.raises(ConfigError, match="2 tile\\(s\\) in both train and test"):
        load_tile_task(train, test_features_dir=test)
