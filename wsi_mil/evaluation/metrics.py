"""Evaluation metrics as pure functions of numpy arrays.

Conventions, fixed once here:

- ``auc``: binary ROC AUC from scores (higher = more likely positive); equal to
  :func:`sklearn.metrics.roc_auc_score` (ties in scores count 1/2).
- ``macro_ovr_auc``: mean over classes of the one-vs-rest AUC of the class
  probability (sklearn's ``multi_class="ovr", average="macro"``).
- ``c_index``: Harrell's concordance index where a **higher risk means a
  shorter survival**. Equal to ``lifelines.utils.concordance_index(time,
  -risk, event)``: a pair (i, j) is comparable when ``event_i`` is 1 and
  either ``time_i < time_j``, or ``time_i == time_j`` with j censored (a
  subject censored at a death time is assumed to outlive it); it is
  concordant when ``risk_i > risk_j``; tied risks count 1/2. Two deaths at the
  same time are not comparable.

A metric that is undefined (a single class, no comparable pair) returns NaN
and emits a :class:`MetricWarning` instead of raising: one degenerate fold must
not crash a cross-validation.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata
from scipy.stats import t as student_t


class MetricWarning(UserWarning):
    """A metric is undefined on the given data and NaN is returned."""


def _undefined(message: str) -> float:
    warnings.warn(message, MetricWarning, stacklevel=3)
    return float("nan")


def auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC (Mann-Whitney U / (n_pos * n_neg)), NaN if one class only."""
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return _undefined(f"AUC undefined: {n_pos} positive and {n_neg} negative samples")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_ovr_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUC on class probabilities ``proba`` (n, K); NaN if a class is absent."""
    y = np.asarray(y_true).ravel().astype(int)
    p = np.asarray(proba, dtype=np.float64)
    n_classes = p.shape[1]
    present = np.bincount(y, minlength=n_classes)
    if (present == 0).any():
        return _undefined(f"macro AUC undefined: class counts {present.tolist()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return float(np.mean([auc(y == k, p[:, k]) for k in range(n_classes)]))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches."""
    y, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y.size == 0:
        return _undefined("accuracy undefined on 0 samples")
    return float(np.mean(y == p))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    classes = np.unique(y)
    if classes.size == 0:
        return _undefined("balanced accuracy undefined on 0 samples")
    return float(np.mean([np.mean(p[y == c] == c) for c in classes]))


def c_index(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """Harrell's c-index, higher ``risk`` = shorter survival; NaN if no comparable pair.

    O(n^2 / chunk) memory-bounded vectorised count; exact (no float sums of
    fractions): concordant + 0.5 * tied over comparable pairs.
    """
    t = np.asarray(time, dtype=np.float64).ravel()
    r = np.asarray(risk, dtype=np.float64).ravel()
    e = np.asarray(event).ravel().astype(bool)
    if not (t.size == r.size == e.size):
        raise ValueError(f"c_index: sizes differ: time {t.size}, risk {r.size}, event {e.size}")
    idx = np.flatnonzero(e)
    concordant = 0
    tied = 0
    comparable = 0
    chunk = max(1, 4_000_000 // max(t.size, 1))
    for start in range(0, idx.size, chunk):
        i = idx[start:start + chunk]
        ti, tj = t[i][:, None], t[None, :]
        comp = (ti < tj) | ((ti == tj) & ~e[None, :])  # (n_i, n): j outlived i's death
        ri, rj = r[i][:, None], r[None, :]
        comparable += int(comp.sum())
        concordant += int((comp & (ri > rj)).sum())
        tied += int((comp & (ri == rj)).sum())
    if comparable == 0:
        return _undefined("c-index undefined: no comparable pair (no event before another time)")
    return float((concordant + 0.5 * tied) / comparable)


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high): Student-t interval of the mean over folds (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (float("nan"),) * 4
    mean = float(v.mean())
    if v.size == 1:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(v.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, v.size - 1) * sd / np.sqrt(v.size))
    return mean, sd, mean - half, mean + half


def repeated_cv_ci(values: np.ndarray, repeats: np.ndarray,
                   level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of fold metrics from repeated cross-validation.

    Folds of one repeat reuse the same slides, so with several repeats the interval is
    the Student-t interval over the *repeat means* (R - 1 degrees of freedom), not over
    all R x K folds (which would be too narrow). The mean and sd are over all folds.
    With one repeat this is :func:`mean_ci`.
    """
    v = np.asarray(values, dtype=np.float64)
    reps = np.asarray(repeats)
    ok = ~np.isnan(v)
    mean, sd, low, high = mean_ci(v, level)
    groups = np.unique(reps[ok])
    if groups.size > 1:
        means = np.array([v[ok & (reps == g)].mean() for g in groups])
        _, _, low, high = mean_ci(means, level)
        low, high = low - means.mean() + mean, high - means.mean() + mean
    return mean, sd, low, high


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap over samples (rows) of ``arrays``.

    Resamples giving an undefined (NaN) metric are dropped.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    rng = np.random.default_rng(seed)
    estimate = metric(*arrays)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for _ in range(n_boot):
            i = rng.integers(0, n, n)
            values.append(metric(*(a[i] for a in arrays)))
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float(estimate), float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(estimate), float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))
