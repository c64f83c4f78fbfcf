"""Read the tile features of one slide from any supported layout.

Formats (``source``):

- ``"wsi_mil"``: this package's ``<dir>/<slide_id>.h5`` with dataset
  ``features`` (N, D) and root attribute ``wsi_mil_version``;
- ``"reference"``: the reference layout ``<dir>/<slide_id>/features.npy``
  (N, 3 + D) whose first 3 columns are (dz_level, col, row) and are dropped;
- ``"trident"``: TRIDENT / CLAM ``<dir>/<slide_id>.h5`` with datasets
  ``features`` (N, D) or (1, N, D) and ``coords``, no ``wsi_mil_version``.

``"auto"`` looks at the folder once (:func:`detect_feature_source`).
:func:`read_slide_provenance` says which encoder / weights made a slide's
features (h5 attributes; the reference layout's ``<slide_id>/meta.json``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsi_mil.errors import FileFormatError
from wsi_mil.io.features import FeatureProvenance, provenance_from_attrs
from wsi_mil.io.h5attrs import open_h5, read_h5_attrs

SOURCES = ("wsi_mil", "reference", "trident")
_REF_META_COLS = 3


def detect_feature_source(features_dir: str | Path) -> str:
    """Guess the layout of ``features_dir`` from its first feature file."""
    root = Path(features_dir)
    if not root.is_dir():
        raise FileFormatError(f"features_dir {str(root)!r} is not a folder")
    h5 = sorted(p for p in root.glob("*.h5") if not p.name.startswith("."))
    if h5:
        with open_h5(h5[0], "h5 feature file") as f:
            if "features" not in f:
                raise FileFormatError(f"{h5[0]} has no 'features' dataset; datasets: {list(f)}")
            return "wsi_mil" if "wsi_mil_version" in f.attrs else "trident"
    if next(root.glob("*/features.npy"), None) is not None:
        return "reference"
    raise FileFormatError(
        f"no feature file in {str(root)!r}: expected <slide_id>.h5 (wsi_mil / TRIDENT / CLAM) "
        "or <slide_id>/features.npy (reference layout)"
    )


def resolve_source(features_dir: str | Path, source: str = "auto") -> str:
    if source == "auto":
        return detect_feature_source(features_dir)
    if source not in SOURCES:
        raise FileFormatError(f"feature_source {source!r}; choose 'auto' or one of {SOURCES}")
    return source


def feature_file(features_dir: str | Path, slide_id: str, source: str) -> Path:
    root = Path(features_dir)
    if source == "reference":
        return root / slide_id / "features.npy"
    return root / f"{slide_id}.h5"


def list_feature_slides(features_dir: str | Path, source: str) -> set[str]:
    """Slide ids having a feature file in ``features_dir``."""
    root = Path(features_dir)
    if source == "reference":
        return {p.parent.name for p in root.glob("*/features.npy")}
    return {p.stem for p in root.glob("*.h5") if not p.name.startswith(".")}


def _h5_features(f: h5py.File, path: Path) -> h5py.Dataset:
    if "features" not in f:
        raise FileFormatError(f"{path} has no 'features' dataset; datasets: {list(f)}")
    ds = f["features"]
    if ds.ndim == 3 and ds.shape[0] == 1:
        return ds
    if ds.ndim != 2:
        raise FileFormatError(f"{path}: 'features' has shape {ds.shape}; expected (N, D) or (1, N, D)")
    return ds


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise FileFormatError(f"{path} is not a readable .npy feature file ({err}); rerun the "
                              "extraction that wrote it (or delete the file)") from err


def feature_shape(features_dir: str | Path, slide_id: str, source: str) -> tuple[int, int]:
    """(N tiles, D) without reading the features."""
    path = feature_file(features_dir, slide_id, source)
    if source == "reference":
        arr = _load_npy(path)
        if arr.ndim != 2 or arr.shape[1] <= _REF_META_COLS:
            raise FileFormatError(f"{path}: shape {arr.shape}; expected (N, 3 + D)")
        return int(arr.shape[0]), int(arr.shape[1] - _REF_META_COLS)
    with open_h5(path, "h5 feature file") as f:
        shape = _h5_features(f, path).shape
    return (int(shape[-2]), int(shape[-1]))


def read_slide_features(
    features_dir: str | Path, slide_id: str, source: str = "auto"
) -> np.ndarray:
    """Features (N, D) of one slide, in the file's dtype."""
    source = resolve_source(features_dir, source)
    path = feature_file(features_dir, slide_id, source)
    if not path.is_file():
        raise FileFormatError(f"no {source} feature file for slide {slide_id!r}: {path}")
    if source == "reference":
        arr = _load_npy(path)
        if arr.ndim != 2 or arr.shape[1] <= _REF_META_COLS:
            raise FileFormatError(f"{path}: shape {arr.shape}; expected (N, 3 + D)")
        return np.ascontiguousarray(arr[:, _REF_META_COLS:])
    with open_h5(path, "h5 feature file") as f:
        ds = _h5_features(f, path)
        arr = ds[0] if ds.ndim == 3 else ds[()]
    return arr


def read_slide_provenance(
    features_dir: str | Path, slide_id: str, source: str = "auto"
) -> FeatureProvenance:
    """Encoder and weights fingerprint recorded with one slide's features (None = not recorded)."""
    source = resolve_source(features_dir, source)
    path = feature_file(features_dir, slide_id, source)
    if source == "reference":
        meta = path.with_name("meta.json")
        try:
            attrs = json.loads(meta.read_text()) if meta.is_file() else {}
        except (OSError, json.JSONDecodeError) as err:
            raise FileFormatError(f"{meta} is not readable JSON: {err}") from err
        return provenance_from_attrs(attrs, meta if attrs else path)
    with open_h5(path, "h5 feature file") as f:
        attrs = read_h5_attrs(f)
    return provenance_from_attrs(attrs, path)


@dataclass
class SlideBag:
    """One slide's tile features and where the tiles are (level-0 pixels)."""

    slide_id: str
    features: np.ndarray       # (N, D) float32
    coords_level0: np.ndarray  # (N, 2) int64, top-left (x, y)
    attrs: dict[str, Any] = field(default_factory=dict)


def read_slide_bag(path: str | Path) -> SlideBag:
    """Features and level-0 tile positions from our h5 (``coords_level0``) or a
    TRIDENT / CLAM h5 (``coords`` (N, 2) = level-0 x, y)."""
    path = Path(path)
    with open_h5(path, "h5 feature file") as f:
        ds = _h5_features(f, path)
        features = np.asarray(ds[0] if ds.ndim == 3 else ds[()], dtype=np.float32)
        if "coords_level0" in f:
            coords = np.asarray(f["coords_level0"][()], dtype=np.int64)
        elif "coords" in f and f["coords"].shape[-1] == 2:
            coords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
        else:
            raise FileFormatError(f"{path} has no level-0 tile coordinates (coords_level0)")
        attrs = read_h5_attrs(f)
    if len(features) != len(coords):
        raise FileFormatError(f"{path}: features {features.shape} do not match coords {coords.shape}")
    return SlideBag(slide_id=path.stem, features=features, coords_level0=coords, attrs=attrs)
