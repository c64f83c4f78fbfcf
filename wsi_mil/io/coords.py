"""Tile coordinate files: ``<tiling_root>/coords/<slide_id>.h5`` (and the reference ``.npy``).

h5 layout:

* ``coords`` (N, 3) int64 = (dz_level, col, row): the address
  ``DeepZoomGenerator(osr, tile_size, overlap=0, limit_bounds=False).get_tile`` takes;
* ``coords_level0`` (N, 2) int64 = level-0 (x, y) px of each tile's top-left;
* attrs: tile_size, target_mpp, slide_mpp, dz_level, downsample, read_level,
  tissue params (json), slide_width, slide_height, quickhash, wsi_mil_version,
  slide_path (and a few more written by the tiling stage).

Reference layout (rl_benchmarks): ``.../<slide_id>/coords.npy`` = (N, 3) of
(dz_level, col, row). All writes are atomic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsi_mil.errors import FileFormatError
from wsi_mil.io.atomic import atomic_path, write_h5_atomic
from wsi_mil.io.h5attrs import read_h5_attrs, to_h5_attr
from wsi_mil.version import __version__

REQUIRED_ATTRS = ("tile_size", "target_mpp", "slide_mpp", "dz_level")


@dataclass
class CoordsFile:
    """Contents of a coords h5: ``coords`` (N, 3), ``coords_level0`` (N, 2), ``attrs``."""

    coords: np.ndarray
    coords_level0: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)


def _check_arrays(coords: np.ndarray, coords_level0: np.ndarray, where: str) -> None:
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise FileFormatError(f"{where}: coords must be (N, 3), got {coords.shape}")
    if coords_level0.ndim != 2 or coords_level0.shape[1] != 2:
        raise FileFormatError(f"{where}: coords_level0 must be (N, 2), got {coords_level0.shape}")
    if len(coords) != len(coords_level0):
        raise FileFormatError(f"{where}: {len(coords)} coords but {len(coords_level0)} "
                              "coords_level0 rows")


def write_coords(path: str | Path, coords: np.ndarray, coords_level0: np.ndarray,
                 attrs: dict[str, Any]) -> None:
    """Write a coords h5 atomically (temp file, then rename); adds ``wsi_mil_version``."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    coords_level0 = np.asarray(coords_level0, dtype=np.int64).reshape(-1, 2)
    _check_arrays(coords, coords_level0, str(path))

    def fill(f: h5py.File) -> None:
        f.create_dataset("coords", data=coords)
        f.create_dataset("coords_level0", data=coords_level0)
        f.attrs["wsi_mil_version"] = __version__
        for key, value in attrs.items():
            f.attrs[key] = to_h5_attr(value)

    write_h5_atomic(path, fill)


def read_coords(path: str | Path) -> CoordsFile:
    """Read a coords h5; :class:`FileFormatError` if it is unreadable or has another layout."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("coords", "coords_level0") if k not in f]
            if missing:
                raise FileFormatError(f"{path}: not a coords file, missing dataset(s) {missing} "
                                      f"(found {sorted(f.keys())})")
            coords = np.asarray(f["coords"][()], dtype=np.int64)
            coords_level0 = np.asarray(f["coords_level0"][()], dtype=np.int64)
            attrs = read_h5_attrs(f)
    except OSError as err:
        raise FileFormatError(f"{path}: cannot read coords h5: {err}") from err
    _check_arrays(coords, coords_level0, str(path))
    absent = [k for k in REQUIRED_ATTRS if k not in attrs]
    if absent:
        raise FileFormatError(f"{path}: coords file lacks attribute(s) {absent}")
    return CoordsFile(coords, coords_level0, attrs)


def write_reference_coords(path: str | Path, coords: np.ndarray) -> None:
    """Reference layout ``coords.npy``: (N, 3) int64 (dz_level, col, row), atomic."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    with atomic_path(path) as tmp:
        np.save(tmp, coords)


def read_reference_coords(path: str | Path) -> np.ndarray:
    """Read a reference ``coords.npy``; :class:`FileFormatError` unless it is (N, >=3)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FileFormatError(f"{path}: cannot read reference coords: {err}") from err
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise FileFormatError(f"{path}: reference coords must be (N, 3), got {arr.shape}")
    return arr[:, :3].astype(np.int64)
