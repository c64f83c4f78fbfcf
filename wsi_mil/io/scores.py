"""Per-tile scores of many slides in one h5 file, written one slide at a time.

Layout of ``<name>.h5``: root attrs ``classes`` (json list) and ``columns``
(what the values are, e.g. ``cosine``); one dataset per slide, named by its
position (``s000000``, ...) with attr ``slide_id``, shape (N_tiles, C) float32,
rows in the order of the slide's feature file. Written atomically: the file
appears complete on close, or not at all.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from wsi_mil.errors import FileFormatError
from wsi_mil.io.atomic import atomic_path


class TileScoreWriter:
    """Appends one slide's (N, C) scores at a time (see the module docstring)."""

    def __init__(self, file: h5py.File, classes: Sequence[str]) -> None:
        self.file = file
        self.classes = [str(c) for c in classes]
        self.n_slides = 0

    def write(self, slide_id: str, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 2 or scores.shape[1] != len(self.classes):
            raise FileFormatError(f"scores of slide {slide_id!r} have shape {scores.shape}; "
                                  f"expected (N, {len(self.classes)})")
        ds = self.file.create_dataset(f"s{self.n_slides:06d}", data=scores)
        ds.attrs["slide_id"] = str(slide_id)
        self.n_slides += 1


@contextlib.contextmanager
def open_tile_score_writer(path: str | Path, classes: Sequence[str],
                           columns: str = "cosine") -> Iterator[TileScoreWriter]:
    """Context manager yielding a :class:`TileScoreWriter` on a temporary file, renamed on exit."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["classes"] = json.dumps([str(c) for c in classes])
        f.attrs["columns"] = columns
        yield TileScoreWriter(f, classes)


def read_tile_scores(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(classes, {slide_id: (N, C) scores}) of a file written by :func:`open_tile_score_writer`."""
    try:
        with h5py.File(path, "r") as f:
            classes = json.loads(f.attrs["classes"])
            return classes, {str(f[k].attrs["slide_id"]): f[k][()] for k in sorted(f)}
    except (OSError, KeyError) as err:
        raise FileFormatError(f"{path} is not a tile score file: {err}") from err
