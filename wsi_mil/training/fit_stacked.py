"""Many fits of one head trained together as one stacked model.

The models form a grid ``(G, S)``: S *streams* (a training set, an optional
validation set and a seed, e.g. the inner folds of an outer fold) times G
rows (e.g. grid points of learning rate x weight decay). Model ``(g, s)``
trains on stream s with its own learning rate, weight decay and number of
epochs. Everything random comes from the stream's seed exactly as in
:func:`wsi_mil.training.fit.fit`: the same initial weights, the same
minibatch order and the same tile samples, drawn from the same numpy
generator in the same order, and (``params.standardize``) the same feature
scaler, fitted on the stream's training slides. So the G models of a stream share one batch
assembly per step, and every model sees what its one-at-a-time fit would see
(:func:`fit_stacked` == :func:`~wsi_mil.training.fit.fit` per model, to
float rounding; tested). Only dropout masks differ: torch draws them for
the whole stacked batch.

Per step: one batch per stream from the store, the G x S models' forward
and backward over the folded batch (in chunks of rows when the folded batch
would exceed ``chunk_bytes``), one
:class:`~wsi_mil.training.stacked.StackedAdam` step for all models that have
a batch this step and epochs left. After each epoch, every model scores its
stream's validation slides (the same tile samples every epoch, as
:func:`~wsi_mil.training.fit.predict`) -> curves ``(G, S, epochs)``.

Batch layout, chosen per step (:func:`~wsi_mil.training.stacked_batches.plan_step`): *padded* ``(S, B, N, D)``, every
bag padded to the step's largest bag N, run by the head's own ``forward``;
or *packed* ``(S, T, D)``, each stream's bags one after another (T = the
largest total of a stream; :class:`~wsi_mil.models.layers.Packing`), run by
the head's ``forward_packed`` (ABMIL, Chowder, DSMIL). Packing is used when
it drops at least 10% of the padded rows (:data:`~wsi_mil.training.stacked_batches.PACK_BELOW`), i.e. when
bags are smaller than ``n_tiles`` and vary in size: for 16 bags of 5-50
tiles (mean 28) a stream holds ~580 rows instead of 16 x 50 = 800, and a
3-epoch profile of 100 ABMIL models trains in ~35% less time. Bags sampled to a fixed
``n_tiles`` stay padded, as before. MeanPool pools each bag once on
assembly and needs neither.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from wsi_mil.data.bags import BagStore, BatchBuffer, Pick, pick_tiles
from wsi_mil.data.scaling import FeatureScaler
from wsi_mil.evaluation.metrics import MetricWarning
from wsi_mil.models.base import trusted_inputs
from wsi_mil.training.fit import FitParams, Targets, create_head, outputs_to_scores
from wsi_mil.training.losses import cox_loss
from wsi_mil.training.stacked import StackedAdam, StackedHeads, stackable
from wsi_mil.training.stacked_batches import StackedBatch, assemble_step, plan_step, run_models

#: the folded batch of one chunk of rows stays under this many bytes: activations of a chunk stay
#: small enough for the allocator to reuse them; 16 and 32 MB were slower than 64 for packed small
#: bags (more, smaller matmuls), 128 no faster; a 1,000 x 768-d stream (49 MB) is one chunk anyway
CHUNK_BYTES = 64 * 2**20
#: validation batches are assembled once and kept when they fit in this many bytes
EVAL_CACHE_BYTES = 256 * 2**20
EVAL_SEED = 7919  # as fit.predict: rng = default_rng([seed, 7919])


@dataclass(frozen=True)
class Stream:
    """Training slides, optional validation slides and the seed of one data stream."""

    train_idx: np.ndarray
    val_idx: np.ndarray | None
    seed: int


@dataclass
class StackedFitResult:
    stacked: StackedHeads
    curves: np.ndarray  # (G, S, E): validation metric after each epoch, NaN where none
    loss_curves: np.ndarray  # (G, S, E): validation loss after each epoch, NaN where none
    n_rows: int
    n_streams: int
    seconds: float
    timings: dict[str, float]
    seeds: list[int]
    scalers: list[FeatureScaler | None]  # per stream: its feature standardisation (params.standardize)

    def state_dict(self, g: int, s: int) -> dict[str, torch.Tensor]:
        return self.stacked.state_dict_of(g * self.n_streams + s)


def can_stack(params: FitParams, in_dim: int, n_outputs: int) -> tuple[bool, str]:
    """Whether ``params.model`` can be trained stacked, and why not."""
    return stackable(create_head(params, in_dim, n_outputs))


def fit_stacked(store: BagStore, targets: Targets, streams: Sequence[Stream], params: FitParams,
                lr: np.ndarray, weight_decay: np.ndarray, epochs: np.ndarray,
                progress: Callable[[int, int], None] | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> StackedFitResult:
    """Train the ``(G, S)`` models; ``lr``, ``weight_decay``, ``epochs`` are ``(G, S)``.

    ``params`` gives the head, its hyperparameters, batch size and tile
    sampling (its lr / weight decay / epochs / seed are ignored: per model
    and per stream here). ``progress(epoch, max_epochs)`` is called after
    each epoch.
    """
    t0 = time.perf_counter()
    lr, weight_decay = np.array(lr, dtype=float), np.array(weight_decay, dtype=float)  # writable copies
    epochs = np.asarray(epochs, dtype=int)
    n_rows, n_streams = epochs.shape
    heads = [create_head(_with_seed(params, streams[s].seed), store.dim, targets.n_outputs)
             for _ in range(n_rows) for s in range(n_streams)]
    stacked = StackedHeads(heads).to(params.device)
    del heads
    opt = StackedAdam(list(stacked.parameters()), torch.from_numpy(lr.reshape(-1)),
                      torch.from_numpy(weight_decay.reshape(-1)))
    scalers = [FeatureScaler.fit(store, st.train_idx) if params.standardize else None for st in streams]
    rngs = [np.random.default_rng(st.seed) for st in streams]
    torch_seeds = [int(r.integers(2**31)) for r in rngs]  # as fit(): keeps the generators aligned
    torch.manual_seed(torch_seeds[0])  # dropout (not per model: one draw for the stacked batch)
    pooled = bool(getattr(stacked.head, "pools_by_mean", False))
    buffer = BatchBuffer()  # shared by training steps and evaluation (never in use at once)
    evaluator = _Evaluator(store, targets, streams, params, pooled, n_rows, chunk_bytes, buffer, scalers)
    max_epochs = int(epochs.max())
    curves = np.full((n_rows, n_streams, max_epochs), np.nan)
    loss_curves = np.full((n_rows, n_streams, max_epochs), np.nan)
    timings = {"assemble": 0.0, "train": 0.0, "optimizer": 0.0, "evaluate": 0.0}
    for epoch in range(max_epochs):
        active = epoch < epochs  # (G, S)
        alive = active.any(axis=0)  # (S,)
        batches = [_epoch_batches(rngs[s], streams[s].train_idx, params.batch_size) if alive[s] else []
                   for s in range(n_streams)]
        stacked.train()
        for step in range(max(len(b) for b in batches)):
            ta = time.perf_counter()
            picks: list[list[Pick | None]] = []
            idx: list[np.ndarray] = []
            for s in range(n_streams):
                if step < len(batches[s]):
                    b = batches[s][step]
                    picks.append(pick_tiles(store, b, params.n_tiles, rngs[s], params.tile_sampling))
                    idx.append(b)
                else:
                    picks.append([])
                    idx.append(np.zeros(0, dtype=np.int64))
            step_active = active & np.array([len(i) > 0 for i in idx])[None, :]  # (G, S)
            opt.zero_grad()
            t_asm = 0.0
            packed, groups = plan_step(store, picks, pooled, stacked.packable, chunk_bytes)
            for s0, s1 in groups:
                if not any(len(p) for p in picks[s0:s1]):
                    continue  # no stream of the group has a batch at this step
                tg = time.perf_counter()
                batch = assemble_step(store, picks[s0:s1], buffer, pooled, packed, scalers[s0:s1])
                t_asm += time.perf_counter() - tg
                _train_step(stacked, targets, batch.to(params.device), idx[s0:s1], step_active, (s0, s1),
                            chunk_bytes, params.precision)
            tb = ta + t_asm
            tc = time.perf_counter()
            opt.step(torch.from_numpy(step_active.reshape(-1)))
            td = time.perf_counter()
            timings["assemble"] += tb - ta
            timings["train"] += tc - tb
            timings["optimizer"] += td - tc
        te = time.perf_counter()
        if evaluator.has_val:
            metric, loss = evaluator.curve(stacked)
            curves[:, :, epoch] = np.where(active, metric, np.nan)
            loss_curves[:, :, epoch] = np.where(active, loss, np.nan)
        timings["evaluate"] += time.perf_counter() - te
        if progress is not None:
            progress(epoch + 1, max_epochs)
    return StackedFitResult(stacked, curves, loss_curves, n_rows, n_streams, time.perf_counter() - t0, timings,
                            [int(st.seed) for st in streams], scalers)


def predict_stacked(result: StackedFitResult, store: BagStore, targets: Targets,
                    idx: Sequence[np.ndarray], params: FitParams) -> list[list[np.ndarray]]:
    """Scores ``[g][s]`` of model (g, s) on slides ``idx[s]`` (tile samples as ``fit.predict``)."""
    streams = [Stream(np.zeros(0, dtype=np.int64), np.asarray(i), seed=result.seeds[s])
               for s, i in enumerate(idx)]
    pooled = bool(getattr(result.stacked.head, "pools_by_mean", False))
    return _Evaluator(store, targets, streams, params, pooled, result.n_rows, CHUNK_BYTES,
                      scalers=result.scalers).scores(result.stacked)


def _with_seed(params: FitParams, seed: int) -> FitParams:
    return replace(params, seed=seed)


def _epoch_batches(rng: np.random.Generator, train_idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """This epoch's minibatches, drawn as fit() draws them (last incomplete batch dropped)."""
    order = rng.permutation(np.asarray(train_idx))
    n_full = len(order) // batch_size
    n_batches = n_full if n_full >= 1 else 1
    return [order[b * batch_size:(b + 1) * batch_size] for b in range(n_batches)]


def _model_chunks(n_rows: int, n_streams: int, streams: tuple[int, int], row_bytes: int,
                  chunk_bytes: int) -> list[tuple[int, int]]:
    """Row ranges to run together on the stream range ``streams``: several rows only when
    the range holds every stream (their models are then contiguous in the stack)."""
    s0, s1 = streams
    if (s0, s1) != (0, n_streams):
        return [(g, g + 1) for g in range(n_rows)]
    per = max(1, min(n_rows, chunk_bytes // max(1, row_bytes)))
    return [(lo, min(n_rows, lo + per)) for lo in range(0, n_rows, per)]


def _train_step(stacked: StackedHeads, targets: Targets, batch: StackedBatch, idx: list[np.ndarray],
                step_active: np.ndarray, streams: tuple[int, int], chunk_bytes: int, precision: str = "fp32") -> None:
    """Forward + backward of the active models of streams ``streams`` (gradients accumulate)."""
    n_rows, n_streams = step_active.shape
    s0, s1 = streams
    width = batch.width
    valid = torch.zeros(s1 - s0, width, dtype=torch.bool)
    for s, i in enumerate(idx):
        valid[s, : len(i)] = True
    tgt = _stacked_targets(targets, idx, width)
    row_bytes = batch.x.numel() * batch.x.element_size()
    with trusted_inputs():
        for g0, g1 in _model_chunks(n_rows, n_streams, streams, row_bytes, chunk_bytes):
            act = torch.from_numpy(step_active[g0:g1, s0:s1])  # (g, S')
            if not bool(act.any()):
                continue
            out = run_models(stacked, batch, (g0, g1), streams, n_streams, precision)  # (g, S', B, C)
            losses = _losses(targets, out.float(), tgt, valid, idx)  # (g, S'), float32
            loss = (losses * act.to(losses.dtype)).sum()
            loss.backward()


def _stacked_targets(targets: Targets, idx: list[np.ndarray], width: int) -> dict[str, torch.Tensor]:
    if targets.task == "survival":
        return {}
    y = torch.zeros(len(idx), width, dtype=torch.long)
    for s, i in enumerate(idx):
        y[s, : len(i)] = torch.from_numpy(targets.y[i]).long()
    return {"y": y}


def _losses(targets: Targets, out: torch.Tensor, tgt: dict, valid: torch.Tensor,
            idx: list[np.ndarray]) -> torch.Tensor:
    """Per-model loss ``(g, S)``: the mean over the stream's real bags, as ``make_loss``."""
    g, n_streams, width, n_out = out.shape
    if targets.task == "survival":
        rows = []
        for r in range(g):
            row = []
            for s, i in enumerate(idx):
                if len(i) == 0:
                    row.append(out.new_zeros(()))
                    continue
                t, e = torch.from_numpy(targets.time[i]), torch.from_numpy(targets.event[i])
                row.append(cox_loss(out[r, s, : len(i), 0], t, e))
            rows.append(torch.stack(row))
        return torch.stack(rows)
    y = tgt["y"].unsqueeze(0).expand(g, n_streams, width)  # (g, S, B)
    if n_out == 1:
        per_bag = F.binary_cross_entropy_with_logits(out[..., 0], y.to(out.dtype), reduction="none")
    else:
        per_bag = F.cross_entropy(out.reshape(-1, n_out), y.reshape(-1), reduction="none").view(g, n_streams, width)
    w = valid.to(out.dtype).unsqueeze(0)  # (1, S, B)
    return (per_bag * w).sum(-1) / w.sum(-1).clamp(min=1.0)


class _Evaluator:
    """Scores of every model on its stream's validation slides, same tile samples each call."""

    def __init__(self, store: BagStore, targets: Targets, streams: Sequence[Stream], params: FitParams,
                 pooled: bool, n_rows: int, chunk_bytes: int, buffer: BatchBuffer | None = None,
                 scalers: Sequence[FeatureScaler | None] | None = None) -> None:
        self.store, self.targets, self.pooled, self.n_rows = store, targets, pooled, n_rows
        self.scalers = list(scalers) if scalers is not None else [None] * len(streams)
        self.chunk_bytes = chunk_bytes
        self.val = [np.zeros(0, dtype=np.int64) if st.val_idx is None else np.asarray(st.val_idx)
                    for st in streams]
        self.has_val = any(len(v) for v in self.val)
        bs = params.batch_size
        # one generator per stream and call, as fit.predict: picks are fixed, draw them once
        self.steps: list[list[list[Pick]]] = []  # [s][chunk] -> picks
        for st, v in zip(streams, self.val, strict=True):
            rng = np.random.default_rng([st.seed, EVAL_SEED])
            self.steps.append([pick_tiles(store, v[lo:lo + bs], params.n_tiles, rng, params.tile_sampling)
                               for lo in range(0, len(v), bs)])
        self.n_steps = max((len(c) for c in self.steps), default=0)
        self.device, self.precision = params.device, params.precision
        self._cache: list[tuple[int, tuple[int, int], StackedBatch]] | None = None
        self._buffer = buffer if buffer is not None else BatchBuffer()
        tiles = sum(1 if pooled else (int(store.n_tiles[i]) if t is None else len(t))
                    for c in self.steps for p in c for i, t in p)
        self._cacheable = tiles * store.dim * 4 <= EVAL_CACHE_BYTES

    def _batches(self, packable: bool):
        """(k, (s0, s1), batch) for every evaluation step k and group of streams."""
        if self._cache is not None:
            yield from self._cache
            return
        cache = [] if self._cacheable else None
        for k in range(self.n_steps):
            picks = [c[k] if k < len(c) else [] for c in self.steps]
            packed, groups = plan_step(self.store, picks, self.pooled, packable, self.chunk_bytes)
            for s0, s1 in groups:
                if not any(len(p) for p in picks[s0:s1]):
                    continue
                batch = assemble_step(self.store, picks[s0:s1], None if self._cacheable else self._buffer,
                                  self.pooled, packed, self.scalers[s0:s1])
                if cache is not None:
                    cache.append((k, (s0, s1), batch))
                yield k, (s0, s1), batch
        self._cache = cache

    @torch.no_grad()
    def scores(self, stacked: StackedHeads) -> list[list[np.ndarray]]:
        n_streams = len(self.steps)
        parts: list[list[list[np.ndarray]]] = [[[] for _ in range(n_streams)] for _ in range(self.n_rows)]
        stacked.eval()
        with trusted_inputs():
            for k, (s0, s1), batch in self._batches(stacked.packable):
                batch = batch.to(self.device)
                row_bytes = batch.x.numel() * batch.x.element_size()
                for g0, g1 in _model_chunks(self.n_rows, n_streams, (s0, s1), row_bytes, self.chunk_bytes):
                    out = run_models(stacked, batch, (g0, g1), (s0, s1), n_streams, self.precision)  # (g, S', B, C)
                    for r in range(g1 - g0):
                        for s in range(s0, s1):
                            if k < len(self.steps[s]):
                                n = len(self.steps[s][k])
                                parts[g0 + r][s].append(outputs_to_scores(
                                    out[r, s - s0, :n], self.targets.task, self.targets.multiclass_scores))
        return [[np.concatenate(p) if p else np.zeros(0) for p in row] for row in parts]

    def curve(self, stacked: StackedHeads) -> tuple[np.ndarray, np.ndarray]:
        """Validation metric and loss ``(G, S)`` of every model now."""
        scores = self.scores(stacked)
        out = np.full((self.n_rows, len(self.steps)), np.nan)
        loss = np.full((self.n_rows, len(self.steps)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            for g in range(self.n_rows):
                for s, v in enumerate(self.val):
                    if len(v):
                        out[g, s] = self.targets.score(v, scores[g][s])
                        loss[g, s] = self.targets.loss(v, scores[g][s])
        return out, loss
