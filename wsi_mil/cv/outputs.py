"""Files of a CV run directory (the contract read by reports and results).

- ``folds/r{r}_f{k}.json``: one finished outer fold (selection, test metrics,
  predictions, settings fingerprint); a rerun skips folds that have one;
- ``models/r{r}_f{k}.pt``: ``{model, in_dim, n_outputs, hparams, state_dict}``;
- ``predictions.csv``: slide_id, patient_id, repeat, outer_fold, target (or
  time, event), score (binary probability / survival risk, higher = shorter
  survival) or score_0..score_{K-1} (multiclass probabilities);
- ``folds.csv``: repeat, outer_fold, metrics, lr, weight_decay, epochs, other
  selected hparams, inner_score, n_train, n_test (+ train_risk_median);
- ``summary.json``: task, encoder, model, metric, mean, sd, ci95_low/high,
  n_folds, features_dir, cohort, ...

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

from wsi_mil.data.cohort import Cohort
from wsi_mil.data.folds import FoldPlan
from wsi_mil.evaluation import metrics
from wsi_mil.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from wsi_mil.version import __version__

if TYPE_CHECKING:
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


def write_fold(run_dir: Path, cohort: Cohort, plan: FoldPlan, targets: Targets, r: int, k: int,
               sel: dict, out: dict, fingerprint: dict, save_model: bool, in_dim: int) -> None:
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
                        "wsi_mil_version": __version__}, tmp)
    write_json_atomic(fold_path(run_dir, r, k), {
        "row": row, "hparams": dict(params.hparams), "inner_curves": sel["inner_curves"],
        "seconds": round(float(out["seconds"]), 3),
        "predictions": preds.to_dict(orient="list"), "settings": fingerprint,
    })


def _mode(values: list) -> Any:
    return Counter(json.dumps(v, default=str) for v in values).most_common(1)[0][0]


def aggregate(run_dir: Path, cohort: Cohort, plan: FoldPlan, settings: CVSettings, metric: str,
              seconds: float) -> CVResult:
    """Gather ``folds/*.json`` into predictions.csv, folds.csv and summary.json."""
    run_dir = Path(run_dir)
    rows, preds = [], []
    for r, folds in enumerate(plan.repeats):
        for k in range(len(folds)):
            d = read_fold(run_dir, r, k)
            if d is None:
                continue
            rows.append(d["row"])
            preds.append(pd.DataFrame(d["predictions"]))
    folds_df = pd.DataFrame(rows)
    pred_df = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    with atomic_path(run_dir / "folds.csv") as tmp:
        folds_df.to_csv(tmp, index=False)
    with atomic_path(run_dir / "predictions.csv") as tmp:
        pred_df.to_csv(tmp, index=False)
    values = folds_df[metric].to_numpy(dtype=float) if len(folds_df) else np.array([])
    repeats = folds_df["repeat"].to_numpy() if len(folds_df) else np.array([])
    mean, sd, low, high = metrics.repeated_cv_ci(values, repeats)
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
        "mode": settings.mode, "metric": metric, "mean": mean, "sd": sd, "ci95_low": low, "ci95_high": high,
        "n_folds": int(np.sum(~np.isnan(values))), "n_folds_total": sum(len(f) for f in plan.repeats),
        "n_outer": plan.n_outer, "n_inner": plan.n_inner, "n_repeats": plan.n_repeats,
        "n_tiles": settings.n_tiles, "epochs_max": settings.epochs, "hparams": settings.hparams,
        "grid": settings.grid, "selected": selected,
        "other_metrics": {m: {"mean": v[0], "sd": v[1]} for m, v in other.items()},
        "classes": [str(c) for c in cohort.classes], "n_slides": len(cohort),
        "n_patients": int(cohort.table.patient_id.nunique()),
        "features_dir": settings.features_dir, "cohort_path": settings.cohort_path,
        "seed": settings.seed, "seconds": round(seconds, 2), "wsi_mil_version": __version__,
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    return CVResult(folds_df, pred_df, summary, run_dir)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
