"""Files of a CV run directory (the contract read by reports and results).

- ``folds/r{r}_f{k}.json``: one finished outer fold (selection, test metrics,
  predictions, settings fingerprint); a rerun skips folds that have one;
- ``models/r{r}_f{k}.pt``: ``{model, in_dim, n_outputs, hparams, state_dict, feature_scaler}``
  (``feature_scaler``: ``{mean, scale}`` of the refit's training tiles when
  ``standardize=true``, else None; :func:`wsi_mil.reports.tile_scores.load_fold_model` applies it);
- ``predictions.csv``: slide_id, patient_id, repeat, outer_fold, target (or
  time, event), score (binary probability / survival risk, higher = shorter
  survival) or score_0..score_{K-1} (multiclass probabilities; logits under
  ``protocol=reference``, whose AUC is computed on logits);
- ``folds.csv``: repeat, outer_fold, metrics, lr, weight_decay, epochs, other
  selected hparams, inner_score, n_train, n_test (+ train_risk_median);
- ``summary.json``: task, encoder, model, metric, mean, sd (ddof=1), std_ref
  (ddof=0), ci95_low/high (patient bootstrap, ``ci_method``), n_folds,
  features_dir, cohort, survival_metrics (survival runs), ...

A survival fold json may hold ``train_scores``: the refit's risks on
``plan.repeats[r][k].train``, in that order (for the Brier score's baseline hazard).

Everything is written atomically.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from loguru import logger

from wsi_mil.cv import statistics, survival
from wsi_mil.data.cohort import Cohort
from wsi_mil.data.folds import FoldPlan
from wsi_mil.evaluation import metrics
from wsi_mil.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from wsi_mil.version import __version__

if TYPE_CHECKING:
    from wsi_mil.cv.run_state import CVRun
    from wsi_mil.cv.settings import CVSettings
    from wsi_mil.training.fit import Targets


@dataclass
class CVResult:
    folds: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict
    run_dir: Path


def fold_path(run_dir: Path, r: int, k: int) -> Path:
    return Path(run_dir) / "folds" / f"r{r}_f{k}.json"


def read_fold(run_dir: Path, r: int, k: int) -> dict | None:
    path = fold_path(run_dir, r, k)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _fold_metrics(targets: Targets, idx: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    out = {targets.metric_name: targets.score(idx, scores)}
    if targets.task == "classification":
        y = targets.y[idx]
        pred = (scores >= 0.5).astype(int) if scores.ndim == 1 else scores.argmax(1)
        out["accuracy"] = metrics.accuracy(y, pred)
        out["balanced_accuracy"] = metrics.balanced_accuracy(y, pred)
    return out


def inner_path(run_dir: Path, r: int, k: int) -> Path:
    return Path(run_dir) / "inner" / f"r{r}_f{k}.json"


def write_inner(run_dir: Path, r: int, k: int, curves: np.ndarray, fingerprint: dict) -> None:
    """Checkpoint the inner curves ``(2, G, J, E)`` (metric, loss) of outer fold (r, k)."""
    def listed(a: np.ndarray) -> list:
        return [[[None if np.isnan(v) else float(v) for v in c] for c in gj] for gj in a]

    write_json_atomic(inner_path(run_dir, r, k), {
        "curves": listed(curves[0]), "loss_curves": listed(curves[1]), "settings": fingerprint,
    })


def read_inner(run_dir: Path, r: int, k: int, fingerprint: dict) -> np.ndarray | None:
    """The checkpointed inner curves ``(2, G, J, E)`` of (r, k), or None if absent, unreadable or made
    with other settings."""
    path = inner_path(run_dir, r, k)
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if d.get("settings") != fingerprint or "loss_curves" not in d:
        return None
    return np.stack([np.array(d["curves"], dtype=float), np.array(d["loss_curves"], dtype=float)])


def write_fold(run: CVRun, r: int, k: int, sel: dict, out: dict) -> None:
    """Write finished outer fold (r, k): its json (row, predictions, settings) and its model."""
    run_dir, cohort, plan, targets = run.run_dir, run.cohort, run.plan, run.targets
    fingerprint, save_model, in_dim = run.fingerprint, run.settings.save_models, run.store.dim
    fold = plan.repeats[r][k]
    params = sel["params"]
    test, scores = fold.test, out["test_scores"]
    row: dict[str, Any] = {"repeat": r, "outer_fold": k, **_fold_metrics(targets, test, scores),
                           "lr": params.lr, "weight_decay": params.weight_decay, "epochs": params.epochs}
    for name, value in sel["point"].items():
        if name not in ("lr", "weight_decay"):
            row[name] = value
    row.update(inner_score=sel["inner_score"], n_train=int(len(fold.train)), n_test=int(len(test)))
    if targets.task == "survival":
        row["train_risk_median"] = float(np.median(out["train_scores"]))
    table = cohort.table.iloc[test]
    preds = pd.DataFrame({"slide_id": table.slide_id.to_numpy(), "patient_id": table.patient_id.to_numpy(),
                          "repeat": r, "outer_fold": k})
    if targets.task == "survival":
        preds["time"], preds["event"] = targets.time[test], targets.event[test]
    else:
        preds["target"] = targets.y[test]
    if scores.ndim == 1:
        preds["score"] = scores
    else:
        for c in range(scores.shape[1]):
            preds[f"score_{c}"] = scores[:, c]
    if save_model:
        with atomic_path(Path(run_dir) / "models" / f"r{r}_f{k}.pt") as tmp:
            torch.save({"model": params.model, "in_dim": in_dim, "n_outputs": targets.n_outputs,
                        "hparams": dict(params.hparams), "state_dict": out["state_dict"],
                        "feature_scaler": None if out.get("scaler") is None else out["scaler"].state(),
                        "wsi_mil_version": __version__}, tmp)
    record = {
        "row": row, "hparams": dict(params.hparams), "inner_curves": sel["inner_curves"],
        "inner_loss_curves": sel.get("inner_loss_curves"),
        "seconds": round(float(out["seconds"]), 3),
        "predictions": preds.to_dict(orient="list"), "settings": fingerprint,
    }
    if targets.task == "survival":  # the refit's training risks (Breslow baseline for the Brier score)
        record["train_scores"] = [float(v) for v in out["train_scores"]]
    write_json_atomic(fold_path(run_dir, r, k), record)


def _mode(values: list) -> Any:
    return Counter(json.dumps(v, default=str) for v in values).most_common(1)[0][0]


def aggregate(run_dir: Path, cohort: Cohort, plan: FoldPlan, settings: CVSettings, metric: str,
              seconds: float) -> CVResult:
    """Gather ``folds/*.json`` into predictions.csv, folds.csv and summary.json.

    The 95% interval is the patient-level bootstrap of :mod:`wsi_mil.cv.statistics`
    (``ci_method``); ``sd`` is over fold values with ddof=1, ``std_ref`` with ddof=0
    (the reference paper's std). Survival runs add Uno's C, time-dependent AUCs and
    the integrated Brier score per fold (:mod:`wsi_mil.cv.survival`); the Brier score
    needs the refit's training risks (``train_scores`` in the fold json), else NaN.
    """
    run_dir = Path(run_dir)
    rows, preds, train_scores = [], [], {}
    for r, folds in enumerate(plan.repeats):
        for k in range(len(folds)):
            d = read_fold(run_dir, r, k)
            if d is None:
                continue
            rows.append(d["row"])
            preds.append(pd.DataFrame(d["predictions"]))
            train_scores[(r, k)] = d.get("train_scores")
    folds_df = pd.DataFrame(rows)
    pred_df = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    survival_summary = None
    if cohort.task == "survival" and len(pred_df):
        folds_df, survival_summary = _survival_columns(folds_df, pred_df, cohort, plan, train_scores)
    with atomic_path(run_dir / "folds.csv") as tmp:
        folds_df.to_csv(tmp, index=False)
    with atomic_path(run_dir / "predictions.csv") as tmp:
        pred_df.to_csv(tmp, index=False)
    values = folds_df[metric].to_numpy(dtype=float) if len(folds_df) else np.array([])
    repeats = folds_df["repeat"].to_numpy() if len(folds_df) else np.array([])
    mean, sd, low, high = metrics.repeated_cv_ci(values, repeats)
    ci_method = "t_over_repeat_means"
    if len(pred_df) and metric in statistics.METRIC_RANGES:
        interval = statistics.patient_bootstrap_ci(pred_df, metric, seed=settings.seed)
        low, high, ci_method = interval.low, interval.high, interval.method
    n_total = sum(len(f) for f in plan.repeats)
    if np.sum(~np.isnan(values)) < n_total:
        logger.warning("{} of {} outer folds have no {} (undefined on their test slides or not "
                       "run): mean and CI use the others", n_total - int(np.sum(~np.isnan(values))),
                       n_total, metric)
    hp_cols = [c for c in folds_df.columns if c in ("lr", "weight_decay", "epochs")
               or c in settings.grid]
    selected = {c: {"mode": json.loads(_mode(folds_df[c].tolist())), "values": folds_df[c].tolist()}
                for c in hp_cols}
    other = {m: metrics.mean_ci(folds_df[m].to_numpy(dtype=float))[:2]
             for m in ("accuracy", "balanced_accuracy") if m in folds_df}
    summary = {
        "task": cohort.task, "cohort": cohort.name, "encoder": settings.encoder, "model": settings.model,
        "mode": settings.mode, "metric": metric, "mean": mean, "sd": sd, "std_ref": metrics.std_ref(values),
        "ci95_low": low, "ci95_high": high, "ci_method": ci_method,
        "n_folds": int(np.sum(~np.isnan(values))), "n_folds_total": sum(len(f) for f in plan.repeats),
        "n_outer": plan.n_outer, "n_inner": plan.n_inner, "n_repeats": plan.n_repeats,
        "n_tiles": settings.n_tiles, "epochs_max": settings.epochs, "hparams": settings.hparams,
        "grid": settings.grid, "selected": selected,
        "other_metrics": {m: {"mean": v[0], "sd": v[1]} for m, v in other.items()},
        "classes": [str(c) for c in cohort.classes], "n_slides": len(cohort),
        "n_patients": int(cohort.table.patient_id.nunique()),
        "features_dir": settings.features_dir, "cohort_path": settings.cohort_path,
        "seed": settings.seed, "seconds": round(seconds, 2), "wsi_mil_version": __version__,
        "batch_size": settings.batch_size, "tile_sampling": settings.tile_sampling,
        "feature_dtype": settings.feature_dtype, "standardize": settings.standardize,
        "precision": settings.precision,
        "protocol": settings.protocol, "engine": settings.engine,
        "auc_classes": settings.auc_classes, "multiclass_scores": settings.multiclass_scores,
    }
    if survival_summary is not None:
        summary["survival_metrics"] = survival_summary
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    return CVResult(folds_df, pred_df, summary, run_dir)


def _survival_columns(folds_df: pd.DataFrame, pred_df: pd.DataFrame, cohort: Cohort, plan: FoldPlan,
                      train_scores: dict) -> tuple[pd.DataFrame, dict]:
    """folds_df + uno_c, td_auc_q*, ibs columns, and their summary (mean, sd, std_ref, times)."""
    h = survival.SurvivalHorizons.from_cohort(cohort.time, cohort.event)
    parts = {(r, k): (cohort.time[f.train], cohort.event[f.train], train_scores.get((r, k)))
             for r, folds in enumerate(plan.repeats) for k, f in enumerate(folds)}
    if any(v is None for v in train_scores.values()):
        logger.info("fold json without train_scores: integrated Brier score not computed (NaN)")
    extra = survival.survival_fold_table(pred_df, parts, h)
    folds_df = folds_df.drop(columns=[c for c in h.column_names() if c in folds_df])
    folds_df = folds_df.merge(extra, on=["repeat", "outer_fold"], how="left")
    out: dict[str, Any] = {"horizons": list(h.horizons), "tau": h.tau,
                           "brier_grid": [h.brier_grid[0], h.brier_grid[-1], len(h.brier_grid)]}
    for name in h.column_names():
        v = folds_df[name].to_numpy(dtype=float)
        out[name] = {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                     "sd": metrics.mean_ci(v)[1], "std_ref": metrics.std_ref(v),
                     "n_folds": int(np.isfinite(v).sum())}
    return folds_df, out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
