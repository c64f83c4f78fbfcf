"""Evaluation metrics as pure functions of numpy arrays.

Conventions, fixed once here:

- ``auc``: binary ROC AUC from scores (higher = more likely positive); equal to
  :func:`sklearn.metrics.roc_auc_score` (ties in scores count 1/2).
- ``macro_ovr_auc``: mean over classes of the one-vs-rest AUC of the class
  probability (sklearn's ``multi_class="ovr", average="macro"``); with
  ``classes="present"``, the reference's (HistoSSLscaling
  ``compute_mean_one_vs_all_auc``): the mean over the classes present in
  ``y_true`` only, on whatever scores are given (the reference passes logits).
- ``uno_c_index``, ``time_dependent_auc``, ``integrated_brier_score``: IPCW
  survival metrics delegated to scikit-survival (censoring distribution and,
  for the Brier score, the Breslow baseline hazard fitted on the training
  part only).
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

from wsi_mil.errors import ConfigError


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


MULTICLASS_AUC_CLASSES = ("all", "present")


def macro_ovr_auc(y_true: np.ndarray, proba: np.ndarray, classes: str = "all") -> float:
    """Macro one-vs-rest AUC of scores ``proba`` (n, K).

    ``classes="all"`` (default, sklearn): NaN if a class is absent from ``y_true``.
    ``classes="present"`` (the reference): mean over the classes present in
    ``y_true``; NaN if fewer than two are present.
    """
    if classes not in MULTICLASS_AUC_CLASSES:
        raise ConfigError(f"classes={classes!r}; choose one of {list(MULTICLASS_AUC_CLASSES)}")
    y = np.asarray(y_true).ravel().astype(int)
    p = np.asarray(proba, dtype=np.float64)
    n_classes = p.shape[1]
    present = np.bincount(y, minlength=n_classes)
    if classes == "all" and (present == 0).any():
        return _undefined(f"macro AUC undefined: class counts {present.tolist()}")
    if classes == "present" and (present > 0).sum() < 2:
        return _undefined(f"macro AUC undefined: class counts {present.tolist()}")
    keep = [k for k in range(n_classes) if present[k] > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return float(np.mean([auc(y == k, p[:, k]) for k in keep]))


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


def std_ref(values: np.ndarray) -> float:
    """Population sd (ddof=0) of the finite values: the reference paper's "std"."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.std(ddof=0)) if v.size else float("nan")


def _survival_arrays(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    t = np.asarray(time, dtype=np.float64).ravel()
    e = np.asarray(event).ravel().astype(bool)
    if t.size != e.size:
        raise ValueError(f"sizes differ: time {t.size}, event {e.size}")
    return Surv.from_arrays(event=e, time=t)


def uno_c_index(train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray,
                risk: np.ndarray, tau: float | None = None) -> float:
    """Uno's IPCW concordance (higher ``risk`` = shorter survival), pairs truncated at ``tau``.

    The censoring distribution is the Kaplan-Meier estimate on the training part
    (``train_time``, ``train_event``). Equal to
    ``sksurv.metrics.concordance_index_ipcw(train, test, risk, tau)[0]``; NaN with a
    :class:`MetricWarning` where scikit-survival refuses the data (e.g. test times
    beyond the last training time with no ``tau``, or no comparable pair).
    """
    from sksurv.metrics import concordance_index_ipcw

    train, test = _survival_arrays(train_time, train_event), _survival_arrays(time, event)
    try:
        return float(concordance_index_ipcw(train, test, np.asarray(risk, dtype=np.float64).ravel(), tau=tau)[0])
    except (ValueError, ZeroDivisionError) as err:
        return _undefined(f"Uno's C undefined: {err}")


def time_dependent_auc(train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray,
                       risk: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, float]:
    """(AUC at each of ``times``, mean AUC): cumulative/dynamic AUC with IPCW weights.

    ``sksurv.metrics.cumulative_dynamic_auc``; ``times`` must lie in the test
    follow-up range. All NaN (with a :class:`MetricWarning`) where scikit-survival
    refuses the data.
    """
    from sksurv.metrics import cumulative_dynamic_auc

    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    train, test = _survival_arrays(train_time, train_event), _survival_arrays(time, event)
    try:
        aucs, mean = cumulative_dynamic_auc(train, test, np.asarray(risk, dtype=np.float64).ravel(), times)
    except ValueError as err:
        _undefined(f"time-dependent AUC undefined: {err}")
        return np.full(times.size, np.nan), float("nan")
    return np.asarray(aucs, dtype=np.float64), float(mean)


def breslow_survival(train_risk: np.ndarray, train_time: np.ndarray, train_event: np.ndarray,
                     risk: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Survival probabilities ``(n, T)`` of subjects with ``risk`` at ``times``.

    Breslow's baseline hazard fitted on the training part (its risks, times, events)
    and ``S(t | r) = S0(t) ** exp(r)`` (``sksurv.linear_model.coxph.BreslowEstimator``).
    """
    from sksurv.linear_model.coxph import BreslowEstimator

    breslow = BreslowEstimator().fit(np.asarray(train_risk, dtype=np.float64).ravel(),
                                     np.asarray(train_event).ravel().astype(bool),
                                     np.asarray(train_time, dtype=np.float64).ravel())
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    # S0 is a step function; clip to its domain (before the first event it is 1)
    s0 = breslow.baseline_survival_
    steps = np.searchsorted(s0.x, times, side="right") - 1
    base = np.where(steps >= 0, s0.y[np.clip(steps, 0, None)], 1.0)
    return base[None, :] ** np.exp(np.asarray(risk, dtype=np.float64).ravel())[:, None]


def integrated_brier_score(train_time: np.ndarray, train_event: np.ndarray, train_risk: np.ndarray,
                           time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                           times: np.ndarray) -> float:
    """Integrated Brier score over ``times`` (>= 2 points, in the test follow-up range).

    Survival curves from :func:`breslow_survival` (baseline on the training part
    only), IPCW weights from the training part's censoring distribution
    (``sksurv.metrics.integrated_brier_score``). Lower is better; NaN with a
    :class:`MetricWarning` where scikit-survival refuses the data.
    """
    from sksurv.metrics import integrated_brier_score as sksurv_ibs

    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if times.size < 2:
        return _undefined(f"integrated Brier score needs >= 2 time points; got {times.tolist()}")
    train, test = _survival_arrays(train_time, train_event), _survival_arrays(time, event)
    surv = breslow_survival(train_risk, train_time, train_event, risk, times)
    try:
        return float(sksurv_ibs(train, test, surv, times))
    except ValueError as err:
        return _undefined(f"integrated Brier score undefined: {err}")


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


def cluster_bootstrap_mean_ci(
    values: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per column of ``values`` (Q,) or (Q, M): percentile bootstrap of the mean
    resampling whole groups (patients, slides, images) with replacement.

    Items of one group are correlated (captions of one image, tiles of one
    patient), so the group, not the item, is the unit resampled. Each resample
    draws as many groups as there are; its mean is over the items of the drawn
    groups (a group drawn twice counts twice). ``groups=None``: every item is
    its own group (the ordinary bootstrap). ``n_boot=0``: NaN bounds.
    """
    v = np.asarray(values, dtype=np.float64)
    squeeze = v.ndim == 1
    v = v.reshape(len(v), -1)  # (Q, M)
    if v.shape[0] == 0:
        raise ValueError("cluster_bootstrap_mean_ci: no value")
    mean = v.mean(axis=0)
    low = np.full_like(mean, np.nan)
    high = np.full_like(mean, np.nan)
    if n_boot > 0:
        g = np.arange(len(v)) if groups is None else np.asarray(groups)
        if g.shape[0] != v.shape[0]:
            raise ValueError(f"cluster_bootstrap_mean_ci: {g.shape[0]} groups for {v.shape[0]} values")
        _, inverse = np.unique(g, return_inverse=True)
        n_groups = int(inverse.max()) + 1
        sums = np.zeros((n_groups, v.shape[1]))
        np.add.at(sums, inverse, v)  # (G, M)
        counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)  # (G,)
        rng = np.random.default_rng(seed)
        boot = np.empty((n_boot, v.shape[1]))
        for start in range(0, n_boot, 256):  # (b, G) draw counts per group, in blocks
            b = min(256, n_boot - start)
            draws = rng.integers(0, n_groups, size=(b, n_groups))
            weights = np.stack([np.bincount(d, minlength=n_groups) for d in draws]).astype(np.float64)
            boot[start:start + b] = (weights @ sums) / (weights @ counts)[:, None]
        alpha = (1 - level) / 2
        low, high = np.quantile(boot, alpha, axis=0), np.quantile(boot, 1 - alpha, axis=0)
    if squeeze:
        return mean[0], low[0], high[0]
    return mean, low, high
