"""The loop engine: one fit at a time (parallel over ``n_jobs`` worker processes or
threads), the trusted path the batched engine is tested against, and the fallback
for heads that cannot be stacked. See :mod:`wsi_mil.cv.engine`.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from joblib import Parallel, delayed
from loguru import logger

from wsi_mil.cv import outputs as cv_outputs
from wsi_mil.cv.run_state import CVRun, _load_inner, _selections, _write, available_cores
from wsi_mil.data.bags import BagStore
from wsi_mil.evaluation.metrics import MetricWarning
from wsi_mil.training.allocator import reuse_freed_memory
from wsi_mil.training.fit import FitParams, Targets, fit, predict


def _die_with_parent(parent_pid: int) -> None:
    """In a worker process: exit as soon as the parent (the CV run) is gone, so a killed run
    leaves no workers behind. A daemon thread polls the parent pid (started once per process)."""
    global _WATCHING
    if os.getpid() == parent_pid or _WATCHING:
        return
    _WATCHING = True

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="wsi-mil-parent-watch", daemon=True).start()


_WATCHING = False


def _inner_task(store: BagStore, targets: Targets, train: np.ndarray, val: np.ndarray,
                params: FitParams, n_threads: int, parent_pid: int) -> np.ndarray:
    _die_with_parent(parent_pid)
    torch.set_num_threads(n_threads)
    with warnings.catch_warnings(), reuse_freed_memory():  # in a worker process too
        warnings.simplefilter("ignore", MetricWarning)
        res = fit(store, targets, train, params, val_idx=val)
        return np.stack([res.val_curve, res.val_loss])  # (2, E): metric, loss


def _refit_task(store: BagStore, targets: Targets, train: np.ndarray, test: np.ndarray,
                params: FitParams, n_threads: int, parent_pid: int) -> dict:
    _die_with_parent(parent_pid)
    torch.set_num_threads(n_threads)
    with reuse_freed_memory():
        result = fit(store, targets, train, params)
    args = (targets.task, params.n_tiles, params.tile_sampling, params.seed, params.batch_size, params.device,
            result.scaler, targets.multiclass_scores, params.precision)
    out = {"test_scores": predict(result.model, store, test, *args), "seconds": result.seconds,
           "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
           "scaler": result.scaler}
    if targets.task == "survival":
        out["train_scores"] = predict(result.model, store, train, *args)
    return out


@contextlib.contextmanager
def worker_store(run: CVRun, n_jobs: int) -> Iterator[BagStore]:
    """The store to send to ``n_jobs`` worker processes: memory-mapped from a cache file in the run
    folder (each worker maps it instead of receiving a copy; removed on exit) when there are
    several loky workers and the store is in memory, else the store itself."""
    store, cache = run.store, None
    if n_jobs > 1 and run.settings.backend == "loky" and store.memmap_path is None:
        cache = run.run_dir / ".features_cache.npy"
        store = store.to_memmap(cache)
    if run.settings.standardize:
        store.slide_moments()  # once here, sent to the workers with the store (not recomputed per fit)
    try:
        yield store
    finally:
        if cache is not None:
            del store
            cache.unlink(missing_ok=True)


def _run_loop(run: CVRun, pending: list[tuple[int, int]]) -> None:
    s = run.settings
    n_jobs = max(1, int(s.n_jobs))
    n_threads = max(1, available_cores() // n_jobs)
    with worker_store(run, n_jobs) as store:
        parallel = Parallel(n_jobs=n_jobs, backend=s.backend)
        inner: dict[tuple[int, int], np.ndarray] = {}
        if s.mode == "nested":
            inner = _load_inner(run, pending)
            for r, k in [rk for rk in pending if rk not in inner]:
                fold = run.plan.repeats[r][k]
                jobs, keys = [], []
                for g, point in enumerate(run.points):
                    for j, (tr, va) in enumerate(fold.inner):
                        params = run.params(point, s.epochs, run.inner_seed(r, k, j))
                        jobs.append(delayed(_inner_task)(store, run.targets, tr, va, params, n_threads, os.getpid()))
                        keys.append((g, j))
                t0 = time.perf_counter()
                logger.info("inner fits of repeat {} fold {}: {} fits ({} threads each)", r, k, len(jobs), n_threads)
                curves = np.full((2, len(run.points), run.plan.n_inner, s.epochs), np.nan)  # metric, loss
                for (g, j), c in zip(keys, parallel(jobs), strict=True):
                    curves[:, g, j, : c.shape[1]] = c
                cv_outputs.write_inner(run.run_dir, r, k, curves, run.fingerprint)
                inner[(r, k)] = curves
                logger.info("inner fits of repeat {} fold {}: done in {:.1f} s", r, k, time.perf_counter() - t0)
        selections = _selections(run, pending, inner)
        jobs = []
        for r, k in pending:
            sel = selections[(r, k)]
            sel["params"] = run.params(sel["point"], sel["epochs"], run.refit_seed(r, k))
            fold = run.plan.repeats[r][k]
            jobs.append(delayed(_refit_task)(store, run.targets, fold.train, fold.test, sel["params"], n_threads,
                                             os.getpid()))
        logger.info("outer refits: {}", len(jobs))
        for (r, k), out in zip(pending, Parallel(n_jobs=n_jobs, backend=s.backend, return_as="generator")(jobs),
                               strict=True):
            _write(run, r, k, selections[(r, k)], out)
