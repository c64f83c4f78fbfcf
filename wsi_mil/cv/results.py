"""Aggregate CV run directories into one results table (CSV + markdown).

A run directory is any folder holding a ``summary.json`` written by
:func:`wsi_mil.cv.engine.run_cv` (and its ``folds.csv``).

Run settings that change results (batch size, tile sampling, feature dtype,
standardisation, protocol) come from ``summary.json``; for runs written before
it recorded them, from the settings fingerprint of a fold file, else the
defaults of that time (:data:`SETTING_DEFAULTS`).

:func:`compare_results` groups the runs that differ only in one column (e.g.
``head`` or ``encoder``) and compares each group pairwise (:mod:`wsi_mil.cv.compare`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_mil.cv import compare
from wsi_mil.errors import ConfigError, FileFormatError
from wsi_mil.evaluation import metrics
from wsi_mil.io.atomic import atomic_path, write_text_atomic

COLUMNS = ["task", "cohort", "encoder", "head", "n_tiles", "metric", "mean", "sd", "std_ref", "ci95_low",
           "ci95_high", "n_folds", "n_folds_total", "lr", "weight_decay", "epochs", "other_hparams",
           "batch_size", "tile_sampling", "feature_dtype", "standardize", "precision", "protocol", "run_path"]
#: values of runs whose summary.json (and fold files) do not record a setting: the
#: defaults before they were recorded (features were held in float16 then)
SETTING_DEFAULTS = {"batch_size": 16, "tile_sampling": "random", "feature_dtype": "float16",
                    "standardize": False, "precision": "fp32", "protocol": "default"}
#: columns that identify what a run measured; runs compared with compare=<column>
#: agree on all of them but <column>
IDENTITY = ["task", "cohort", "encoder", "head", "n_tiles", "metric", "batch_size", "tile_sampling",
            "feature_dtype", "standardize", "precision", "protocol"]


def _selected(folds: pd.DataFrame, name: str) -> str:
    """'mode [v1, v2, ...]' of a selected hyperparameter over folds; ties go to the
    smallest value, compared as numbers when the values are numbers."""
    if name not in folds:
        return ""
    values = folds[name].tolist()
    column = folds[name]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        counts = column.value_counts(dropna=True)
        best = counts[counts == counts.max()].index
        mode = min(best)
        mode = mode.item() if hasattr(mode, "item") else mode
    else:
        mode = column.astype(str).mode().iloc[0]
    return f"{mode} {[v.item() if hasattr(v, 'item') else v for v in values]}"


def _setting(summary: dict, fold_settings: dict, name: str) -> object:
    if name in summary:
        return summary[name]
    return fold_settings.get(name, SETTING_DEFAULTS[name])


def _fold_settings(run: Path) -> dict:
    """The settings fingerprint stored in the first fold file of a run ({} if none)."""
    for path in sorted((run / "folds").glob("r*_f*.json")):
        try:
            return json.loads(path.read_text()).get("settings") or {}
        except json.JSONDecodeError:
            continue
    return {}


def collect_results(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run found under ``runs_dir`` (sorted by task, cohort, encoder, head)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileFormatError(f"runs_dir {str(runs_dir)!r} is not a folder")
    rows = []
    for summary_path in sorted(runs_dir.rglob("summary.json")):
        run = summary_path.parent
        try:
            s = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise FileFormatError(f"unreadable {summary_path}: {err}") from err
        folds = pd.read_csv(run / "folds.csv") if (run / "folds.csv").exists() else pd.DataFrame()
        grid_names = [n for n in (s.get("grid") or {}) if n not in ("lr", "learning_rate", "weight_decay")]
        fold_settings = _fold_settings(run) if any(n not in s for n in SETTING_DEFAULTS) else {}
        rows.append({
            "task": s.get("task"), "cohort": s.get("cohort"), "encoder": s.get("encoder"),
            "head": s.get("model"), "n_tiles": s.get("n_tiles"), "metric": s.get("metric"),
            "mean": s.get("mean"), "sd": s.get("sd"), "std_ref": s.get("std_ref", _std_ref(folds, s)),
            "ci95_low": s.get("ci95_low"),
            "ci95_high": s.get("ci95_high"), "n_folds": s.get("n_folds"),
            "n_folds_total": s.get("n_folds_total", s.get("n_folds")),
            "lr": _selected(folds, "lr"), "weight_decay": _selected(folds, "weight_decay"),
            "epochs": _selected(folds, "epochs"),
            "other_hparams": "; ".join(f"{n}={_selected(folds, n)}" for n in grid_names),
            **{n: _setting(s, fold_settings, n) for n in SETTING_DEFAULTS},
            "run_path": str(run),
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["task", "cohort", "encoder", "head"], kind="stable").reset_index(drop=True)


def _std_ref(folds: pd.DataFrame, summary: dict) -> float:
    """ddof=0 sd of the fold metric, for runs whose summary predates ``std_ref``."""
    metric = summary.get("metric")
    if metric not in folds:
        return float("nan")
    return metrics.std_ref(folds[metric].to_numpy(dtype=float))


def compare_results(df: pd.DataFrame, column: str, *, n_boot: int = 2000, seed: int = 0
                    ) -> list[tuple[dict, compare.Comparison]]:
    """Pairwise comparisons of the runs of ``df`` (a :func:`collect_results` table) that
    agree on every identity column but ``column``; groups of one run are skipped.

    Returns ``[(group, comparison)]``, ``group`` = the shared identity values.
    Raises :class:`~wsi_mil.errors.FoldPlanMismatchError` for a group whose runs were
    made on different fold plans.
    """
    if column not in IDENTITY:
        raise ConfigError(f"compare={column!r}; choose one of {IDENTITY}")
    keys = [c for c in IDENTITY if c != column]
    out = []
    table = df.assign(**{k: df[k].astype(str) for k in keys})
    for values, group in table.groupby(keys, sort=True, dropna=False):
        if len(group) < 2:
            continue
        labels = group[column].astype(str)
        if labels.duplicated().any():  # same value of `column` in two run folders
            labels = labels + " (" + group.run_path.map(lambda p: Path(p).name) + ")"
        runs = [compare.read_run(path, label) for path, label in zip(group.run_path, labels, strict=True)]
        out.append((dict(zip(keys, values, strict=True)), compare.compare_runs(runs, n_boot=n_boot, seed=seed)))
    return out


def comparison_tables(results: list[tuple[dict, compare.Comparison]], column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, pairs) of every group in two long tables, the group keys first."""
    shown = ["task", "cohort", "encoder", "head", "n_tiles", "protocol"]
    runs, pairs = [], []
    for group, comp in results:
        key = {k: v for k, v in group.items() if k in shown and k != column}
        runs.append(comp.runs.assign(**key)[[*key, *comp.runs.columns]])
        pairs.append(comp.pairs.assign(**key)[[*key, *comp.pairs.columns]])
    if not runs:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(runs, ignore_index=True), pd.concat(pairs, ignore_index=True)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (no optional dependency)."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_results(df: pd.DataFrame, output: str | Path) -> tuple[Path, Path]:
    """Write ``<output>.csv`` and ``<output>.md`` (``output`` without suffix)."""
    output = Path(output)
    csv, md = output.with_suffix(".csv"), output.with_suffix(".md")
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(md, to_markdown(df))
    return csv, md
