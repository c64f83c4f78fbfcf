"""Intervals of cross-validated metrics that mean what they say.

The quantity estimated is the performance of the fold models on new patients
(each outer fold's model scored on its own test patients, averaged over all
outer folds of all repeats). Its uncertainty comes from which patients happened
to be tested: the interval is a **patient-level (cluster) bootstrap**.

One bootstrap replicate draws ``n_patients`` patients with replacement
(multiplicity ``w_p``), gives every slide of patient ``p`` the weight ``w_p``
in whichever outer test fold holds it, recomputes every fold's metric on its
re-weighted test set, and averages the folds of each repeat as the point
estimate does. Repeated CV re-tests the same patients, so repeats add almost no
information about them (a t-interval over repeat means shrinks like 1/sqrt(R)
and covered 0.43 at R=5): a patient keeps the same multiplicity in every repeat,
and the replicate distribution of the R-repeat mean is the quantile average of
the R single-repeat replicate distributions (centred on each repeat's
estimate), so its percentile interval is the average of the R single-repeat
intervals, shifted to the overall mean. It does not shrink with R; pooling the
repeats' replicates instead narrowed it by ~20% where the true error shrank by
~7% (coverage 0.875 at R=5). Each single-repeat percentile bound is a mean of
bounded fold metrics, so the bounds stay within the metric's range (and are
clipped to it after the shift). Coverage: ``dev_tools/coverage_sim.py``.

Fold metrics are computed for all replicates at once as ratios of weighted
pair counts ``(w_rows' A w_cols) / (w_rows' M w_cols)``: AUC (positive x
negative pairs), macro one-vs-rest AUC (one such form per class) and Harrell's
C (event x any, comparable pairs). A weighted form equals the metric of the
re-sampled test set with the copies written out (tested).

Fold values of repeated CV are also given a corrected variance
(Nadeau & Bengio 2003; Bouckaert & Frank 2004),
``(1 / J + n_test / n_train) * s^2`` over the ``J`` fold values; used for the
paired t-test of :mod:`wsi_mil.cv.compare`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from wsi_mil.errors import ConfigError

#: primary metrics with a bootstrap form, and their range
METRIC_RANGES = {"auc": (0.0, 1.0), "macro_auc": (0.0, 1.0), "macro_auc_present": (0.0, 1.0),
                 "c_index": (0.0, 1.0)}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval."""

    estimate: float
    low: float
    high: float
    level: float
    method: str


@dataclass(frozen=True)
class _Form:
    """One weighted pair-count ratio on the rows of one test fold."""

    rows: np.ndarray  # (n_r,) positions in the fold
    cols: np.ndarray  # (n_c,)
    num: np.ndarray  # (n_r, n_c) concordant + 0.5 tied
    den: np.ndarray | None  # (n_r, n_c) comparable; None = all pairs


def _auc_form(positive: np.ndarray, score: np.ndarray) -> _Form:
    rows, cols = np.flatnonzero(positive), np.flatnonzero(~positive)
    si, sj = score[rows][:, None], score[cols][None, :]
    return _Form(rows, cols, (si > sj) + 0.5 * (si == sj), None)


def _c_index_form(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> _Form:
    rows, cols = np.flatnonzero(event), np.arange(time.size)
    ti, tj = time[rows][:, None], time[None, :]
    comp = (ti < tj) | ((ti == tj) & ~event[None, :])
    ri, rj = risk[rows][:, None], risk[None, :]
    return _Form(rows, cols, comp * ((ri > rj) + 0.5 * (ri == rj)), comp.astype(np.float64))


def _forms(metric: str, fold: pd.DataFrame) -> list[_Form]:
    """The pair-count forms of ``metric`` on one fold's rows of a predictions table."""
    if metric == "c_index":
        return [_c_index_form(fold["time"].to_numpy(float), fold["event"].to_numpy().astype(bool),
                              fold["score"].to_numpy(float))]
    y = fold["target"].to_numpy().astype(int)
    if metric == "auc":
        return [_auc_form(y == 1, fold["score"].to_numpy(float))]
    if metric in ("macro_auc", "macro_auc_present"):
        cols = sorted((c for c in fold.columns if c.startswith("score_")), key=lambda c: int(c[6:]))
        return [_auc_form(y == k, fold[c].to_numpy(float)) for k, c in enumerate(cols)]
    raise ConfigError(f"no bootstrap for metric {metric!r}; choose one of {sorted(METRIC_RANGES)}")


def _ratio(form: _Form, w: np.ndarray) -> np.ndarray:
    """Weighted ratio for each replicate; ``w (B, n_fold)`` -> ``(B,)`` (NaN: no pair)."""
    wr, wc = w[:, form.rows], w[:, form.cols]  # (B, n_r), (B, n_c)
    num = np.einsum("bi,bi->b", wr @ form.num, wc) if form.rows.size and form.cols.size else np.zeros(len(w))
    if form.den is None:
        den = wr.sum(1) * wc.sum(1)
    else:
        den = np.einsum("bi,bi->b", wr @ form.den, wc) if form.rows.size and form.cols.size else np.zeros(len(w))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_fold_metric(metric: str, fold: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """``metric`` of one fold's predictions for each row of ``weights (B, n_fold)`` -> ``(B,)``.

    Integer weights give the metric of the test set with each row repeated that
    many times. ``macro_auc``: NaN where a class has no weight; ``macro_auc_present``
    (the reference's): mean over the classes with positive and negative weight.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    values = np.stack([_ratio(f, w) for f in _forms(metric, fold)])  # (n_forms, B)
    if metric == "macro_auc_present":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(values, axis=0)
    return values.mean(axis=0)


def fold_keys(predictions: pd.DataFrame) -> list[tuple[int, int]]:
    return sorted({(int(r), int(k)) for r, k in zip(predictions["repeat"], predictions["outer_fold"],
                                                       strict=True)})


def fold_metric_replicates(predictions: pd.DataFrame, metric: str, patient_weights: pd.DataFrame
                           ) -> np.ndarray:
    """``(B, F)``: every outer fold's metric under each replicate's patient weights.

    ``predictions``: the ``predictions.csv`` layout (patient_id, repeat, outer_fold,
    target or time/event, score or score_k). ``patient_weights``: ``(B, P)`` with
    the patient ids as columns. Folds are ordered by (repeat, outer_fold).
    """
    out = []
    for r, k in fold_keys(predictions):
        fold = predictions[(predictions["repeat"] == r) & (predictions["outer_fold"] == k)]
        w = patient_weights[fold["patient_id"].astype(str).to_numpy()].to_numpy(dtype=np.float64)
        out.append(weighted_fold_metric(metric, fold.reset_index(drop=True), w))
    return np.stack(out, axis=1)


def patient_weights(patients: np.ndarray, n_boot: int, seed: int) -> pd.DataFrame:
    """``(n_boot, P)`` multiplicities of ``n_boot`` with-replacement draws of the ``P``
    patients (each row sums to ``P``); ``n_boot=0`` gives one row of ones (the data
    as observed). Columns: patient ids (str)."""
    ids = np.unique(np.asarray(patients).astype(str))
    if n_boot == 0:
        return pd.DataFrame(np.ones((1, ids.size)), columns=ids)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(ids.size, np.full(ids.size, 1.0 / ids.size), size=n_boot)
    return pd.DataFrame(counts, columns=ids)


def _cv_mean(fold_values: np.ndarray) -> np.ndarray:
    """Mean over folds of ``(B, F)`` values, NaN folds dropped -> ``(B,)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(fold_values, axis=1)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))


def check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise ConfigError(f"level={level!r}; an interval level must be in (0, 1), e.g. 0.95")
    return float(level)


def combined_replicates(fold_values: np.ndarray, observed: np.ndarray, fold_repeats: np.ndarray,
                        n_points: int | None = None) -> np.ndarray:
    """Sorted replicate distribution of the CV mean over repeats (see the module docstring).

    ``fold_values (B, F)``: bootstrap replicates of each fold's value (or paired
    difference); ``observed (F,)``: the observed fold values; ``fold_repeats (F,)``:
    the repeat of each fold. Per repeat r: ``d_r`` = replicate mean of its folds minus
    its observed mean; the result is ``mean(observed) + mean_r quantile(d_r)`` on
    ``n_points`` (default B) evenly spaced probabilities. Empty when no replicate is defined.
    """
    fold_values = np.asarray(fold_values, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    fold_repeats = np.asarray(fold_repeats)
    n_points = n_points or fold_values.shape[0]
    probs = np.linspace(0.0, 1.0, n_points)
    shifts = []
    for r in np.unique(fold_repeats):
        cols = fold_repeats == r
        if not np.isfinite(observed[cols]).any():
            continue
        dev = _cv_mean(fold_values[:, cols]) - float(np.nanmean(observed[cols]))
        dev = dev[np.isfinite(dev)]
        if dev.size:
            shifts.append(np.quantile(dev, probs))
    if not shifts:
        return np.zeros(0)
    return float(np.nanmean(observed)) + np.mean(shifts, axis=0)


def patient_bootstrap_ci(predictions: pd.DataFrame, metric: str, *, n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> Interval:
    """Mean over outer folds of ``metric`` and its patient-bootstrap percentile interval.

    See the module docstring. ``estimate`` is the mean of the fold metrics
    (undefined folds dropped), as ``mean`` in ``summary.json``.
    """
    check_level(level)
    if n_boot < 100:
        raise ConfigError(f"n_boot={n_boot}; use at least 100 bootstrap replicates (2000 is the default)")
    if predictions.empty:
        return Interval(float("nan"), float("nan"), float("nan"), level, "patient_bootstrap")
    observed = fold_metric_replicates(predictions, metric, patient_weights(predictions["patient_id"], 0, seed))[0]
    estimate = float(_cv_mean(observed[None])[0])
    weights = patient_weights(predictions["patient_id"], n_boot, seed)
    replicates = fold_metric_replicates(predictions, metric, weights)
    repeats = np.array([r for r, _ in fold_keys(predictions)])
    low, high = percentile_interval(combined_replicates(replicates, observed, repeats), level)
    lo_bound, hi_bound = METRIC_RANGES[metric]
    if np.isfinite(low):
        low, high = max(low, lo_bound), min(high, hi_bound)
    return Interval(estimate, low, high, level, "patient_bootstrap")


def corrected_variance(values: np.ndarray, test_train_ratio: float) -> float:
    """Nadeau-Bengio corrected variance of the mean of ``J`` CV fold values:
    ``(1 / J + n_test / n_train) * s^2`` (s: sd with ddof=1); NaN if J < 2."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    return float((1.0 / v.size + float(test_train_ratio)) * v.var(ddof=1))


def corrected_t_interval(values: np.ndarray, test_train_ratio: float, level: float = 0.95,
                         bounds: tuple[float, float] | None = None) -> Interval:
    """Student-t interval (J - 1 df) with the Nadeau-Bengio corrected variance,
    clipped to ``bounds`` when given (Bouckaert & Frank's corrected repeated k-fold)."""
    check_level(level)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    mean = float(v.mean()) if v.size else float("nan")
    var = corrected_variance(v, test_train_ratio)
    if not np.isfinite(var):
        return Interval(mean, float("nan"), float("nan"), level, "corrected_t")
    half = float(student_t.ppf(0.5 + level / 2.0, v.size - 1) * np.sqrt(var))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, level, "corrected_t")


def corrected_ttest(differences: np.ndarray, test_train_ratio: float) -> tuple[float, float]:
    """(t, two-sided p) of the corrected resampled t-test that the mean of the paired
    fold differences is 0 (Nadeau & Bengio; J - 1 df). p = 1 when every difference is 0."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    var = corrected_variance(d, test_train_ratio)
    if var == 0.0:
        return (0.0, 1.0) if d.mean() == 0 else (float(np.sign(d.mean()) * np.inf), 0.0)
    t = float(d.mean() / np.sqrt(var))
    return t, float(2.0 * student_t.sf(abs(t), d.size - 1))


def holdout_ratio(n_train: np.ndarray, n_test: np.ndarray) -> float:
    """Mean ``n_test / n_train`` over folds (the correction term of the corrected variance)."""
    n_train, n_test = np.asarray(n_train, dtype=np.float64), np.asarray(n_test, dtype=np.float64)
    if n_train.size == 0 or (n_train <= 0).any():
        raise ConfigError(f"n_train must be positive for every fold; got {n_train.tolist()}")
    return float(np.mean(n_test / n_train))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN kept as NaN, ignored in the count)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out
