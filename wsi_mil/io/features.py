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
(N, D), ``tile_ids.npy`` (N,) str, ``tile_labels.npy`` (N,) str in one folder,
with ``meta.json`` (encoder, weights_sha256, dataset, ...) written by
``wsi-mil extract-tiles`` and optionally ``tile_sources.npy`` (N,) str, the
absolute path of each tile image (what identifies a tile across datasets).
Every write is atomic (temporary file + rename).

Provenance: :func:`read_tile_feature_set` and
:func:`wsi_mil.io.feature_sources.read_slide_provenance` return a
:class:`FeatureProvenance` (encoder name + weights fingerprint) read from what
extraction recorded; both fields are ``None`` when nothing was recorded.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsi_mil.errors import FileFormatError, NonFiniteFeaturesError
from wsi_mil.io.atomic import atomic_path, write_h5_atomic
from wsi_mil.io.h5attrs import read_h5_attrs, to_h5_attr

FEATURE_DTYPES = ("float16", "float32")
TILE_FEATURES = "tile_features.npy"
TILE_IDS = "tile_ids.npy"
TILE_LABELS = "tile_labels.npy"
TILE_SOURCES = "tile_sources.npy"
TILE_META = "meta.json"


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
    stored = features.astype(dtype)
    check_finite(stored, path)

    def fill(f: h5py.File) -> None:
        f.create_dataset("features", data=stored)
        f.create_dataset("coords", data=coords)
        f.create_dataset("coords_level0", data=coords_level0)
        for key, value in attrs.items():
            f.attrs[key] = to_h5_attr(value)
        f.attrs["features_dtype"] = dtype

    return write_h5_atomic(path, fill)


def check_finite(features: np.ndarray, path: str | Path) -> None:
    """:class:`NonFiniteFeaturesError` naming ``path`` if ``features`` (N, D) hold NaN / inf."""
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(features), -1).any(axis=1))
        raise NonFiniteFeaturesError(
            f"refusing to write {path}: {len(rows)} of {len(features)} feature rows hold NaN or "
            f"inf (first row {int(rows[0])}); a float16 store turns |x| > 65504 into inf")


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
    check_finite(features, path)
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
                        labels: np.ndarray, sources: np.ndarray | None = None) -> Path:
    """``tile_features.npy`` (N, D), ``tile_ids.npy`` (N,), ``tile_labels.npy`` (N,)
    and, when given, ``tile_sources.npy`` (N,) (absolute image paths)."""
    folder = Path(folder)
    if not len(features) == len(tile_ids) == len(labels):
        raise FileFormatError(
            f"{folder}: {len(features)} features, {len(tile_ids)} ids, {len(labels)} labels"
        )
    arrays = [(TILE_FEATURES, np.asarray(features)), (TILE_IDS, np.asarray(tile_ids, dtype=str)),
              (TILE_LABELS, np.asarray(labels, dtype=str))]
    if sources is not None:
        if len(sources) != len(tile_ids):
            raise FileFormatError(f"{folder}: {len(sources)} sources for {len(tile_ids)} ids")
        arrays.append((TILE_SOURCES, np.asarray(sources, dtype=str)))
    for name, arr in arrays:
        write_tile_array(folder, name, arr)
    return folder


def write_tile_array(folder: str | Path, name: str, array: np.ndarray) -> Path:
    """One ``.npy`` of a tile-level folder, atomically (e.g. new labels, no new features)."""
    path = Path(folder) / name
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array))
    return path


def read_tile_features(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, D), tile_ids (N,), labels (N,)) of a tile-level folder."""
    folder = Path(folder)
    paths = [folder / n for n in (TILE_FEATURES, TILE_IDS, TILE_LABELS)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileFormatError(f"{folder} has no {missing}")
    return tuple(np.load(p) for p in paths)  # type: ignore[return-value]


@dataclass(frozen=True)
class FeatureProvenance:
    """Which model made some features: encoder name and weights fingerprint (None = unknown)."""

    encoder: str | None = None
    weights_sha256: str | None = None
    source: str = ""  # where it was read (meta.json, an h5 file) or what made it

    @property
    def known(self) -> bool:
        return bool(self.encoder or self.weights_sha256)

    def describe(self) -> str:
        if not self.known:
            return f"unknown model ({self.source or 'no provenance recorded'})"
        sha = (self.weights_sha256 or "?")[:12]
        return f"{self.encoder or '?'} (weights sha256 {sha})"


def provenance_from_attrs(attrs: dict[str, Any], source: str | Path = "") -> FeatureProvenance:
    """:class:`FeatureProvenance` from extraction attrs / meta (``encoder``, ``weights_sha256``)."""
    encoder = str(attrs.get("encoder") or "") or None
    sha = str(attrs.get("weights_sha256") or "") or None
    return FeatureProvenance(encoder, sha, str(source))


def read_tile_meta(folder: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a tile-level folder; ``{}`` when there is none."""
    path = Path(folder) / TILE_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path} is not readable JSON: {err}") from err


@dataclass
class TileFeatureSet:
    """A tile-level folder: features, ids, labels and where they come from.

    ``labels`` is None for an unlabelled dataset (``meta.json`` ``labelled: false``,
    e.g. images embedded for retrieval). ``sources`` are the tiles' absolute
    image paths when extraction recorded them (None otherwise); ``dataset`` is the
    dataset name of ``meta.json`` (else the folder name).
    """

    features: np.ndarray                 # (N, D)
    tile_ids: np.ndarray                 # (N,) str, as written (relative to the dataset)
    labels: np.ndarray | None            # (N,) str
    provenance: FeatureProvenance
    dataset: str = ""
    sources: np.ndarray | None = None    # (N,) str
    meta: dict[str, Any] = field(default_factory=dict)
    folder: str = ""

    def __len__(self) -> int:
        return len(self.tile_ids)

    @property
    def qualified_ids(self) -> np.ndarray:
        """``<dataset>:<tile_id>``: equal relative ids of two datasets differ."""
        return np.char.add(f"{self.dataset}:", self.tile_ids.astype(str))


def tile_keys(*sets: TileFeatureSet) -> list[np.ndarray]:
    """Keys that identify the tiles of several sets against each other.

    The absolute source paths when every set recorded them (a tile listed by
    two datasets is the same key; equal relative names in two folders are
    not), else the dataset-qualified ids.
    """
    if all(s.sources is not None for s in sets):
        return [np.asarray(s.sources).astype(str) for s in sets]
    return [s.qualified_ids for s in sets]


def read_tile_feature_set(folder: str | Path) -> TileFeatureSet:
    """Read a tile-level folder with its provenance (:class:`TileFeatureSet`)."""
    folder = Path(folder)
    feats, ids, labels = read_tile_features(folder)
    ids = np.asarray(ids).astype(str)
    meta = read_tile_meta(folder)
    sources = None
    if (folder / TILE_SOURCES).is_file():
        sources = np.load(folder / TILE_SOURCES).astype(str)
        if sources.shape != ids.shape:
            raise FileFormatError(f"{folder}: {TILE_SOURCES} has {sources.size} rows for "
                                  f"{ids.size} ids")
    labelled = bool(meta.get("labelled", True))
    return TileFeatureSet(
        features=feats, tile_ids=ids, labels=np.asarray(labels).astype(str) if labelled else None,
        provenance=provenance_from_attrs(meta, folder / TILE_META if meta else folder),
        dataset=str(meta.get("dataset") or folder.name), sources=sources, meta=meta,
        folder=str(folder),
    )
