"""Survival metrics of CV outer folds beyond Harrell's C.

For each outer fold: Uno's C truncated at ``tau``, the cumulative/dynamic AUC
at a few horizons and the integrated Brier score, with the censoring
distribution (and, for the Brier score, Breslow's baseline hazard) fitted on
that fold's **training part** only (see :mod:`wsi_mil.evaluation.metrics`).

Defaults shared by every fold of a cohort, so folds and runs are comparable:
horizons at the 25th/50th/75th percentiles of the cohort's event times,
``tau`` = the 75th percentile, the Brier grid 20 points between the 10th and
75th percentiles. A fold whose test follow-up does not reach a horizon has
NaN there (scikit-survival needs times inside the test follow-up range).
Test follow-up beyond the last training time is censored there, where the
training part's censoring distribution ends (metrics at earlier times are
unchanged).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation import metrics

HORIZON_QUANTILES = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class SurvivalHorizons:
    """Times at which the survival metrics are evaluated (cohort time units)."""

    horizons: tuple[float, ...]  # time-dependent AUC
    tau: float  # truncation of Uno's C
    brier_grid: tuple[float, ...]  # integration grid of the Brier score

    @classmethod
    def from_cohort(cls, time: np.ndarray, event: np.ndarray, n_grid: int = 20) -> SurvivalHorizons:
        t = np.asarray(time, dtype=np.float64)[np.asarray(event).astype(bool)]
        if t.size < 2:
            raise ConfigError(f"survival metrics need >= 2 events in the cohort; it has {t.size}")
        horizons = tuple(float(q) for q in np.quantile(t, HORIZON_QUANTILES))
        grid = np.linspace(np.quantile(t, 0.10), np.quantile(t, 0.75), n_grid)
        return cls(horizons, horizons[-1], tuple(float(g) for g in grid))

    def column_names(self) -> list[str]:
        """Names of the per-fold columns: uno_c, td_auc_q25/50/75, ibs."""
        return ["uno_c", *(f"td_auc_q{int(q * 100)}" for q in HORIZON_QUANTILES), "ibs"]


def fold_survival_metrics(h: SurvivalHorizons, train_time: np.ndarray, train_event: np.ndarray,
                          time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                          train_risk: np.ndarray | None = None) -> dict[str, float]:
    """One fold's ``{uno_c, td_auc_q25, td_auc_q50, td_auc_q75, ibs}``; ``ibs`` is NaN
    without ``train_risk`` (the refit's risks on its training part, for Breslow)."""
    # test follow-up is censored at the last training time (the censoring distribution
    # ends there); metrics at times before it are unchanged by this
    t_end = float(np.max(train_time))
    t = np.minimum(np.asarray(time, dtype=np.float64), t_end)
    event = np.asarray(event).astype(bool) & (np.asarray(time, dtype=np.float64) <= t_end)
    names = h.column_names()
    out = dict.fromkeys(names, float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.MetricWarning)
        out["uno_c"] = metrics.uno_c_index(train_time, train_event, t, event, risk, tau=h.tau)
        for name, x in zip(names[1:4], h.horizons, strict=True):  # one call each: horizons may tie
            if t.min() <= x < t.max() and x < t_end:
                out[name] = float(metrics.time_dependent_auc(train_time, train_event, t, event, risk, [x])[0][0])
        if train_risk is not None:
            grid = np.asarray([g for g in h.brier_grid if t.min() <= g < t.max() and g < t_end])
            out["ibs"] = metrics.integrated_brier_score(train_time, train_event, train_risk, t, event, risk, grid)
    return out


def survival_fold_table(predictions: pd.DataFrame, train_parts: dict[tuple[int, int], tuple],
                        h: SurvivalHorizons) -> pd.DataFrame:
    """``repeat, outer_fold`` + :meth:`SurvivalHorizons.column_names` for every fold of
    ``predictions`` (predictions.csv layout: time, event, score = risk).

    ``train_parts[(r, k)] = (train_time, train_event, train_risk or None)``.
    """
    rows = []
    for (r, k), fold in predictions.groupby(["repeat", "outer_fold"], sort=True):
        train_time, train_event, train_risk = train_parts[(int(r), int(k))]
        rows.append({"repeat": int(r), "outer_fold": int(k), **fold_survival_metrics(
            h, train_time, train_event, fold["time"].to_numpy(float), fold["event"].to_numpy(int),
            fold["score"].to_numpy(float), None if train_risk is None else np.asarray(train_risk, float))})
    return pd.DataFrame(rows, columns=["repeat", "outer_fold", *h.column_names()])
