"""Kaplan-Meier curves of high- vs low-risk test slides, with a log-rank test.

The risk cut-off of each outer fold is that fold's ``train_risk_median`` in
``folds.csv``: the median risk the refit model gives to its *own training*
slides. It is never computed on the test fold (a test-fold median would split
every fold 50/50 by construction and make the curves look better than they
are). A test slide is high-risk when its score is strictly above its fold's
cut-off; ties go to the low-risk group.

Each slide is tested once per repeat, so the curves use one repeat (the first
one by default): pooling repeats would count every patient several times and
make the log-rank p-value too small.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from matplotlib.figure import Figure

from wsi_mil.errors import FileFormatError
from wsi_mil.reports.figures import new_figure, save_figure
from wsi_mil.reports.runs import TASK_SURVIVAL, RunData, prediction_kind

CUTOFF_COLUMN = "train_risk_median"
HIGH, LOW = "high risk", "low risk"


@dataclass(frozen=True)
class KaplanMeierResult:
    """What the KM figure shows: group sizes, log-rank statistic and p-value."""

    repeat: int
    n_high: int
    n_low: int
    test_statistic: float
    p_value: float


def risk_groups(predictions: pd.DataFrame, folds: pd.DataFrame | None,
                repeat: int | None = None) -> pd.DataFrame:
    """Test slides of one repeat with columns ``cutoff`` and ``group`` (high / low risk).

    ``repeat=None`` takes the first repeat present. Raises FileFormatError when
    ``folds`` has no ``train_risk_median`` for a fold (no test-fold fallback).
    """
    if prediction_kind(predictions) != TASK_SURVIVAL:
        raise FileFormatError("Kaplan-Meier curves need survival predictions (time, event, score)")
    if folds is None or CUTOFF_COLUMN not in folds.columns:
        have = [] if folds is None else sorted(folds.columns)
        raise FileFormatError(
            f"folds.csv needs a {CUTOFF_COLUMN!r} column (the training-part risk median of each "
            f"outer fold) for the Kaplan-Meier cut-off; it has {have}"
        )
    repeats = sorted(int(r) for r in predictions["repeat"].unique())
    if repeat is None:
        repeat = int(repeats[0])
    if repeat not in repeats:
        raise FileFormatError(f"repeat {repeat} not in predictions; repeats: {repeats}")
    preds = predictions[predictions["repeat"] == repeat]
    cutoffs = folds.loc[folds["repeat"] == repeat, ["outer_fold", CUTOFF_COLUMN]]
    cutoffs = cutoffs.rename(columns={CUTOFF_COLUMN: "cutoff"})
    merged = preds.merge(cutoffs, on="outer_fold", how="left", validate="many_to_one")
    missing = sorted(int(k) for k in merged.loc[merged["cutoff"].isna(), "outer_fold"].unique())
    if missing:
        raise FileFormatError(
            f"folds.csv has no {CUTOFF_COLUMN} for repeat {repeat}, outer folds {missing}"
        )
    merged["group"] = np.where(merged["score"] > merged["cutoff"], HIGH, LOW)
    return merged


def logrank(groups: pd.DataFrame) -> tuple[float, float]:
    """``(test_statistic, p_value)`` of lifelines' log-rank test, high vs low risk."""
    high = groups[groups["group"] == HIGH]
    low = groups[groups["group"] == LOW]
    if high.empty or low.empty:
        return float("nan"), float("nan")
    result = logrank_test(high["time"], low["time"],
                          event_observed_A=high["event"], event_observed_B=low["event"])
    return float(result.test_statistic), float(result.p_value)


def plot_kaplan_meier(run: RunData, repeat: int | None = None
                      ) -> tuple[Figure, KaplanMeierResult]:
    """KM curves of the high / low-risk test slides of one survival run."""
    if run.predictions is None:
        raise FileFormatError(f"{run.run_dir} has no predictions.csv")
    groups = risk_groups(run.predictions, run.folds, repeat=repeat)
    used_repeat = int(groups["repeat"].iloc[0])
    stat, p_value = logrank(groups)
    fig = new_figure(6.4, 4.8)
    ax = fig.add_subplot()
    for name, color in ((LOW, "tab:blue"), (HIGH, "tab:red")):
        part = groups[groups["group"] == name]
        if part.empty:
            continue
        kmf = KaplanMeierFitter(label=f"{name} (n={len(part)}, events={int(part['event'].sum())})")
        kmf.fit(part["time"], event_observed=part["event"])
        kmf.plot_survival_function(ax=ax, ci_show=True, color=color)
    p_text = "n/a" if np.isnan(p_value) else f"{p_value:.3g}"
    ax.set_title(
        f"{run.label}: Kaplan-Meier, repeat {used_repeat}, cut-off = training risk median\n"
        f"log-rank p = {p_text}", fontsize=9,
    )
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    result = KaplanMeierResult(
        repeat=used_repeat,
        n_high=int((groups["group"] == HIGH).sum()),
        n_low=int((groups["group"] == LOW).sum()),
        test_statistic=stat,
        p_value=p_value,
    )
    return fig, result


def make_kaplan_meier_figure(run: RunData, path: str | Path, repeat: int | None = None
                             ) -> tuple[Path, KaplanMeierResult]:
    """Plot :func:`plot_kaplan_meier` and write it as a PNG (atomically)."""
    fig, result = plot_kaplan_meier(run, repeat=repeat)
    return save_figure(fig, path), result
