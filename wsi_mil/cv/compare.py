"""Paired comparisons of CV runs made on the same fold plan.

Every pair of runs is compared on the same folds and patients, three ways:

- ``p_corrected_t``: corrected resampled t-test on the paired fold metrics
  (Nadeau & Bengio 2003; with repeats, Bouckaert & Frank 2004), J - 1 df;
- ``p_bootstrap`` and ``diff_low/diff_high``: paired patient-level bootstrap on
  the out-of-fold predictions (both runs re-weighted by the same patient draw;
  repeats combined as in :mod:`wsi_mil.cv.statistics`); two-sided p from the
  replicate distribution of the difference (resolution 1 / n_boot);
- ``p_delong``: DeLong's test of two correlated AUCs, per outer fold, the fold
  differences' variances summed (folds are disjoint test sets); binary AUC with
  one repeat only (repeats re-test the same patients), NaN otherwise, and NaN
  when that variance is 0 with a non-zero difference (separable folds of a few
  slides, where the normal approximation says nothing).

p-values are Holm-adjusted over the pairs of a comparison (``*_holm``).
Runs made on different fold plans are refused (:class:`FoldPlanMismatchError`).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from wsi_mil.cv import statistics
from wsi_mil.errors import ConfigError, FileFormatError, FoldPlanMismatchError


@dataclass
class RunData:
    """What a comparison reads from one run directory."""

    label: str
    run_dir: Path
    metric: str
    plan: dict
    folds: pd.DataFrame
    predictions: pd.DataFrame


@dataclass
class Comparison:
    """``runs``: one row per run, best first; ``pairs``: one row per pair of runs."""

    metric: str
    runs: pd.DataFrame
    pairs: pd.DataFrame


def read_run(run_dir: str | Path, label: str | None = None) -> RunData:
    """Read summary.json, folds.csv, predictions.csv and fold_plan.json of a run."""
    run_dir = Path(run_dir)
    needed = ("summary.json", "folds.csv", "predictions.csv", "fold_plan.json")
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise FileFormatError(f"run {str(run_dir)!r} lacks {missing}: compare finished CV runs only")
    summary = json.loads((run_dir / "summary.json").read_text())
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"slide_id": str, "patient_id": str})
    return RunData(label or str(run_dir), run_dir, summary["metric"],
                   json.loads((run_dir / "fold_plan.json").read_text()),
                   pd.read_csv(run_dir / "folds.csv"), predictions)


def check_same_plan(runs: list[RunData]) -> None:
    """Raise :class:`FoldPlanMismatchError` unless all runs share one fold plan and metric."""
    ref = runs[0]
    for run in runs[1:]:
        if run.plan != ref.plan:
            raise FoldPlanMismatchError(
                f"runs {ref.label!r} ({ref.run_dir}) and {run.label!r} ({run.run_dir}) were made on different "
                "fold plans; paired tests need the same folds: rerun one with the other's fold_plan.json")
        if run.metric != ref.metric:
            raise ConfigError(f"runs {ref.label!r} and {run.label!r} report different metrics "
                              f"({ref.metric!r} vs {run.metric!r}); compare runs of one task")


def _aligned_fold_values(a: RunData, b: RunData) -> pd.DataFrame:
    cols = ["repeat", "outer_fold", a.metric, "n_train", "n_test"]
    return a.folds[cols].merge(b.folds[["repeat", "outer_fold", b.metric]], on=["repeat", "outer_fold"],
                               suffixes=("_a", "_b"))


def _midrank_placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components: V10 (per positive), V01 (per negative), via midranks."""
    m, n = pos.size, neg.size
    both = rankdata(np.concatenate([pos, neg]))
    v10 = (both[:m] - rankdata(pos)) / n  # share of negatives below each positive (ties 1/2)
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m  # share of positives above each negative
    return v10, v01


def delong_diff(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> tuple[float, float]:
    """(AUC_a - AUC_b, its DeLong variance) on the same samples; NaN if one class only."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan"), float("nan")
    comps = [_midrank_placements(np.asarray(s, float)[y], np.asarray(s, float)[~y]) for s in (score_a, score_b)]
    v10 = np.stack([c[0] for c in comps])  # (2, m)
    v01 = np.stack([c[1] for c in comps])  # (2, n)
    diff = float(v10[0].mean() - v10[1].mean())
    contrast = np.array([1.0, -1.0])
    var = 0.0
    for v in (v10, v01):
        if v.shape[1] > 1:
            var += float(contrast @ np.cov(v) @ contrast) / v.shape[1]
    return diff, var


def _delong_p(a: RunData, b: RunData) -> float:
    if a.metric != "auc" or a.predictions["repeat"].nunique() != 1:
        return float("nan")
    merged = a.predictions.merge(b.predictions[["slide_id", "repeat", "score"]], on=["slide_id", "repeat"],
                                 suffixes=("_a", "_b"))
    diffs, variances = [], []
    for _, fold in merged.groupby("outer_fold"):
        d, v = delong_diff(fold["target"], fold["score_a"], fold["score_b"])
        if np.isfinite(d):
            diffs.append(d)
            variances.append(v)
    if not diffs:
        return float("nan")
    k = len(diffs)
    var = float(np.sum(variances)) / k**2
    if var == 0.0:  # e.g. AUCs of 0 or 1 on a few slides: the normal approximation says nothing
        return 1.0 if np.mean(diffs) == 0 else float("nan")
    return float(2.0 * norm.sf(abs(np.mean(diffs)) / np.sqrt(var)))


def _bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p of 'difference = 0' from a replicate distribution of the difference."""
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return float("nan")
    if np.all(r == 0):
        return 1.0
    return float(min(1.0, 2.0 * min(np.mean(r <= 0), np.mean(r >= 0))))


def compare_runs(runs: list[RunData], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Comparison:
    """Paired comparison of ``runs`` (same fold plan); see the module docstring."""
    if len(runs) < 2:
        raise ConfigError(f"a comparison needs >= 2 runs; got {len(runs)}")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"run labels must be distinct to compare; got {labels}: choose another compare column")
    check_same_plan(runs)
    metric = runs[0].metric
    if metric not in statistics.METRIC_RANGES:
        raise ConfigError(f"no paired comparison for metric {metric!r}; choose one of {sorted(statistics.METRIC_RANGES)}")
    statistics.check_level(level)
    patients = pd.concat([r.predictions["patient_id"] for r in runs])
    weights = statistics.patient_weights(patients, n_boot, seed)
    observed_w = statistics.patient_weights(patients, 0, seed)
    reps, observed, intervals = {}, {}, {}
    for run in runs:
        reps[run.label] = statistics.fold_metric_replicates(run.predictions, metric, weights)
        observed[run.label] = statistics.fold_metric_replicates(run.predictions, metric, observed_w)[0]
        intervals[run.label] = statistics.patient_bootstrap_ci(run.predictions, metric, n_boot=n_boot,
                                                               level=level, seed=seed)
    runs_df = pd.DataFrame([{"run": r.label, "metric": metric, "mean": intervals[r.label].estimate,
                             "ci_low": intervals[r.label].low, "ci_high": intervals[r.label].high,
                             "n_folds": int(np.isfinite(observed[r.label]).sum()), "run_path": str(r.run_dir)}
                            for r in runs])
    runs_df = runs_df.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
    by_label = {r.label: r for r in runs}
    repeats = np.array([r for r, _ in statistics.fold_keys(runs[0].predictions)])
    rows = []
    for la, lb in itertools.combinations(runs_df["run"], 2):
        a, b = by_label[la], by_label[lb]
        folds = _aligned_fold_values(a, b)
        d = folds[f"{metric}_a"].to_numpy(float) - folds[f"{metric}_b"].to_numpy(float)
        t, p_t = statistics.corrected_ttest(d, statistics.holdout_ratio(folds.n_train, folds.n_test))
        combined = statistics.combined_replicates(reps[la] - reps[lb], observed[la] - observed[lb], repeats)
        low, high = statistics.percentile_interval(combined, level)
        rows.append({"run_a": la, "run_b": lb, "diff": float(np.nanmean(d)), "diff_low": low, "diff_high": high,
                     "t_corrected": t, "p_corrected_t": p_t, "p_bootstrap": _bootstrap_p(combined),
                     "p_delong": _delong_p(a, b), "n_folds": int(np.isfinite(d).sum())})
    pairs = pd.DataFrame(rows)
    for col in ("p_corrected_t", "p_bootstrap", "p_delong"):
        pairs[f"{col}_holm"] = statistics.holm(pairs[col].to_numpy(float))
    return Comparison(metric, runs_df, pairs)


def plot_comparison(comparison: Comparison, path: str | Path, title: str = "") -> Path:
    """Mean and interval of every run, best first (PNG); returns ``path``."""
    from matplotlib.figure import Figure

    from wsi_mil.io.atomic import atomic_path

    runs = comparison.runs
    fig = Figure(figsize=(6.0, 0.45 * len(runs) + 1.2))
    ax = fig.add_subplot()
    ypos = np.arange(len(runs))[::-1]  # best at the top
    err = np.vstack([runs["mean"] - runs["ci_low"], runs["ci_high"] - runs["mean"]])
    ax.errorbar(runs["mean"], ypos, xerr=err, fmt="o", color="black", ecolor="grey", capsize=3)
    ax.set_yticks(ypos, runs["run"])
    ax.set_xlabel(f"{comparison.metric} (mean over outer folds, 95% patient-bootstrap interval)")
    lo, hi = statistics.METRIC_RANGES[comparison.metric]
    ax.set_xlim(max(lo, float(np.nanmin(runs["ci_low"])) - 0.05), min(hi, float(np.nanmax(runs["ci_high"])) + 0.05))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
