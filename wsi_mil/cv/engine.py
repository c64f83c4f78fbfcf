"""Nested (or plain K-fold) cross-validation of a MIL head on a feature store.

Protocol (``mode="nested"``), for each repeat r and outer fold k of a
:class:`~wsi_mil.data.folds.FoldPlan`:

1. for every grid point g (learning rate x weight decay x head hparams) and
   every inner fold j, fit on inner-train for ``epochs`` epochs, scoring the
   inner-validation slides after every epoch -> curve (epochs,);
2. average the curves over inner folds (NaN-aware) and pick the pair
   (g, number of epochs) with the best mean inner-validation metric (ties:
   first grid point, fewest epochs);
3. refit on the whole outer-train part with g for exactly that many epochs;
4. score the outer-test slides once. The outer test fold influences nothing.

``mode="kfold"``: no inner folds; fit with the fixed hyperparameters on the
outer-train part for ``epochs`` epochs, score the outer-test slides.

Independent fits run in parallel (joblib ``n_jobs``). With the ``loky``
backend the feature store is memory-mapped from one ``.npy`` file so worker
processes share its pages, and results do not depend on ``n_jobs`` (each fit
seeds its own process); with ``threading`` they share the array directly, but
heads using dropout are then not bit-reproducible (torch's global generator is
shared by the threads). Torch uses ``max(1, cores // n_jobs)`` threads per fit.

Outputs (written atomically into ``run_dir``): ``fold_plan.json``,
``folds/r{r}_f{k}.json`` (one per finished outer fold: a rerun skips it),
``models/r{r}_f{k}.pt``, then ``predictions.csv``, ``folds.csv``,
``summary.json``. See :mod:`wsi_mil.cv.outputs`.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from loguru import logger

from wsi_mil.cv import outputs as cv_outputs
from wsi_mil.cv.selection import select
from wsi_mil.cv.settings import _FIXED_NAMES, CVSettings, _data_fingerprint, grid_points
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import Cohort
from wsi_mil.data.folds import FoldPlan
from wsi_mil.errors import ConfigError, StaleOutputError
from wsi_mil.evaluation.metrics import MetricWarning
from wsi_mil.training.fit import FitParams, Targets, fit, predict


def _params(settings: CVSettings, point: dict, epochs: int, seed: int) -> FitParams:
    hparams = {**settings.hparams, **{k: v for k, v in point.items() if k not in _FIXED_NAMES}}
    return FitParams(model=settings.model, hparams=hparams, lr=float(point["lr"]),
                     weight_decay=float(point["weight_decay"]), epochs=int(epochs),
                     batch_size=settings.batch_size, n_tiles=settings.n_tiles,
                     tile_sampling=settings.tile_sampling, seed=seed, device=settings.device)


def _fit_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] % (2**31 - 1))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _inner_task(store: BagStore, targets: Targets, train: np.ndarray, val: np.ndarray,
                params: FitParams, n_threads: int) -> np.ndarray:
    torch.set_num_threads(n_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return fit(store, targets, train, params, val_idx=val).val_curve


def _refit_task(store: BagStore, targets: Targets, train: np.ndarray, test: np.ndarray,
                params: FitParams, n_threads: int) -> dict:
    torch.set_num_threads(n_threads)
    result = fit(store, targets, train, params)
    args = (targets.task, params.n_tiles, params.tile_sampling, params.seed, params.batch_size, params.device)
    out = {"test_scores": predict(result.model, store, test, *args), "seconds": result.seconds,
           "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()}}
    if targets.task == "survival":
        out["train_scores"] = predict(result.model, store, train, *args)
    return out


def run_cv(cohort: Cohort, store: BagStore, plan: FoldPlan, settings: CVSettings,
           run_dir: str | Path) -> cv_outputs.CVResult:
    """Run the protocol of the module docstring; resume finished outer folds of ``run_dir``."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    plan.validate(cohort)
    if store.slide_ids != cohort.slide_ids:
        raise ConfigError("the feature store rows must follow the cohort rows")
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
    targets = Targets.from_cohort(cohort)
    points = grid_points(settings)
    # finished folds are reused only for the same settings, targets, features and plan
    fingerprint = {**settings.fingerprint(), "data": _data_fingerprint(cohort, plan, settings)}
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
    n_total = sum(len(f) for f in plan.repeats)
    logger.info("{} CV of {} on {}: {} outer folds ({} to run), {} grid point(s), n_jobs={}",
                settings.mode, settings.model, cohort.name, n_total, len(pending), len(points), settings.n_jobs)
    n_jobs = max(1, int(settings.n_jobs))
    n_threads = max(1, available_cores() // n_jobs)
    work_store, cache = store, None
    if pending and n_jobs > 1 and settings.backend == "loky" and store.memmap_path is None:
        cache = run_dir / ".features_cache.npy"
        work_store = store.to_memmap(cache)
    try:
        if pending:
            _run_pending(cohort, work_store, plan, settings, targets, points, pending, run_dir,
                         n_jobs, n_threads, fingerprint)
    finally:
        if cache is not None:
            del work_store
            cache.unlink(missing_ok=True)
    result = cv_outputs.aggregate(run_dir, cohort, plan, settings, targets.metric_name,
                                  time.perf_counter() - t0)
    logger.info("{} {}: {:.4f} +- {:.4f} over {} folds", settings.model, result.summary["metric"],
                result.summary["mean"], result.summary["sd"], result.summary["n_folds"])
    return result


def _run_pending(cohort: Cohort, store: BagStore, plan: FoldPlan, settings: CVSettings, targets: Targets,
                 points: list[dict], pending: list[tuple[int, int]], run_dir: Path, n_jobs: int,
                 n_threads: int, fingerprint: dict) -> None:
    parallel = Parallel(n_jobs=n_jobs, backend=settings.backend)
    selections: dict[tuple[int, int], dict] = {}
    if settings.mode == "nested":
        jobs, keys = [], []
        for r, k in pending:
            fold = plan.repeats[r][k]
            for g, point in enumerate(points):
                for j, (tr, va) in enumerate(fold.inner):
                    params = _params(settings, point, settings.epochs, _fit_seed(settings.seed, r, k, j + 1))
                    jobs.append(delayed(_inner_task)(store, targets, tr, va, params, n_threads))
                    keys.append((r, k, g, j))
        logger.info("inner fits: {} ({} threads each)", len(jobs), n_threads)
        curves_list = parallel(jobs)
        n_inner = plan.n_inner
        for r, k in pending:
            curves = np.full((len(points), n_inner, settings.epochs), np.nan)
            for (rr, kk, g, j), c in zip(keys, curves_list, strict=True):
                if (rr, kk) == (r, k):
                    curves[g, j, : len(c)] = c
            g, epochs, score = select(curves)
            if np.isnan(score):
                logger.warning("repeat {} fold {}: inner metric undefined everywhere; using grid point 0, "
                               "{} epochs", r, k, epochs)
            selections[(r, k)] = {"point": points[g], "epochs": epochs, "inner_score": score,
                                  "inner_curves": np.nanmean(curves, axis=1).tolist()}
    else:
        for r, k in pending:
            selections[(r, k)] = {"point": points[0], "epochs": settings.epochs, "inner_score": None,
                                  "inner_curves": None}
    jobs = []
    for r, k in pending:
        fold, sel = plan.repeats[r][k], selections[(r, k)]
        params = _params(settings, sel["point"], sel["epochs"], _fit_seed(settings.seed, r, k, 0))
        sel["params"] = params
        jobs.append(delayed(_refit_task)(store, targets, fold.train, fold.test, params, n_threads))
    logger.info("outer refits: {}", len(jobs))
    for (r, k), out in zip(pending, Parallel(n_jobs=n_jobs, backend=settings.backend,
                                             return_as="generator")(jobs), strict=True):
        sel = selections[(r, k)]
        cv_outputs.write_fold(run_dir, cohort, plan, targets, r, k, sel, out, fingerprint,
                              save_model=settings.save_models, in_dim=store.dim)
        logger.bind(fold=f"r{r}_f{k}").info(
            "repeat {} fold {}: lr={} wd={} epochs={} -> test done ({:.1f}s)",
            r, k, sel["point"]["lr"], sel["point"]["weight_decay"], sel["epochs"], out["seconds"])


def plain_settings(settings: CVSettings, **changes: Any) -> CVSettings:
    """A copy of ``settings`` with ``changes`` (convenience for benches and tests)."""
    return replace(settings, **changes)
