"""ROC curves per MIL head from pooled outer-fold predictions.

One figure compares heads (one curve per run dir). The curve and its AUC use
the outer-fold test predictions pooled over folds; the legend also lists the
AUC of every outer fold (``r{repeat}`` lines), which is what the CV summary
averages (same metric functions, ``wsi_mil.evaluation.metrics``). Multiclass
runs get the one-vs-rest macro curve (mean TPR over classes on a common FPR
grid) and the macro one-vs-rest AUC (mean of the per-class AUCs, as
``roc_auc_score(multi_class="ovr", average="macro")``; n/a for a fold that
lacks a class).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from wsi_mil.errors import FileFormatError
from wsi_mil.evaluation import metrics
from wsi_mil.reports.figures import new_figure, save_figure
from wsi_mil.reports.runs import (
    TASK_BINARY,
    TASK_MULTICLASS,
    RunData,
    class_score_columns,
    prediction_kind,
)

FOLDS_PER_LINE = 6


def _binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.MetricWarning)
        return metrics.auc(y, score)


def _ovr_macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over classes; NaN when a class is absent (as the CV summary)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.MetricWarning)
        return metrics.macro_ovr_auc(y, probs)


def _targets_scores(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    kind = prediction_kind(predictions)
    if kind not in (TASK_BINARY, TASK_MULTICLASS):
        raise FileFormatError(f"ROC curves need a classification run, got a {kind} run")
    y = predictions["target"].to_numpy().astype(int)
    if kind == TASK_BINARY:
        return y, predictions["score"].to_numpy(dtype=float), kind
    return y, predictions[class_score_columns(predictions)].to_numpy(dtype=float), kind


def prediction_auc(predictions: pd.DataFrame) -> float:
    """AUC of a prediction table (binary, or macro one-vs-rest for multiclass)."""
    y, scores, kind = _targets_scores(predictions)
    return _binary_auc(y, scores) if kind == TASK_BINARY else _ovr_macro_auc(y, scores)


def fold_aucs(predictions: pd.DataFrame) -> pd.DataFrame:
    """AUC of every outer fold: columns ``repeat, outer_fold, auc, n``."""
    rows = []
    for (repeat, fold), part in predictions.groupby(["repeat", "outer_fold"], sort=True):
        rows.append({"repeat": int(repeat), "outer_fold": int(fold),
                     "auc": prediction_auc(part), "n": len(part)})
    return pd.DataFrame(rows, columns=["repeat", "outer_fold", "auc", "n"])


def roc_points(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ROC curve ``(fpr, tpr)``; the one-vs-rest macro curve for multiclass."""
    y, scores, kind = _targets_scores(predictions)
    if kind == TASK_BINARY:
        if len(np.unique(y)) < 2:
            return np.array([0.0, 1.0]), np.array([0.0, 1.0])
        fpr, tpr, _ = roc_curve(y, scores)
        return fpr, tpr
    curves = []
    for c in range(scores.shape[1]):
        yc = (y == c).astype(int)
        if len(np.unique(yc)) == 2:
            curves.append(roc_curve(yc, scores[:, c])[:2])
    if not curves:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)
    return grid, tpr


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def legend_label(name: str, predictions: pd.DataFrame) -> str:
    """``name  pooled AUC x`` then one ``r{repeat} folds: a b c`` line per repeat."""
    kind = prediction_kind(predictions)
    what = "macro OvR AUC" if kind == TASK_MULTICLASS else "AUC"
    lines = [f"{name}  pooled {what} {_fmt(prediction_auc(predictions))}"]
    per_fold = fold_aucs(predictions)
    for repeat, part in per_fold.groupby("repeat", sort=True):
        values = [_fmt(a) for a in part["auc"]]
        for start in range(0, len(values), FOLDS_PER_LINE):
            chunk = " ".join(values[start:start + FOLDS_PER_LINE])
            prefix = f"  r{repeat} folds:" if start == 0 else "    "
            lines.append(f"{prefix} {chunk}")
    return "\n".join(lines)


def plot_roc(runs: Sequence[RunData], title: str | None = None) -> Figure:
    """One ROC figure with a curve per run (head); per-fold AUCs in the legend."""
    fig = new_figure(6.4, 5.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    kinds = set()
    for run in runs:
        if run.predictions is None:
            continue
        kinds.add(prediction_kind(run.predictions))
        fpr, tpr = roc_points(run.predictions)
        ax.plot(fpr, tpr, linewidth=1.8, label=legend_label(run.label, run.predictions))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    suffix = ", one-vs-rest macro" if kinds == {TASK_MULTICLASS} else ""
    ax.set_title((title or "ROC, pooled outer-fold test predictions") + suffix, fontsize=10)
    ax.legend(loc="lower right", fontsize=7, frameon=True)
    ax.set_aspect("equal")
    return fig


def make_roc_figure(runs: Sequence[RunData], path: str | Path, title: str | None = None) -> Path:
    """Plot :func:`plot_roc` and write it as a PNG (atomically)."""
    return save_figure(plot_roc(runs, title=title), path)
