"""Stream the tiles of many slides as uint8 batches, read in DataLoader workers.

Work is cut into :class:`WorkItem` s (a slide, or a band of its tiles in raster
order) dealt round-robin to the DataLoader workers; each worker opens its own
slide handle (:class:`~wsi_mil.encoders.tile_reader.TileReader`) per item and
yields batches of one item, so reading overlaps inference in the main process.
Stored tiles are decoded at most once per item: a band boundary may decode one
row of stored tiles twice.

A batch is a dict ``{"slide": int, "index": LongTensor (B,), "tiles": uint8
(B, T, T, 3)}``; a slide that cannot be read (or has a corrupt stored tile, or
whose sampled tiles disagree with OpenSlide: ``verify_tiles``) yields
``{"slide": int, "error": str}`` once, and the consumer records the failure and
goes on.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wsi_mil.encoders.tile_reader import TileReader, read_order, verify_sample


@dataclass
class WorkItem:
    slide: int               # position of the slide in the caller's list
    slide_path: str
    coords: np.ndarray       # (n, 3) coords rows of this item
    indices: np.ndarray      # (n,) their row numbers in the slide's coords file
    tile_size: int
    verify: np.ndarray | None = None  # rows of ``coords`` compared with OpenSlide's get_tile


def make_work_items(slides: list[tuple[int, str | Path, np.ndarray, int]],
                    chunk_tiles: int | None = None, verify_tiles: int = 0) -> list[WorkItem]:
    """Split each ``(slide, path, coords (N, 3), tile_size)`` into raster-order bands.

    ``chunk_tiles=None`` keeps one item per slide (every stored tile decoded once).
    ``verify_tiles``: tiles per slide (spread over it) compared with OpenSlide's get_tile.
    """
    items = []
    for slide, path, coords, tile_size in slides:
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
        order = read_order(coords)
        checked = np.isin(np.arange(len(coords)), verify_sample(coords, int(verify_tiles)))
        step = len(order) if not chunk_tiles else max(int(chunk_tiles), 1)
        for start in range(0, len(order), max(step, 1)):
            sel = order[start:start + step]
            items.append(WorkItem(slide, str(path), coords[sel], sel, int(tile_size),
                                  np.flatnonzero(checked[sel])))
    return items


class TileStream(IterableDataset):
    """Batches of tiles of the given work items; workers share the items round-robin."""

    def __init__(self, items: list[WorkItem], batch_size: int, mode: str = "fast",
                 resample: str = "dct", backend: str = "auto") -> None:
        super().__init__()
        self.items = items
        self.batch_size = int(batch_size)
        self.reader_kwargs = {"mode": mode, "resample": resample, "backend": backend}

    def _my_items(self) -> list[WorkItem]:
        info = get_worker_info()
        if info is None:
            return self.items
        return self.items[info.id::info.num_workers]

    def __iter__(self) -> Iterator[dict]:
        if get_worker_info() is not None:
            torch.set_num_threads(1)  # workers decode; the main process runs the model
        for item in self._my_items():
            yield from self._iter_item(item)

    def _iter_item(self, item: WorkItem) -> Iterator[dict]:
        t = item.tile_size
        tiles = np.empty((self.batch_size, t, t, 3), np.uint8)
        index = np.empty(self.batch_size, np.int64)
        n = 0
        try:
            with TileReader(item.slide_path, item.coords, t, verify=item.verify,
                            **self.reader_kwargs) as reader:
                for local, tile in reader.iter_tiles():
                    tiles[n], index[n] = tile, item.indices[local]
                    n += 1
                    if n == self.batch_size:
                        yield self._batch(item.slide, index[:n], tiles[:n])
                        tiles = np.empty_like(tiles)
                        n = 0
        except Exception as err:  # noqa: BLE001 - forwarded: the consumer records it
            yield {"slide": item.slide, "error": f"{type(err).__name__}: {err}"}
            return
        if n:
            yield self._batch(item.slide, index[:n], tiles[:n])

    @staticmethod
    def _batch(slide: int, index: np.ndarray, tiles: np.ndarray) -> dict:
        return {"slide": slide, "index": torch.from_numpy(index.copy()),
                "tiles": torch.from_numpy(tiles)}


def make_tile_loader(items: list[WorkItem], batch_size: int, num_workers: int,
                     pin_memory: bool = False, mode: str = "fast", resample: str = "dct",
                     backend: str = "auto") -> DataLoader:
    """A DataLoader over :class:`TileStream` (batches are made by the dataset)."""
    stream = TileStream(items, batch_size, mode=mode, resample=resample, backend=backend)
    return DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
