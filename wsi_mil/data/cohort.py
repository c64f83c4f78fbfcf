"""Cohort tables: one row per slide, validated before any training starts.

CSV columns: ``slide_id, patient_id`` and either ``label`` (classification;
strings or ints) or ``time, event`` (survival); optional ``center_id`` and
``cohort``. Labels are encoded as indices into the sorted list of classes,
which is recorded in :attr:`Cohort.classes` (and in every run's summary).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_mil.errors import CohortError, ConfigError, MissingFeaturesError, TargetError

TASKS = ("classification", "survival")
#: A numeric label column with more distinct values than this (or fractional values) looks
#: continuous: it needs ``allow_many_classes=True`` to be a classification target.
MAX_NUMERIC_CLASSES = 10


def _rows(df: pd.DataFrame, mask: np.ndarray | pd.Series, cols: list[str], limit: int = 10) -> str:
    """Offending rows as text (CSV line numbers: header = line 1)."""
    bad = df.loc[np.asarray(mask), cols]
    lines = [f"  line {i + 2}: " + ", ".join(f"{c}={r[c]!r}" for c in cols) for i, r in bad.head(limit).iterrows()]
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    return "\n".join(lines) + more


@dataclass
class Cohort:
    """A validated cohort. ``table`` has one row per slide, index 0..n-1.

    Columns: slide_id, patient_id, center_id (optional), and ``y`` (int class
    index) for classification or ``time`` (float), ``event`` (int 0/1) for survival.
    """

    table: pd.DataFrame
    task: str
    classes: list = field(default_factory=list)
    name: str = "cohort"
    source: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r}; choose one of {TASKS}")

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        extra = f", classes={self.classes}" if self.task == "classification" else (
            f", events={int(self.event.sum())}"
        )
        return (
            f"Cohort(name={self.name!r}, task={self.task!r}, slides={len(self)}, "
            f"patients={self.table.patient_id.nunique()}{extra})"
        )

    @property
    def slide_ids(self) -> list[str]:
        return self.table.slide_id.tolist()

    @property
    def patient_ids(self) -> np.ndarray:
        return self.table.patient_id.to_numpy()

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_outputs(self) -> int:
        """Model outputs: 1 logit (binary), K logits (multiclass) or 1 risk (survival)."""
        if self.task == "survival" or self.n_classes == 2:
            return 1
        return self.n_classes

    @property
    def y(self) -> np.ndarray:
        return self.table["y"].to_numpy(dtype=np.int64)

    @property
    def time(self) -> np.ndarray:
        return self.table["time"].to_numpy(dtype=np.float64)

    @property
    def event(self) -> np.ndarray:
        return self.table["event"].to_numpy(dtype=np.int64)

    @property
    def centers(self) -> np.ndarray | None:
        return self.table.center_id.to_numpy() if "center_id" in self.table else None

    def strata(self) -> np.ndarray:
        """Stratification variable of the splits: label (classification) or event (survival)."""
        return self.y if self.task == "classification" else self.event

    def check_features(self, available: Iterable[str]) -> None:
        """Raise :class:`MissingFeaturesError` listing the slides absent from ``available``."""
        available = set(available)
        missing = ~self.table.slide_id.isin(available)
        if missing.any():
            raise MissingFeaturesError(
                f"{int(missing.sum())} of {len(self)} slides of {self.name!r} have no feature file:\n"
                + _rows(self.table, missing, ["slide_id", "patient_id"])
            )


def looks_continuous(raw: pd.Series) -> str:
    """Why a label column looks like a continuous variable ('' if it looks like classes)."""
    numeric = pd.to_numeric(raw, errors="coerce")
    if len(raw) == 0 or not numeric.notna().all():
        return ""
    values = np.sort(numeric.unique())
    fractional = bool((values != np.round(values)).any())
    if len(values) > MAX_NUMERIC_CLASSES or (fractional and len(values) > 2):
        shown = ", ".join(f"{v:g}" for v in values[:5])
        return (f"{len(values)} distinct numeric values ({shown}, ...)"
                + (", not all integers" if fractional else ""))
    return ""


def _encode_labels(raw: pd.Series) -> tuple[np.ndarray, list]:
    values = raw.tolist()
    if all(isinstance(v, (int, np.integer)) for v in values):
        classes = sorted({int(v) for v in values})
    else:
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().all() and (numeric == numeric.round()).all():
            classes = sorted({int(v) for v in numeric})
            values = [int(v) for v in numeric]
        else:
            values = [str(v) for v in values]
            classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def make_cohort(
    df: pd.DataFrame,
    task: str,
    label_column: str = "label",
    name: str | None = None,
    source: str = "",
    allow_many_classes: bool = False,
) -> Cohort:
    """Validate a slide table and encode its target. Raises :class:`CohortError`.

    A classification label that looks continuous (:func:`looks_continuous`) is a
    :class:`TargetError` unless ``allow_many_classes``; a survival cohort without any
    event is one too.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r}; choose one of {TASKS}")
    df = df.reset_index(drop=True).copy()
    where = f" in {source}" if source else ""
    target_cols = [label_column] if task == "classification" else ["time", "event"]
    required = ["slide_id", "patient_id", *target_cols]
    missing_cols = [c for c in required if c not in df.columns]
    if missing_cols:
        raise CohortError(
            f"cohort{where} lacks column(s) {missing_cols} for task {task!r}; "
            f"required: {required}; found: {list(df.columns)}"
        )
    if len(df) == 0:
        raise CohortError(f"cohort{where} has no rows")
    for col in ("slide_id", "patient_id", "center_id"):
        if col in df:
            empty = df[col].isna()
            if empty.any():
                raise CohortError(f"empty {col}{where}:\n" + _rows(df, empty, required))
            df[col] = df[col].astype(str)
    dup = df.slide_id.duplicated(keep=False)
    if dup.any():
        raise CohortError(f"duplicate slide ids{where}:\n" + _rows(df, dup, ["slide_id", "patient_id"]))
    out = df[["slide_id", "patient_id"] + (["center_id"] if "center_id" in df else [])].copy()
    classes: list = []
    if task == "classification":
        nan = df[label_column].isna()
        if nan.any():
            raise CohortError(f"missing {label_column!r}{where}:\n" + _rows(df, nan, required))
        if not allow_many_classes and (why := looks_continuous(df[label_column])):
            raise TargetError(
                f"column {label_column!r}{where} looks continuous, not like class labels: {why}; "
                "for a time-to-event target use task=survival (time, event columns), to train a "
                "classifier with one class per value anyway pass allow_many_classes=true")
        out["y"], classes = _encode_labels(df[label_column])
        if len(classes) < 2:
            raise CohortError(f"column {label_column!r}{where} has a single class {classes}; need >= 2")
        check = ["y"]
    else:
        time = pd.to_numeric(df["time"], errors="coerce")
        bad = time.isna() | (time < 0)
        if bad.any():
            raise CohortError(f"NaN, non-numeric or negative survival times{where}:\n" + _rows(df, bad, required))
        event = pd.to_numeric(df["event"], errors="coerce")
        bad = ~event.isin([0, 1])
        if bad.any():
            raise CohortError(f"event must be 0 or 1{where}:\n" + _rows(df, bad, required))
        out["time"], out["event"] = time.astype(float), event.astype(int)
        if not out["event"].any():
            raise TargetError(f"survival cohort{where} has no event (every event is 0): no model "
                              "can be trained or evaluated; check the event column (1 = event)")
        check = ["time", "event"]
    if "center_id" in out:
        check = [*check, "center_id"]
    conflicting = out.groupby("patient_id")[check].transform("nunique").gt(1).any(axis=1)
    if conflicting.any():
        what = "labels" if task == "classification" else "survival data"
        raise CohortError(
            f"patients with conflicting {what} (or centers) across their slides{where}:\n"
            + _rows(df, conflicting, [c for c in required + ["center_id"] if c in df])
        )
    if "cohort" in df and name is None:
        name = str(df["cohort"].iloc[0])
    return Cohort(table=out, task=task, classes=classes, name=name or "cohort", source=source)


def read_cohort(
    path: str | Path, task: str, label_column: str = "label", name: str | None = None,
    allow_many_classes: bool = False,
) -> Cohort:
    """Read and validate a cohort CSV (see module docstring and :func:`make_cohort`)."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"cohort file {str(path)!r} not found")
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "center_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise CohortError(f"cannot read cohort CSV {str(path)!r}: {err}") from err
    return make_cohort(df, task, label_column, name=name or (None if "cohort" in df else path.stem),
                       source=str(path), allow_many_classes=allow_many_classes)
