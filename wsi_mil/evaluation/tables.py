"""Write result DataFrames as CSV + markdown (atomically), and summarise over seeds.

No ``tabulate`` dependency: the markdown writer is a few lines here.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_mil.io.atomic import atomic_path, write_text_atomic


def _cell(value: object, floatfmt: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else format(float(value), floatfmt)
    return str(value).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub markdown table of ``df`` (index dropped), floats formatted with ``floatfmt``."""
    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, path_stem: str | Path, floatfmt: str = ".4f") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md``; return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path = stem.with_name(stem.name + ".csv")
    md_path = stem.with_name(stem.name + ".md")
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(md_path, to_markdown(df, floatfmt))
    return csv_path, md_path


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
