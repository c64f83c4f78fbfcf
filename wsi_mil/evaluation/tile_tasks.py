"""Tile-level tasks end to end: load a tile-feature folder, split it, run the probes, write tables.

Used by ``wsi-mil linear-probe`` and ``wsi-mil zero-shot`` (tile mode). The
folders are the ``wsi-mil extract-tiles`` layout (``tile_features.npy``,
``tile_ids.npy``, ``tile_labels.npy`` with class names, ``meta.json``), read by
:func:`wsi_mil.io.features.read_tile_feature_set` with their provenance (the
encoder and weights that made them; a train and a test folder made by
different models are an error).

Train / test split, in order of precedence:

1. ``test_features_dir``: a second folder is the test set (the reference's
   NCT-CRC-HE-100K train / CRC-VAL-HE-7K test, Camelyon17-WILDS train / val);
2. ``split_csv``: a CSV with columns ``tile_id, split`` (``train`` | ``test``);
   tiles not listed are left out;
3. else a seeded, class-stratified random split with ``test_fraction`` of the
   tiles in the test set (tile-level: tiles of one patient may fall on both sides;
   prefer 1 or 2 when patients are known).

A tile on both sides is an error. Tiles are identified by their source image
(absolute path, recorded by ``extract-tiles``), else by ``<dataset>:<tile_id>``:
a separate test dataset whose files have the same relative names as the
training set's is accepted, one listing the training set's images is not.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError, FileFormatError
from wsi_mil.io.features import FeatureProvenance, TileFeatureSet


@dataclass
class TileTask:
    train_x: np.ndarray  # (N_train, D) float32
    train_y: np.ndarray  # (N_train,) int64
    train_ids: np.ndarray  # (N_train,) str
    test_x: np.ndarray
    test_y: np.ndarray
    test_ids: np.ndarray
    class_names: list[str]
    provenance: FeatureProvenance = field(default_factory=FeatureProvenance)
    train_keys: np.ndarray | None = None  # (N_train,) str: tile identities across datasets
    test_keys: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"TileTask(train={len(self.train_y)}, test={len(self.test_y)}, "
                f"dim={self.train_x.shape[1]}, classes={self.class_names})")


def read_labelled_tiles(folder: str | Path) -> TileFeatureSet:
    """A tile-feature folder that must have labels (:class:`ConfigError` otherwise)."""
    from wsi_mil.io.features import read_tile_feature_set

    data = read_tile_feature_set(folder)
    if data.labels is None:
        raise ConfigError(f"{folder} has no tile labels (it was embedded without a label "
                          "column); this task needs labelled tiles")
    data.features = np.asarray(data.features, dtype=np.float32)
    return data


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(labels.size, dtype=bool)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        is_test[idx[: max(1, int(round(test_fraction * idx.size)))]] = True
    return is_test


def load_tile_task(
    features_dir: str | Path,
    test_features_dir: str | Path | None = None,
    split_csv: str | Path | None = None,
    test_fraction: float = 0.3,
    drop_classes: Sequence[str] = (),
    seed: int = 0,
) -> TileTask:
    """Read and split a tile-feature folder (see the module docstring)."""
    from wsi_mil.evaluation.provenance import check_consistent
    from wsi_mil.io.features import tile_keys

    train = read_labelled_tiles(features_dir)
    feats, ids, labels = train.features, train.tile_ids, train.labels
    keys = train.qualified_ids
    provenance = train.provenance
    if test_features_dir is not None:
        test = read_labelled_tiles(test_features_dir)
        check_consistent([(str(features_dir), train.provenance),
                          (str(test_features_dir), test.provenance)], "train and test tiles")
        provenance = train.provenance if train.provenance.known else test.provenance
        is_test = np.r_[np.zeros(len(ids), bool), np.ones(len(test), bool)]
        feats = np.r_[feats, test.features]
        ids, labels = np.r_[ids, test.tile_ids], np.r_[labels, test.labels]
        keys = np.concatenate(tile_keys(train, test))
    elif split_csv is not None:
        table = pd.read_csv(split_csv, dtype={"tile_id": str, "split": str})
        if not {"tile_id", "split"} <= set(table.columns):
            raise FileFormatError(f"split_csv {split_csv} needs columns tile_id,split; "
                                  f"found {list(table.columns)}")
        bad = sorted(set(table["split"]) - {"train", "test"})
        if bad:
            raise FileFormatError(f"split_csv {split_csv}: split values {bad}; valid: train, test")
        split = dict(zip(table["tile_id"], table["split"], strict=True))
        keep = np.array([i in split for i in ids])
        if (~keep).any():
            logger.warning("{} tile(s) not in {} are left out", int((~keep).sum()), split_csv)
        feats, ids, labels, keys = feats[keep], ids[keep], labels[keep], keys[keep]
        is_test = np.array([split[i] == "test" for i in ids])
    else:
        logger.warning("no test set given: seeded stratified tile-level split, test_fraction={}",
                       test_fraction)
        is_test = _stratified_split(labels, test_fraction, seed)
    keep = ~np.isin(labels, list(drop_classes))
    unknown = sorted(set(drop_classes) - set(labels))
    if unknown:
        raise ConfigError(f"drop_classes {unknown} are not labels; labels: {sorted(set(labels))}")
    feats, ids, labels, keys, is_test = feats[keep], ids[keep], labels[keep], keys[keep], is_test[keep]
    class_names = sorted({str(c) for c in labels})
    if len(class_names) < 2:
        raise ConfigError(f"need >= 2 classes, found {class_names} in {features_dir}")
    y = np.searchsorted(np.array(class_names), labels).astype(np.int64)
    if not is_test.any() or is_test.all():
        raise ConfigError(f"empty train or test set ({int(is_test.sum())} test of {is_test.size})")
    leak = np.intersect1d(keys[is_test], keys[~is_test])
    if leak.size:
        raise ConfigError(f"{leak.size} tile(s) in both train and test, e.g. {leak[:3].tolist()}")
    task = TileTask(feats[~is_test], y[~is_test], ids[~is_test], feats[is_test], y[is_test],
                    ids[is_test], class_names, provenance, keys[~is_test], keys[is_test])
    logger.info("{}", task)
    return task
