"""Feature files written by extraction: our per-slide h5 and the reference's npy layouts.

Our layout, ``<output_dir>/<encoder>/<tiling_name>/<slide_id>.h5``:

- ``features`` (N, D) float16 | float32, ``coords`` (N, 3) int64 (dz_level, col, row),
  ``coords_level0`` (N, 2) int64 (x, y);
- attrs: ``wsi_mil_version``, ``encoder``, ``embed_dim``, ``weights_sha256``,
  ``precision``, ``mean``, ``std``, ``input_size``, ``tile_size``, ``target_mpp``,
  ``slide_mpp``, ``dz_level``, ``library_versions`` (json), ``slide_id``, plus what
  the caller adds (``coords_sha1``, ``features_dtype``, ``reader`` ...).

Reference layout: ``<root>/<encoder>/<cohort>/<slide_id>/features.npy`` (N, 3 + D),
columns 0..2 = (dz_level, col, row). Tile-level datasets: ``tile_features.npy``
(N, D), ``tile_ids.npy`` (N,) str, ``tile_labels.npy`` (N,) str in one folder.
Every write is atomic (temporary file + rename).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsi_mil.errors import FileFormatError
from wsi_mil.io.atomic import atomic_path
from wsi_mil.io.h5attrs import read_h5_attrs, to_h5_attr

FEATURE_DTYPES = ("float16", "float32")
TILE_FEATURES = "tile_features.npy"
TILE_IDS = "tile_ids.npy"
TILE_LABELS = "tile_labels.npy"


@dataclass
class FeatureFile:
    features: np.ndarray                # (N, D)
    coords: np.ndarray                  # (N, 3) int64
    coords_level0: np.ndarray           # (N, 2) int64
    attrs: dict[str, Any] = field(default_factory=dict)


def coords_sha1(coords: np.ndarray) -> str:
    """Fingerprint of a coords array (tells a re-tiled slide from the same tiling)."""
    return hashlib.sha1(np.ascontiguousarray(coords, dtype=np.int64).tobytes()).hexdigest()


def write_features(path: str | Path, features: np.ndarray, coords: np.ndarray,
                   coords_level0: np.ndarray, attrs: dict[str, Any],
                   dtype: str = "float32") -> Path:
    """Write one slide's h5 atomically; ``dtype`` in FEATURE_DTYPES."""
    if dtype not in FEATURE_DTYPES:
        raise FileFormatError(f"features dtype {dtype!r}; choose one of {FEATURE_DTYPES}")
    features = np.asarray(features)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    coords_level0 = np.asarray(coords_level0, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or len(features) != len(coords) or len(coords) != len(coords_level0):
        raise FileFormatError(
            f"{path}: features {features.shape}, coords {coords.shape} and coords_level0 "
            f"{coords_level0.shape} must be (N, D), (N, 3), (N, 2)"
        )
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features.astype(dtype))
        f.create_dataset("coords", data=coords)
        f.create_dataset("coords_level0", data=coords_level0)
        for key, value in attrs.items():
            f.attrs[key] = to_h5_attr(value)
        f.attrs["features_dtype"] = dtype
    return path


def read_feature_attrs(path: str | Path) -> dict[str, Any]:
    """Only the attrs of an h5 feature file (cheap; used to decide on resume)."""
    try:
        with h5py.File(path, "r") as f:
            return read_h5_attrs(f)
    except OSError as err:
        raise FileFormatError(f"{path} is not a readable h5 feature file: {err}") from err


def read_features(path: str | Path) -> FeatureFile:
    """Read one of our h5 feature files; :class:`FileFormatError` on another layout."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("features", "coords", "coords_level0") if k not in f]
            if missing or "wsi_mil_version" not in f.attrs:
                raise FileFormatError(
                    f"{path} is not a wsi_mil feature file (missing {missing or 'wsi_mil_version'})"
                )
            return FeatureFile(
                features=f["features"][()], coords=f["coords"][()].astype(np.int64),
                coords_level0=f["coords_level0"][()].astype(np.int64),
                attrs=read_h5_attrs(f),
            )
    except OSError as err:
        raise FileFormatError(f"{path} is not a readable h5 feature file: {err}") from err


def write_reference_features(path: str | Path, features: np.ndarray, coords: np.ndarray) -> Path:
    """The reference's ``features.npy``: (N, 3 + D) float32, columns 0..2 = coords."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    features = np.asarray(features, dtype=np.float32)
    if len(features) != len(coords):
        raise FileFormatError(f"{path}: {len(features)} feature rows for {len(coords)} coords")
    table = np.concatenate([coords.astype(np.float32), features], axis=1)
    with atomic_path(path) as tmp:
        np.save(tmp, table)
    return Path(path)


def read_reference_features(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 3) int64, features (N, D) float32) from a reference ``features.npy``."""
    table = np.load(path)
    if table.ndim != 2 or table.shape[1] < 4:
        raise FileFormatError(f"{path}: expected (N, 3 + D) array, got {table.shape}")
    return table[:, :3].astype(np.int64), table[:, 3:].astype(np.float32)


def write_tile_features(folder: str | Path, features: np.ndarray, tile_ids: np.ndarray,
                        labels: np.ndarray) -> Path:
    """``tile_features.npy`` (N, D), ``tile_ids.npy`` (N,), ``tile_labels.npy`` (N,)."""
    folder = Path(folder)
    if not len(features) == len(tile_ids) == len(labels):
        raise FileFormatError(
            f"{folder}: {len(features)} features, {len(tile_ids)} ids, {len(labels)} labels"
        )
    for name, arr in ((TILE_FEATURES, np.asarray(features)),
                      (TILE_IDS, np.asarray(tile_ids, dtype=str)),
                      (TILE_LABELS, np.asarray(labels, dtype=str))):
        with atomic_path(folder / name) as tmp:
            np.save(tmp, arr)
    return folder


def read_tile_features(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, D), tile_ids (N,), labels (N,)) of a tile-level folder."""
    folder = Path(folder)
    paths = [folder / n for n in (TILE_FEATURES, TILE_IDS, TILE_LABELS)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileFormatError(f"{folder} has no {missing}")
    return tuple(np.load(p) for p in paths)  # type: ignore[return-value]
