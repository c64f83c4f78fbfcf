"""Classification metrics of tile-level tasks, per class and macro, with bootstrap CIs.

Pure numpy functions (no sklearn call per bootstrap resample, so 1,000 resamples
of a few thousand tiles take seconds). Each one is tested against scikit-learn
and a naive O(N^2) AUC.

Conventions
-----------
- ``labels`` (N,) int in ``[0, C)``; ``scores`` (N, C) float, higher = more
  likely (probabilities, logits or cosine similarities); prediction = argmax.
- Per class (one-vs-rest): ``auc`` (score of that class), ``accuracy``,
  ``balanced_accuracy``, ``f1``, ``precision``, ``recall``.
- Macro: ``auc`` = mean one-vs-rest AUC (sklearn ``multi_class="ovr",
  average="macro"``); for two classes the AUC of ``scores[:, 1]`` (the
  reference's binary convention). ``accuracy`` = multi-class accuracy,
  ``balanced_accuracy`` = mean recall over classes present in ``labels``,
  ``f1`` / ``precision`` / ``recall`` = unweighted mean over the classes
  present in the truth or the predictions, as scikit-learn's
  ``average="macro"`` (``macro_over="present"``; ``"all"``: over all C classes,
  the old convention, where a class absent from both counts 0); an undefined
  precision counts 0, as sklearn's ``zero_division=0``.
- An undefined metric (AUC of a class absent from the resample) is NaN;
  bootstrap percentiles ignore NaN resamples.
- Bootstrap units: tiles, or whole ``groups`` (patients, slides) resampled
  with replacement when tiles of one group are correlated.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from wsi_mil.errors import ConfigError

CLASS_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1", "precision", "recall")
MACRO_METRICS = CLASS_METRICS
CI_METHODS = ("percentile", "basic")
MACRO_OVER = ("present", "all")


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney U statistic (ties count 1/2); NaN if one class is absent."""
    is_positive = np.asarray(is_positive, dtype=bool)
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion_counts(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix (C, C): rows = true class, columns = predicted class."""
    flat = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _metrics_from_counts(cm: np.ndarray, macro_over: str = "present"
                         ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-class arrays (C,) and macro scalars of every label metric, from a confusion matrix."""
    n = cm.sum()
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    fp = predicted - tp
    fn = support - tp
    tn = n - tp - fp - fn
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    per_class = {
        "accuracy": (tp + tn) / n,
        "balanced_accuracy": (recall + specificity) / 2.0,
        "f1": f1,
        "precision": precision,
        "recall": recall,
    }
    present = support > 0
    over = (present | (predicted > 0)) if macro_over == "present" else np.ones_like(present)
    macro = {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "f1": float(f1[over].mean()),
        "precision": float(precision[over].mean()),
        "recall": float(recall[over].mean()),
    }
    return per_class, macro


def _all_metrics(labels: np.ndarray, scores: np.ndarray, macro_over: str = "present"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(per_class (C, M), macro (M,)) in the order of ``CLASS_METRICS``."""
    n_classes = scores.shape[1]
    preds = scores.argmax(axis=1)
    per_class, macro = _metrics_from_counts(confusion_counts(labels, preds, n_classes), macro_over)
    aucs = np.array([binary_auc(labels == c, scores[:, c]) for c in range(n_classes)])
    if n_classes == 2:
        macro_auc = aucs[1]
    else:
        macro_auc = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    per = np.stack([aucs] + [per_class[m] for m in CLASS_METRICS[1:]], axis=1)
    mac = np.array([macro_auc] + [macro[m] for m in MACRO_METRICS[1:]])
    return per, mac


def _check_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"scores must be (N, C) with N = len(labels) = {labels.shape[0]}, got {scores.shape}"
        )
    if scores.shape[1] < 2:
        raise ConfigError(f"need at least 2 classes, got scores of shape {scores.shape}")
    if labels.size == 0:
        raise ConfigError("no sample to evaluate (labels is empty)")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ConfigError(
            f"labels must lie in [0, {scores.shape[1]}), got min {labels.min()} max {labels.max()}"
        )
    return labels, scores


def _resample(n: int, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of one bootstrap resample: items, or every item of groups drawn with replacement."""
    if groups is None:
        return rng.integers(0, n, size=n)
    members = groups  # list of index arrays, one per group
    draws = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[d] for d in draws])


def metric_replicates(
    labels: np.ndarray,
    scores: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    macro_over: str = "present",
) -> tuple[np.ndarray, np.ndarray | None]:
    """(values (C+1, M), bootstrap replicates (B, C+1, M) or None): rows = classes then macro.

    The same ``seed``, ``labels`` and ``groups`` give the same resamples, so
    replicates of several score sets (seeds of a few-shot run) can be averaged
    into the replicates of their mean.
    """
    labels, scores = _check_inputs(labels, scores)
    if macro_over not in MACRO_OVER:
        raise ConfigError(f"macro_over={macro_over!r}; valid: {list(MACRO_OVER)}")
    n_classes = scores.shape[1]
    per, mac = _all_metrics(labels, scores, macro_over)
    values = np.concatenate([per, mac[None, :]], axis=0)  # (C+1, M)
    if n_bootstrap <= 0:
        return values, None
    members = None
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ConfigError(f"groups {groups.shape} must match labels {labels.shape}")
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_bootstrap, *values.shape))
    for b in range(n_bootstrap):
        idx = _resample(labels.size, members, rng)
        p, m = _all_metrics(labels[idx], scores[idx], macro_over)
        boot[b, :n_classes] = p
        boot[b, n_classes] = m
    return values, boot


def interval(values: np.ndarray, boot: np.ndarray | None, confidence_level: float = 0.95,
             ci_method: str = "percentile") -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of ``values`` from bootstrap replicates (NaN without replicates)."""
    if ci_method not in CI_METHODS:
        raise ConfigError(f"ci_method={ci_method!r}; valid: {list(CI_METHODS)}")
    if boot is None:
        return np.full_like(values, np.nan), np.full_like(values, np.nan)
    alpha = (1.0 - confidence_level) / 2.0
    with warnings.catch_warnings():  # all-NaN slices (absent class) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        q_low = np.nanquantile(boot, alpha, axis=0)
        q_high = np.nanquantile(boot, 1.0 - alpha, axis=0)
    if ci_method == "percentile":
        return q_low, q_high
    return 2 * values - q_high, 2 * values - q_low


def metrics_frame(values: np.ndarray, low: np.ndarray, high: np.ndarray,
                  names: Sequence[str]) -> pd.DataFrame:
    """Long table (class, metric, value, ci_low, ci_high) of (C+1, M) arrays."""
    rows = []
    for i, name in enumerate([*names, "macro"]):
        for j, metric in enumerate(CLASS_METRICS):
            rows.append((name, metric, values[i, j], low[i, j], high[i, j]))
    return pd.DataFrame(rows, columns=["class", "metric", "value", "ci_low", "ci_high"])


def class_names_of(scores: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    n_classes = np.shape(scores)[1]
    names = [str(c) for c in (class_names if class_names is not None else range(n_classes))]
    if len(names) != n_classes:
        raise ConfigError(f"{len(names)} class names given for {n_classes} score columns: {names}")
    return names


def classification_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    ci_method: str = "percentile",
    groups: np.ndarray | None = None,
    macro_over: str = "present",
) -> pd.DataFrame:
    """Per-class and macro metrics with bootstrap CIs as a long table.

    Columns: ``class`` (a class name or ``"macro"``), ``metric``, ``value``,
    ``ci_low``, ``ci_high``. ``n_bootstrap=0`` skips the CI (NaN columns).
    ``ci_method="percentile"`` gives the percentile interval of the resampled
    metric; ``"basic"`` the reference's reflected interval
    ``(2 theta - q_high, 2 theta - q_low)``. ``groups`` (N,): resample whole
    groups (patients) instead of items.
    """
    names = class_names_of(np.asarray(scores, dtype=np.float64).reshape(len(scores), -1), class_names)
    if ci_method not in CI_METHODS:
        raise ConfigError(f"ci_method={ci_method!r}; valid: {list(CI_METHODS)}")
    values, boot = metric_replicates(labels, scores, n_bootstrap, seed, groups, macro_over)
    low, high = interval(values, boot, confidence_level, ci_method)
    return metrics_frame(values, low, high, names)


def macro_metric(table: pd.DataFrame, metric: str) -> float:
    """The macro ``value`` of ``metric`` in a :func:`classification_metrics` table."""
    sel = table[(table["class"] == "macro") & (table["metric"] == metric)]
    if sel.empty:
        raise ConfigError(f"metric {metric!r} not in table; valid: {list(MACRO_METRICS)}")
    return float(sel["value"].iloc[0])
