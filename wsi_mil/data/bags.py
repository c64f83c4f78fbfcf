"""Feature bags of a cohort held once in memory, sampled and padded per batch.

:class:`BagStore` keeps the tile features of *all* slides in one contiguous
array (``features`` (sum N_i, D), float32 by default: what the CPU computes
in, so batches need no cast) plus ``offsets``; every fit of a
cross-validation reads from it, so features are read from disk once. Rows
must be finite: a NaN or inf (or a value that overflows the store's dtype)
is refused with the slide ids when the store is built.

Batches are assembled by :func:`assemble` into a reusable buffer
(:class:`BatchBuffer`) from index arrays: one tile sample per bag, no Python
lists of feature rows, no fresh allocation per batch. :func:`assemble_packed`
gives the same bags without padding, each stream's bags one after another
(the layout of :class:`~wsi_mil.models.layers.Packing`).
The store can be moved to a read-only memory-mapped ``.npy`` file
(:meth:`BagStore.to_memmap`) so that worker processes share the same pages
instead of receiving a copy: pickling such a store sends only the file path.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from wsi_mil.data.scaling import FeatureScaler
from wsi_mil.errors import ConfigError, EmptyBagError, FileFormatError, NonFiniteFeaturesError
from wsi_mil.io.feature_sources import feature_shape, read_slide_features, resolve_source

SAMPLING = ("random", "fixed", "first")
FIXED_SAMPLE_SEED = 0  # tile_sampling="fixed": one seeded sample per slide, whatever the CV seed


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
                    dtype: str | np.dtype = "float32") -> BagStore:
        sizes = np.array([b.shape[0] for b in bags], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        dim = bags[0].shape[1]
        features = np.empty((int(offsets[-1]), dim), dtype=dtype)
        for i, b in enumerate(bags):
            features[offsets[i]:offsets[i + 1]] = b
        store = cls(features, offsets, slide_ids)
        store._check_nonempty()
        bad = [f"{slide_ids[i]} ({n} row(s))" for i in range(len(bags))
               if (n := _count_nonfinite(features[offsets[i]:offsets[i + 1]]))]
        if bad:
            raise NonFiniteFeaturesError(f"features are not finite for slide(s) {', '.join(bad[:10])}; "
                                         "re-extract them (or drop them from the cohort)")
        return store

    @classmethod
    def from_dir(cls, features_dir: str | Path, slide_ids: Sequence[str], source: str = "auto",
                 dtype: str | np.dtype = "float32", memmap_path: str | Path | None = None) -> BagStore:
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
        bad: list[str] = []
        for i, s in enumerate(slide_ids):
            rows = read_slide_features(features_dir, s, source)
            features[offsets[i]:offsets[i + 1]] = rows
            n_bad = _count_nonfinite(features[offsets[i]:offsets[i + 1]])
            if n_bad:
                n_src = _count_nonfinite(np.asarray(rows))
                why = "non-finite" if n_src else f"overflowing {np.dtype(dtype).name}"
                bad.append(f"{s} ({n_bad} {why} row(s))")
        if bad:
            raise NonFiniteFeaturesError(
                f"features of {len(bad)} slide(s) in {features_dir} are not finite: {', '.join(bad[:10])}"
                f"{' ...' if len(bad) > 10 else ''}; re-extract them (or drop them from the cohort)"
                + ("" if np.dtype(dtype) == np.float32 else "; with float16, use feature_dtype=float32")
            )
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
        state.pop("_tensor", None)
        state.pop("_means", None)
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

    @property
    def tensor(self) -> torch.Tensor:
        """``features`` as a torch tensor sharing its memory (read-only use)."""
        if getattr(self, "_tensor", None) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only memmap: we never write
                self._tensor = torch.from_numpy(np.asarray(self.features))
        return self._tensor

    def bag_means(self) -> torch.Tensor:
        """Mean tile of every bag ``(n_slides, D)`` float32 (computed once)."""
        if getattr(self, "_means", None) is None:
            feats = self.tensor
            self._means = torch.stack([feats[self.offsets[i]:self.offsets[i + 1]].float().mean(0)
                                       for i in range(len(self))])
        return self._means

    def slide_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per slide: tile count ``(S,)``, mean ``(S, D)`` and sum of squared deviations from it
        ``(S, D)``, float64 (computed once; kept when the store is sent to loop workers)."""
        if getattr(self, "_moments", None) is None:
            mean = np.empty((len(self), self.dim))
            m2 = np.empty((len(self), self.dim))
            for i in range(len(self)):
                bag = np.asarray(self.bag(i), dtype=np.float64)  # (N_i, D)
                mean[i] = bag.mean(0)
                m2[i] = ((bag - mean[i]) ** 2).sum(0)
            self._moments = (self.n_tiles.astype(np.float64), mean, m2)
        return self._moments


def sample_tiles(n: int, n_tiles: int | None, rng: np.random.Generator | None,
                 mode: str = "random", slide: int = 0) -> np.ndarray:
    """Indices of at most ``n_tiles`` of a bag's ``n`` tiles.

    - ``random``: a new sample without replacement from ``rng`` at every call
      (every epoch);
    - ``fixed``: one random sample per slide, seeded by the slide's row
      ``slide`` only, the same at every epoch and evaluation: the reference's
      rule (it draws 1,000 tiles per slide once, at extraction);
    - ``first``: the first ``n_tiles`` rows of the feature file. Tiles are
      stored row-major, so this is the *top band* of the slide, not a sample.
    """
    if mode not in SAMPLING:
        raise ConfigError(f"tile_sampling {mode!r}; choose one of {SAMPLING}")
    if n_tiles is None or n_tiles <= 0 or n <= n_tiles:
        return np.arange(n)
    if mode == "fixed":
        rng = np.random.default_rng([FIXED_SAMPLE_SEED, int(slide)])
    elif mode == "first" or rng is None:
        return np.arange(n_tiles)
    return np.sort(rng.choice(n, size=n_tiles, replace=False))


def collate(store: BagStore, slide_idx: Sequence[int], n_tiles: int | None = None,
            rng: np.random.Generator | None = None, mode: str = "random", scaler: FeatureScaler | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch: x (B, Nmax, D) float32 with zeros after each bag, mask (B, Nmax) True = tile
    (standardised by ``scaler`` if given)."""
    x, mask = assemble(store, [pick_tiles(store, slide_idx, n_tiles, rng, mode)], scalers=[scaler])
    return x[0], mask[0]


def _count_nonfinite(rows: np.ndarray) -> int:
    """Number of rows of ``rows`` holding a NaN or an inf."""
    if rows.size == 0:
        return 0
    return int((~np.isfinite(rows)).any(axis=1).sum())


Pick = tuple[int, np.ndarray | None]  # (slide row, tile indices or None = the whole bag)


def pick_tiles(store: BagStore, slide_idx: Sequence[int], n_tiles: int | None,
               rng: np.random.Generator | None, mode: str = "random") -> list[Pick]:
    """One tile sample per slide, drawing from ``rng`` exactly as :func:`collate` does."""
    out: list[Pick] = []
    for i in slide_idx:
        n = int(store.n_tiles[i])
        p = sample_tiles(n, n_tiles, rng, mode, slide=int(i))
        out.append((int(i), None if len(p) == n else p))
    return out


class BatchBuffer:
    """Reusable memory for padded batches: grows when needed, never shrinks.

    :meth:`take` returns a *contiguous* tensor of the asked shape on the
    front of the buffer, so consecutive batches reuse the same pages.
    """

    def __init__(self) -> None:
        self._flat = torch.empty(0)
        self._mask = torch.empty(0, dtype=torch.bool)

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(np.prod(shape))
        if self._flat.numel() < n:
            self._flat = torch.empty(n)
        m = int(np.prod(shape[:-1]))
        if self._mask.numel() < m:
            self._mask = torch.empty(m, dtype=torch.bool)
        return self._flat[:n].view(shape), self._mask[:m].view(shape[:-1])


def assemble(store: BagStore, picks: Sequence[Sequence[Pick | None]], buffer: BatchBuffer | None = None,
             pooled: bool = False, scalers: Sequence[FeatureScaler | None] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded batches of S streams: ``x (S, B, N, D)`` float32, ``mask (S, B, N)``.

    ``picks[s][b]`` is bag b of stream s, or None for an empty slot (a
    1-tile bag of zeros, so that heads stay finite; the caller ignores its
    output). Padding is zero. ``pooled=True`` gives each bag as its mean tile
    ``(S, B, 1, D)`` (for heads with ``pools_by_mean``). ``scalers[s]``
    standardises stream s's tiles (the mean of scaled tiles is the scaled
    mean, so pooling is unaffected); padding stays zero.
    """
    x, mask = _assemble(store, picks, buffer, pooled)
    for s, scaler in enumerate(scalers or []):
        if scaler is not None:
            scaler.apply_(x[s], mask[s])
    return x, mask


def _assemble(store: BagStore, picks: Sequence[Sequence[Pick | None]], buffer: BatchBuffer | None,
              pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n_streams = len(picks)
    width = max((len(p) for p in picks), default=0)
    if pooled:
        n_max = 1
    else:
        n_max = max((int(store.n_tiles[i]) if t is None else len(t)
                     for p in picks for slot in p if slot is not None for i, t in [slot]), default=1)
    shape = (n_streams, width, n_max, store.dim)
    if buffer is None:
        x, mask = torch.empty(shape), torch.empty(shape[:-1], dtype=torch.bool)
    else:
        x, mask = buffer.take(shape)
    feats = store.tensor
    means = store.bag_means() if pooled else None
    if pooled and all(slot is not None and slot[1] is None for row in picks for slot in row) \
            and all(len(row) == width for row in picks):
        rows = torch.tensor([[slot[0] for slot in row] for row in picks], dtype=torch.long)  # (S, B)
        torch.index_select(means, 0, rows.view(-1), out=x.view(-1, store.dim))
        mask.fill_(True)
        return x, mask
    for s, row in enumerate(picks):
        for b in range(width):
            slot = row[b] if b < len(row) else None
            if slot is None:
                x[s, b].zero_()
                mask[s, b].zero_()
                mask[s, b, 0] = True
                continue
            i, tiles = slot
            start = int(store.offsets[i])
            if pooled:
                if tiles is None:
                    x[s, b, 0] = means[i]
                else:
                    x[s, b, 0] = feats[start + torch.from_numpy(tiles)].float().mean(0)
                mask[s, b, 0] = True
                continue
            n = int(store.n_tiles[i]) if tiles is None else len(tiles)
            if tiles is None:
                x[s, b, :n].copy_(feats[start:start + n])
            else:
                x[s, b, :n] = feats[start + torch.from_numpy(tiles)]
            if n < n_max:
                x[s, b, n:].zero_()
            mask[s, b, :n] = True
            mask[s, b, n:] = False
    return x, mask


def bag_sizes(store: BagStore, picks: Sequence[Sequence[Pick | None]]) -> np.ndarray:
    """Tiles per bag ``(S, B)`` of the batches ``picks`` (1 for an empty slot, as :func:`assemble`)."""
    width = max((len(p) for p in picks), default=0)
    sizes = np.ones((len(picks), width), dtype=np.int64)
    n_tiles = store.n_tiles
    for s, row in enumerate(picks):
        for b, slot in enumerate(row):
            if slot is not None:
                i, tiles = slot
                sizes[s, b] = n_tiles[i] if tiles is None else len(tiles)
    return sizes


def assemble_packed(store: BagStore, picks: Sequence[Sequence[Pick | None]],
                    buffer: BatchBuffer | None = None, scalers: Sequence[FeatureScaler | None] | None = None
                    ) -> tuple[torch.Tensor, np.ndarray]:
    """Packed batches of S streams: ``x (S, T, D)`` float32 and ``sizes (S, B)``.

    Stream s holds its bags one after another, bag b's ``sizes[s, b]``
    tiles (the tiles :func:`assemble` gives it, in the same order), then
    zeros up to T, the largest total of a stream. An empty slot is a 1-tile
    bag of zeros, as in :func:`assemble`. ``scalers[s]`` standardises stream
    s's tiles (padding rows stay zero).
    """
    sizes = bag_sizes(store, picks)  # (S, B)
    totals = sizes.sum(1)  # (S,)
    n_rows = max(1, int(totals.max(initial=1)))
    x = torch.empty(len(picks), n_rows, store.dim) if buffer is None else buffer.take((len(picks), n_rows, store.dim))[0]
    rows = np.zeros((len(picks), n_rows), dtype=np.int64)  # row of the store of each packed row (0 = zero later)
    zero = np.ones((len(picks), n_rows), dtype=bool)  # padding rows and empty slots
    for s, row in enumerate(picks):
        start = 0
        for b in range(sizes.shape[1]):
            slot = row[b] if b < len(row) else None
            n = int(sizes[s, b])
            if slot is not None:
                i, tiles = slot
                first = int(store.offsets[i])
                rows[s, start:start + n] = np.arange(first, first + n) if tiles is None else first + tiles
                zero[s, start:start + n] = False
            start += n
    flat = x.view(-1, store.dim)  # (S * T, D)
    feats = store.tensor
    index = torch.from_numpy(rows.reshape(-1))
    if feats.dtype == x.dtype:
        torch.index_select(feats, 0, index, out=flat)
    else:
        flat.copy_(feats[index])
    for s, scaler in enumerate(scalers or []):
        if scaler is not None:
            scaler.apply_(x[s])
    if zero.any():
        flat[torch.from_numpy(np.flatnonzero(zero))] = 0.0
    return x, sizes
