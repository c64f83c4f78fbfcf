"""Nested (or plain K-fold) cross-validation of a MIL head on a feature store.

Protocol (``mode="nested"``), for each repeat r and outer fold k of a
:class:`~wsi_mil.data.folds.FoldPlan`:

1. for every grid point g (learning rate x weight decay x head hparams) and
   every inner fold j, fit on inner-train for ``epochs`` epochs, scoring the
   inner-validation slides after every epoch -> curve (epochs,);
2. average the curves over inner folds (NaN-aware) and pick the pair
   (g, number of epochs) with the best mean inner-validation metric (ties:
   lowest mean inner-validation loss, then first grid point, fewest epochs;
   ``selection_tiebreak="first"``, the reference's rule, skips the loss);
3. refit on the whole outer-train part with g for exactly that many epochs;
4. score the outer-test slides once. The outer test fold influences nothing.

``mode="kfold"``: no inner folds; fit with the fixed hyperparameters on the
outer-train part for ``epochs`` epochs, score the outer-test slides.

Engines (``settings.engine``):

- ``batched`` (default): the G x J inner fits of a *block* of outer folds
  train as one stacked model (:mod:`wsi_mil.training.fit_stacked`): one
  process, torch threads = cores, one optimizer step for all models; the
  refits of all outer folds and repeats then train together the same way.
  A block holds as many outer folds as fit the batch-memory budget (one
  fold for 1,000-tile bags of 768-d features, all folds for small bags).
- ``loop``: one fit at a time (parallel over ``n_jobs`` worker processes or
  threads), the trusted path the batched engine is tested against, and the
  fallback for heads that cannot be stacked (TransMIL, HIPT-MIL: logged).

Both use the same fold plan, seeds, minibatch orders and tile samples, and
give the same selections and test scores to float rounding.

Resume: the inner curves of every outer fold are checkpointed
(``inner/r{r}_f{k}.json``) as soon as its block finishes, and each finished
outer fold is written to ``folds/r{r}_f{k}.json``; a rerun skips both, so a
kill loses at most the block (or refit) in progress. Outputs: see
:mod:`wsi_mil.cv.outputs`.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from wsi_mil.cv import outputs as cv_outputs
from wsi_mil.cv.loop import _run_loop
from wsi_mil.cv.run_state import (
    CVRun,
    _load_inner,
    _Progress,
    _selections,
    _write,
    available_cores,
)
from wsi_mil.cv.selection import select
from wsi_mil.cv.settings import _FIXED_NAMES, CVSettings, _data_fingerprint, grid_points
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import Cohort
from wsi_mil.data.folds import FoldPlan
from wsi_mil.errors import ConfigError, StaleOutputError
from wsi_mil.training.allocator import reuse_freed_memory
from wsi_mil.training.fit import Targets
from wsi_mil.training.fit_stacked import (
    Stream,
    can_stack,
    fit_stacked,
    predict_stacked,
)

__all__ = ["CVRun", "CVSettings", "available_cores", "grid_points", "plain_settings", "run_cv", "select"]

#: a block of outer folds is sized so that one step's batches stay under this
BLOCK_BYTES = 256 * 2**20


def run_cv(cohort: Cohort, store: BagStore, plan: FoldPlan, settings: CVSettings,
           run_dir: str | Path) -> cv_outputs.CVResult:
    """Run the protocol of the module docstring; resume finished work of ``run_dir``."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    plan.validate(cohort)
    if store.slide_ids != cohort.slide_ids:
        raise ConfigError("the feature store rows must follow the cohort rows")
    settings = _resolve_precision(settings)
    if settings.mode == "nested" and plan.n_inner < 2:
        raise ConfigError(f"mode='nested' needs a plan with inner folds; this one has n_inner={plan.n_inner}")
    plan_path = run_dir / "fold_plan.json"
    if not plan_path.exists():
        plan.save(plan_path)
    elif FoldPlan.load(plan_path).to_dict() != plan.to_dict():
        raise StaleOutputError(
            f"{plan_path} holds another fold plan than this run's; use a new output directory "
            "(finished folds of the old plan must not be mixed with the new one)"
        )
    # finished work is reused only for the same settings, targets, features and plan
    fingerprint = {**settings.fingerprint(), "data": _data_fingerprint(cohort, plan, settings)}
    run = CVRun(cohort, store, plan, settings, Targets.from_cohort(cohort, settings.auc_classes, settings.multiclass_scores),
                grid_points(settings), run_dir, fingerprint)
    pending = []
    for r, folds in enumerate(plan.repeats):
        for k in range(len(folds)):
            done = cv_outputs.read_fold(run_dir, r, k)
            if done is None:
                pending.append((r, k))
            elif done.get("settings") != fingerprint:
                raise StaleOutputError(
                    f"{cv_outputs.fold_path(run_dir, r, k)} was made with other settings; "
                    "use a new output directory or delete the run's folds/ folder"
                )
    engine = _choose_engine(run)
    n_total = sum(len(f) for f in plan.repeats)
    logger.info("{} CV of {} on {}: {} outer folds ({} to run), {} grid point(s), engine={}",
                settings.mode, settings.model, cohort.name, n_total, len(pending), len(run.points), engine)
    with reuse_freed_memory():  # both engines: no fresh page faults for every activation
        if pending and engine == "batched":
            torch.set_num_threads(available_cores())
            _run_batched(run, pending)
        elif pending:
            _run_loop(run, pending)
    result = cv_outputs.aggregate(run_dir, cohort, plan, settings, run.targets.metric_name,
                                  time.perf_counter() - t0)
    s = result.summary
    logger.info("{} {}: {:.4f} +- {:.4f} over {}/{} folds", settings.model, s["metric"], s["mean"], s["sd"],
                s["n_folds"], s["n_folds_total"])
    return result


def _resolve_precision(settings: CVSettings) -> CVSettings:
    """``settings`` with the precision that runs on its device (bf16 needs native support; see
    :func:`wsi_mil.encoders.base.resolve_precision`), so what ran is what the outputs record."""
    from wsi_mil.encoders.base import resolve_precision

    used = resolve_precision(settings.precision, "fp32", settings.device)
    if used != settings.precision:
        logger.warning("precision={} asked, but {} has no native {} (AVX512-BF16 or AMX on a CPU): the heads "
                       "train in {}", settings.precision, settings.device, settings.precision, used)
        return replace(settings, precision=used)
    return settings


def _choose_engine(run: CVRun) -> str:
    if run.settings.engine == "loop":
        return "loop"
    for point in run.points:
        ok, why = can_stack(run.params(point, 1, 0), run.store.dim, run.targets.n_outputs)
        if not ok:
            logger.warning("engine=batched: {} cannot be stacked ({}); falling back to engine=loop "
                           "(one model at a time)", run.settings.model, why)
            return "loop"
    return "batched"


# -- batched engine ---------------------------------------------------------------------
def _hparam_key(point: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in point.items() if k not in _FIXED_NAMES))


def _blocks(run: CVRun, folds: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Consecutive groups of outer folds whose inner fits train together (memory-bounded)."""
    s = run.settings
    tiles = np.minimum(run.store.n_tiles, s.n_tiles) if s.n_tiles else run.store.n_tiles
    per_stream = s.batch_size * int(tiles.max()) * run.store.dim * 4
    n_inner = max(1, run.plan.n_inner)
    per_block = max(1, BLOCK_BYTES // max(1, per_stream * n_inner))
    return [folds[i:i + per_block] for i in range(0, len(folds), per_block)]


def _run_batched(run: CVRun, pending: list[tuple[int, int]]) -> None:
    inner: dict[tuple[int, int], np.ndarray] = {}
    if run.settings.mode == "nested":
        inner = _load_inner(run, pending)
        todo = [rk for rk in pending if rk not in inner]
        blocks = _blocks(run, todo)
        for b, block in enumerate(blocks):
            label = f"inner fits, block {b + 1}/{len(blocks)} (folds {', '.join(f'r{r}f{k}' for r, k in block)})"
            for rk, curves in _inner_block(run, block, label).items():
                cv_outputs.write_inner(run.run_dir, *rk, curves, run.fingerprint)
                inner[rk] = curves
    selections = _selections(run, pending, inner)
    _refits_batched(run, pending, selections)


def _inner_block(run: CVRun, block: list[tuple[int, int]], label: str) -> dict[tuple[int, int], np.ndarray]:
    """Curves (2, G, J, E) (metric, loss) of every outer fold of ``block``, all its fits trained together."""
    s, plan = run.settings, run.plan
    streams, where = [], []
    for r, k in block:
        for j, (tr, va) in enumerate(plan.repeats[r][k].inner):
            streams.append(Stream(np.asarray(tr), np.asarray(va), run.inner_seed(r, k, j)))
            where.append((r, k, j))
    curves = {rk: np.full((2, len(run.points), plan.n_inner, s.epochs), np.nan) for rk in block}  # metric, loss
    groups: dict[str, list[int]] = defaultdict(list)
    for g, point in enumerate(run.points):
        groups[_hparam_key(point)].append(g)
    t0 = time.perf_counter()
    logger.info("{}: {} models ({} grid point(s) x {} streams), {} epochs", label,
                len(run.points) * len(streams), len(run.points), len(streams), s.epochs)
    for rows in groups.values():
        pts = [run.points[g] for g in rows]
        shape = (len(rows), len(streams))
        lr = np.broadcast_to(np.array([[p["lr"]] for p in pts], dtype=float), shape)
        wd = np.broadcast_to(np.array([[p["weight_decay"]] for p in pts], dtype=float), shape)
        result = fit_stacked(run.store, run.targets, streams, run.params(pts[0], s.epochs, 0),
                             lr, wd, np.full(shape, s.epochs), progress=_Progress(label))
        for i, g in enumerate(rows):
            for st, (r, k, j) in enumerate(where):
                curves[(r, k)][:, g, j] = result.curves[i, st], result.loss_curves[i, st]
        for name, sec in result.timings.items():
            run.timings[name] += sec
    logger.info("{}: done in {:.1f} s", label, time.perf_counter() - t0)
    return curves


def _refits_batched(run: CVRun, pending: list[tuple[int, int]], selections: dict) -> None:
    """The outer refits of all pending folds (and repeats), trained together per head hparams."""
    groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for rk in pending:
        groups[_hparam_key(selections[rk]["point"])].append(rk)
    for folds in groups.values():
        t0 = time.perf_counter()
        streams = [Stream(np.asarray(run.plan.repeats[r][k].train), None, run.refit_seed(r, k)) for r, k in folds]
        sels = [selections[rk] for rk in folds]
        lr = np.array([[sel["point"]["lr"] for sel in sels]], dtype=float)
        wd = np.array([[sel["point"]["weight_decay"] for sel in sels]], dtype=float)
        epochs = np.array([[sel["epochs"] for sel in sels]], dtype=int)
        params = run.params(sels[0]["point"], int(epochs.max()), 0)
        label = f"outer refits ({len(folds)} model(s))"
        logger.info("{}: epochs {}", label, epochs[0].tolist())
        result = fit_stacked(run.store, run.targets, streams, params, lr, wd, epochs, progress=_Progress(label))
        for name, sec in result.timings.items():
            run.timings[name] += sec
        tests = predict_stacked(result, run.store, run.targets,
                                [run.plan.repeats[r][k].test for r, k in folds], params)[0]
        trains = None
        if run.targets.task == "survival":
            trains = predict_stacked(result, run.store, run.targets, [st.train_idx for st in streams], params)[0]
        seconds = (time.perf_counter() - t0) / len(folds)
        for i, (r, k) in enumerate(folds):
            sel = dict(selections[(r, k)])
            sel["params"] = replace(params, lr=float(lr[0, i]), weight_decay=float(wd[0, i]),
                                    epochs=int(epochs[0, i]), seed=streams[i].seed)
            out = {"test_scores": tests[i], "seconds": seconds, "state_dict": result.state_dict(0, i),
                   "scaler": result.scalers[i]}
            if trains is not None:
                out["train_scores"] = trains[i]
            _write(run, r, k, sel, out)

def plain_settings(settings: CVSettings, **changes: Any) -> CVSettings:
    """A copy of ``settings`` with ``changes`` (convenience for benches and tests)."""
    return replace(settings, **changes)
