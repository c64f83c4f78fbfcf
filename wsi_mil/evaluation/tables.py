"""Tile-level result tables: written by the slide-level results machinery, summarised over seeds.

:func:`write_table` is :func:`wsi_mil.cv.results.write_results`
(``<stem>.csv`` + ``<stem>.md``, atomic), so tile-level and slide-level tables
look the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def write_table(df: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (folders created); return both paths."""
    from wsi_mil.cv.results import write_results

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return write_results(df, stem)


def summarise_over_seeds(
    df: pd.DataFrame, group_cols: Sequence[str], value_col: str = "value"
) -> pd.DataFrame:
    """Mean, sd (ddof=1; 0 for one seed) and count of ``value_col`` per group."""
    grouped = df.groupby(list(group_cols), sort=False, dropna=False)[value_col]
    out = grouped.agg(mean="mean", sd=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                      n_seeds="count")
    return out.reset_index()


def wide_macro_table(df: pd.DataFrame, index_cols: Sequence[str], value_col: str = "value") -> pd.DataFrame:
    """Pivot the ``class == "macro"`` rows of a long metric table to one column per metric."""
    macro = df[df["class"] == "macro"]
    wide = macro.pivot_table(index=list(index_cols), columns="metric", values=value_col, sort=False)
    wide.columns.name = None
    return wide.reset_index()


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Per-item outputs (per-tile scores, supports, per-query ranks): one CSV, atomically."""
    from wsi_mil.io.atomic import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, df.to_csv(index=False))
    return path
