"""Aggregate CV run directories into one results table (CSV + markdown).

A run directory is any folder holding a ``summary.json`` written by
:func:`wsi_mil.cv.engine.run_cv` (and its ``folds.csv``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_mil.errors import FileFormatError
from wsi_mil.io.atomic import atomic_path, write_text_atomic

COLUMNS = ["task", "cohort", "encoder", "head", "n_tiles", "metric", "mean", "sd", "ci95_low",
           "ci95_high", "n_folds", "n_folds_total", "lr", "weight_decay", "epochs", "other_hparams", "run_path"]


def _selected(folds: pd.DataFrame, name: str) -> str:
    """'mode [v1, v2, ...]' of a selected hyperparameter over folds."""
    if name not in folds:
        return ""
    values = folds[name].tolist()
    mode = folds[name].astype(str).mode().iloc[0]
    return f"{mode} {[v.item() if hasattr(v, 'item') else v for v in values]}"


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
        rows.append({
            "task": s.get("task"), "cohort": s.get("cohort"), "encoder": s.get("encoder"),
            "head": s.get("model"), "n_tiles": s.get("n_tiles"), "metric": s.get("metric"),
            "mean": s.get("mean"), "sd": s.get("sd"), "ci95_low": s.get("ci95_low"),
            "ci95_high": s.get("ci95_high"), "n_folds": s.get("n_folds"),
            "n_folds_total": s.get("n_folds_total", s.get("n_folds")),
            "lr": _selected(folds, "lr"), "weight_decay": _selected(folds, "weight_decay"),
            "epochs": _selected(folds, "epochs"),
            "other_hparams": "; ".join(f"{n}={_selected(folds, n)}" for n in grid_names),
            "run_path": str(run),
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["task", "cohort", "encoder", "head"], kind="stable").reset_index(drop=True)


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
