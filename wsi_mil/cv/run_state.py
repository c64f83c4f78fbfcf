"""The state of one CV run and the steps both engines share: seeds, selection, checkpoints, writes."""
from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from wsi_mil.cv import outputs as cv_outputs
from wsi_mil.cv.selection import select
from wsi_mil.cv.settings import _FIXED_NAMES, CVSettings
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import Cohort
from wsi_mil.data.folds import FoldPlan
from wsi_mil.training.fit import FitParams, Targets

PROGRESS_SECONDS = 20.0


@dataclass
class CVRun:
    """Everything one CV run works on, passed around as one object."""

    cohort: Cohort
    store: BagStore
    plan: FoldPlan
    settings: CVSettings
    targets: Targets
    points: list[dict[str, Any]]
    run_dir: Path
    fingerprint: dict
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # batched engine, seconds

    def params(self, point: dict, epochs: int, seed: int) -> FitParams:
        s = self.settings
        hparams = {**s.hparams, **{k: v for k, v in point.items() if k not in _FIXED_NAMES}}
        return FitParams(model=s.model, hparams=hparams, lr=float(point["lr"]),
                         weight_decay=float(point["weight_decay"]), epochs=int(epochs),
                         batch_size=s.batch_size, n_tiles=s.n_tiles, tile_sampling=s.tile_sampling,
                         seed=seed, device=s.device, standardize=s.standardize, precision=s.precision)

    def inner_seed(self, r: int, k: int, j: int) -> int:
        return _fit_seed(self.settings.seed, r, k, j + 1)

    def refit_seed(self, r: int, k: int) -> int:
        return _fit_seed(self.settings.seed, r, k, 0)


def _fit_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] % (2**31 - 1))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _select_fold(run: CVRun, r: int, k: int, inner: np.ndarray) -> dict:
    curves, loss_curves = inner  # (G, J, E) metric and loss
    g, epochs, score = select(curves, loss_curves, run.settings.selection_tiebreak)
    if np.isnan(score):
        logger.warning("repeat {} fold {}: inner metric undefined everywhere; using grid point 0, {} epochs",
                       r, k, epochs)
    return {"point": run.points[g], "epochs": epochs, "inner_score": score,
            "inner_curves": _nanmean_curves(curves).tolist(),
            "inner_loss_curves": _nanmean_curves(loss_curves).tolist()}


def _nanmean_curves(curves: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(curves, axis=1)


def _fixed_selection(run: CVRun) -> dict:
    return {"point": run.points[0], "epochs": run.settings.epochs, "inner_score": None, "inner_curves": None}


def _selections(run: CVRun, pending: list[tuple[int, int]],
                inner: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], dict]:
    if run.settings.mode != "nested":
        return {rk: _fixed_selection(run) for rk in pending}
    return {rk: _select_fold(run, *rk, inner[rk]) for rk in pending}


def _load_inner(run: CVRun, pending: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    out = {}
    for r, k in pending:
        curves = cv_outputs.read_inner(run.run_dir, r, k, run.fingerprint)
        if curves is not None:
            out[(r, k)] = curves
    if out:
        logger.info("resuming: inner fits of {} outer fold(s) already done", len(out))
    return out


class _Progress:
    def __init__(self, what: str) -> None:
        self.what, self.t0, self.last = what, time.perf_counter(), time.perf_counter()

    def __call__(self, epoch: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS or epoch == total:
            self.last = now
            logger.info("{}: epoch {}/{} ({:.0f} s)", self.what, epoch, total, now - self.t0)


def _write(run: CVRun, r: int, k: int, sel: dict, out: dict) -> None:
    cv_outputs.write_fold(run, r, k, sel, out)
    logger.bind(fold=f"r{r}_f{k}").info("repeat {} fold {}: lr={} wd={} epochs={} -> test done",
                                        r, k, sel["params"].lr, sel["params"].weight_decay, sel["params"].epochs)


