"""Python values <-> h5 attributes, one rule for every h5 file wsi_mil writes or reads."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np


def to_h5_attr(value: Any) -> Any:
    """None -> "", Path -> str, dict -> sorted json, list/tuple -> array, numpy scalar -> Python."""
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_h5_attr(value: Any) -> Any:
    """bytes -> str, array -> list, numpy scalar -> Python."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_h5_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """All attributes of an open h5 file / group / dataset as plain Python values."""
    return {k: from_h5_attr(v) for k, v in obj.attrs.items()}


@contextlib.contextmanager
def open_h5(path: str | Path, what: str = "h5 file") -> Iterator[h5py.File]:
    """``h5py.File(path, "r")`` whose read errors (truncated, not HDF5, unreadable) are a
    :class:`~wsi_mil.errors.FileFormatError` naming the file and the fix."""
    from wsi_mil.errors import FileFormatError

    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as err:
        raise FileFormatError(f"{path} is not a readable {what} ({err}); rerun the stage that "
                              "wrote it (or delete the file)") from err
