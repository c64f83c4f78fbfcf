"""Fault injection for tests: damage the stored JPEG tiles of a slide written by tifffile.

Every function edits the file in place and keeps its size and TIFF structure, so
the slide still opens; only the entropy-coded data of the chosen stored tiles of
one page (pyramid level) changes:

* :func:`flip_tile_bytes`: XOR 0xFF into ``n_bytes`` bytes of each tile's scan
  data (a disk or transfer error);
* :func:`truncate_tile_data`: an early end-of-image marker after ``keep`` of the
  scan data, zeros after it (a tile cut short).

Tiles are numbered row-major over the page's tile grid (``index = row * n_cols + col``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

SOS = 0xDA  # start-of-scan marker


def stored_tiles(path: str | Path, page: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(offsets (T,), byte counts (T,), n_cols) of the stored tiles of ``page``."""
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        n_cols = -(-int(p.imagewidth) // int(p.tilewidth))
        return (np.asarray(p.dataoffsets, np.int64), np.asarray(p.databytecounts, np.int64),
                n_cols)


def scan_start(tile: bytes) -> int:
    """Offset of the first entropy-coded byte of a JPEG stream (after the SOS header)."""
    pos = 2  # after SOI
    while pos + 4 <= len(tile):
        if tile[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = tile[pos + 1]
        length = int.from_bytes(tile[pos + 2:pos + 4], "big")
        if marker == SOS:
            return pos + 2 + length
        pos += 2 + length
    raise ValueError("no start-of-scan marker in the tile")


def _edit(path: Path, tiles: Sequence[int], page: int, edit) -> None:
    offsets, counts, _ = stored_tiles(path, page)
    with open(path, "r+b") as f:
        for index in tiles:
            f.seek(int(offsets[index]))
            data = bytearray(f.read(int(counts[index])))
            edit(data, scan_start(bytes(data)))
            f.seek(int(offsets[index]))
            f.write(data)


def flip_tile_bytes(path: str | Path, tiles: Sequence[int], n_bytes: int = 8, seed: int = 0,
                    page: int = 0) -> None:
    """XOR 0xFF into ``n_bytes`` random bytes of the scan data of each tile in ``tiles``."""
    rng = np.random.default_rng(seed)

    def edit(data: bytearray, start: int) -> None:
        for k in rng.choice(np.arange(start, len(data) - 2), n_bytes, replace=False):
            data[k] ^= 0xFF

    _edit(Path(path), tiles, page, edit)


def truncate_tile_data(path: str | Path, tiles: Sequence[int], keep: float = 0.5,
                       page: int = 0) -> None:
    """End each tile's scan data after ``keep`` (0..1) of it: EOI marker, then zeros."""

    def edit(data: bytearray, start: int) -> None:
        cut = start + int(keep * (len(data) - start))
        data[cut:] = b"\xff\xd9" + bytes(len(data) - cut - 2)

    _edit(Path(path), tiles, page, edit)
