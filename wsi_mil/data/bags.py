"""Feature bags of a cohort held once in memory, sampled and padded per batch.

:class:`BagStore` keeps the tile features of *all* slides in one contiguous
array (``features`` (sum N_i, D), float16 by default) plus ``offsets``; every
fit of a cross-validation reads from it, so features are read from disk once.
The store can be moved to a read-only memory-mapped ``.npy`` file
(:meth:`BagStore.to_memmap`) so that worker processes share the same pages
instead of receiving a copy: pickling such a store sends only the file path.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from wsi_mil.errors import ConfigError, EmptyBagError, FileFormatError
from wsi_mil.io.feature_sources import feature_shape, read_slide_features, resolve_source

SAMPLING = ("random", "first")


class BagStore:
    """All bags of a cohort: ``features[offsets[i]:offsets[i + 1]]`` is slide i (N_i, D)."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray, slide_ids: Sequence[str],
                 memmap_path: str | Path | None = None) -> None:
        self.features = features
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.slide_ids = list(slide_ids)
        self.memmap_path = None if memmap_path is None else str(memmap_path)
        if self.offsets.shape != (len(self.slide_ids) + 1,):
            raise ValueError(f"offsets {self.offsets.shape} vs {len(self.slide_ids)} slides")

    # -- construction ------------------------------------------------------
    @classmethod
    def from_arrays(cls, bags: Sequence[np.ndarray], slide_ids: Sequence[str],
                    dtype: str | np.dtype = "float16") -> BagStore:
        sizes = np.array([b.shape[0] for b in bags], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        dim = bags[0].shape[1]
        features = np.empty((int(offsets[-1]), dim), dtype=dtype)
        for i, b in enumerate(bags):
            features[offsets[i]:offsets[i + 1]] = b
        store = cls(features, offsets, slide_ids)
        store._check_nonempty()
        return store

    @classmethod
    def from_dir(cls, features_dir: str | Path, slide_ids: Sequence[str], source: str = "auto",
                 dtype: str | np.dtype = "float16", memmap_path: str | Path | None = None) -> BagStore:
        """Read the features of ``slide_ids`` once, into one preallocated array.

        With ``memmap_path``, the array is a ``.npy`` file filled in place and
        re-opened read-only (no anonymous copy in memory; shareable by processes).
        """
        source = resolve_source(features_dir, source)
        shapes = [feature_shape(features_dir, s, source) for s in slide_ids]
        dims = {d for _, d in shapes}
        if len(dims) != 1:
            raise FileFormatError(f"feature dimensions differ across slides of {features_dir}: {sorted(dims)}")
        offsets = np.concatenate([[0], np.cumsum([n for n, _ in shapes])]).astype(np.int64)
        shape = (int(offsets[-1]), dims.pop())
        if memmap_path is None:
            features = np.empty(shape, dtype=dtype)
        else:
            Path(memmap_path).parent.mkdir(parents=True, exist_ok=True)
            features = np.lib.format.open_memmap(memmap_path, mode="w+", dtype=dtype, shape=shape)
        for i, s in enumerate(slide_ids):
            features[offsets[i]:offsets[i + 1]] = read_slide_features(features_dir, s, source)
        if memmap_path is not None:
            features.flush()
            del features
            features = np.load(memmap_path, mmap_mode="r")
        store = cls(features, offsets, slide_ids, memmap_path=memmap_path)
        store._check_nonempty()
        logger.info("loaded {} bags, {} tiles x {} ({}, {:.1f} MB) from {} ({})", len(slide_ids),
                    features.shape[0], features.shape[1], features.dtype, store.nbytes / 1e6,
                    features_dir, source)
        return store

    def _check_nonempty(self) -> None:
        empty = np.flatnonzero(np.diff(self.offsets) == 0)
        if empty.size:
            raise EmptyBagError(f"slides without tiles: {[self.slide_ids[i] for i in empty[:10]]}")

    def to_memmap(self, path: str | Path) -> BagStore:
        """Write ``features`` to ``path`` (.npy) and return a store reading it memory-mapped."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.features)
        return BagStore(np.load(path, mmap_mode="r"), self.offsets, self.slide_ids, memmap_path=path)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.memmap_path is not None:
            state["features"] = None  # re-opened from the file by the worker
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.features is None:
            self.features = np.load(self.memmap_path, mmap_mode="r")

    # -- access --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.slide_ids)

    def __repr__(self) -> str:
        return (f"BagStore(slides={len(self)}, tiles={self.features.shape[0]}, dim={self.dim}, "
                f"dtype={self.features.dtype}, memmap={self.memmap_path is not None})")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)

    @property
    def n_tiles(self) -> np.ndarray:
        return np.diff(self.offsets)

    def bag(self, i: int) -> np.ndarray:
        """Features (N_i, D) of slide i (a view)."""
        return self.features[self.offsets[i]:self.offsets[i + 1]]


def sample_tiles(n: int, n_tiles: int | None, rng: np.random.Generator | None,
                 mode: str = "random") -> np.ndarray:
    """Indices of at most ``n_tiles`` of ``n`` tiles: random without replacement, or the first ones."""
    if mode not in SAMPLING:
        raise ConfigError(f"tile_sampling {mode!r}; choose one of {SAMPLING}")
    if n_tiles is None or n_tiles <= 0 or n <= n_tiles:
        return np.arange(n)
    if mode == "first" or rng is None:
        return np.arange(n_tiles)
    return np.sort(rng.choice(n, size=n_tiles, replace=False))


def collate(store: BagStore, slide_idx: Sequence[int], n_tiles: int | None = None,
            rng: np.random.Generator | None = None, mode: str = "random"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch: x (B, Nmax, D) float32 with zeros after each bag, mask (B, Nmax) True = tile."""
    picks = [sample_tiles(int(store.n_tiles[i]), n_tiles, rng, mode) for i in slide_idx]
    n_max = max(len(p) for p in picks)
    x = np.zeros((len(picks), n_max, store.dim), dtype=np.float32)  # (B, Nmax, D)
    mask = np.zeros((len(picks), n_max), dtype=bool)  # (B, Nmax)
    for b, (i, p) in enumerate(zip(slide_idx, picks, strict=True)):
        start = int(store.offsets[i])
        if len(p) == store.n_tiles[i]:
            x[b, : len(p)] = store.features[start:start + len(p)]
        else:
            x[b, : len(p)] = store.features[start + p]
        mask[b, : len(p)] = True
    return torch.from_numpy(x), torch.from_numpy(mask)
