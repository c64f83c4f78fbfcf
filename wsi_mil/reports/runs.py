"""Read a CV run directory (the contract's "CV run directory") for the reports.

A run dir holds ``predictions.csv``, ``folds.csv``, ``summary.json``,
``config.yaml`` and ``models/r{repeat}_f{outer_fold}.pt``. Only the files a
figure needs are required; what is missing is left as ``None``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from loguru import logger

from wsi_mil.errors import FileFormatError
from wsi_mil.io.paths import safe_name

PREDICTIONS = "predictions.csv"
FOLDS = "folds.csv"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
_SCORE_K = re.compile(r"^score_(\d+)$")

TASK_BINARY = "binary"
TASK_MULTICLASS = "multiclass"
TASK_SURVIVAL = "survival"


@dataclass
class RunData:
    """What the reports need from one CV run directory."""

    run_dir: Path
    predictions: pd.DataFrame | None
    folds: pd.DataFrame | None
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> str:
        """The MIL head's name (``summary.json`` ``model``, else the folder name)."""
        return str(self.summary.get("model") or self.run_dir.name)

    @property
    def label(self) -> str:
        """A short display name: ``head`` (+ encoder when known)."""
        encoder = self.summary.get("encoder")
        return f"{self.head} ({encoder})" if encoder else self.head

    @property
    def task_name(self) -> str | None:
        """The run's task name (``config.yaml`` ``task_name``, else the summary's cohort / task)."""
        name = (self.config.get("task_name") or self.summary.get("task_name")
                or self.summary.get("cohort") or self.summary.get("task"))
        return None if name is None else str(name)

    @property
    def key(self) -> str:
        """File-name key ``<task_name>_<encoder>_<head>`` (parts that are known)."""
        parts = [self.task_name, self.summary.get("encoder"), self.head]
        return safe_name("_".join(str(p) for p in parts if p))

    @property
    def task_kind(self) -> str | None:
        """``binary`` | ``multiclass`` | ``survival`` from the prediction columns."""
        if self.predictions is None:
            return None
        return prediction_kind(self.predictions)

    def model_path(self, repeat: int, outer_fold: int) -> Path:
        return self.run_dir / "models" / f"r{int(repeat)}_f{int(outer_fold)}.pt"


def prediction_kind(predictions: pd.DataFrame) -> str:
    """The task of a ``predictions.csv`` table, from its columns."""
    cols = set(predictions.columns)
    if {"time", "event"} <= cols and "score" in cols:
        return TASK_SURVIVAL
    if "score" in cols and "target" in cols:
        return TASK_BINARY
    if class_score_columns(predictions) and "target" in cols:
        return TASK_MULTICLASS
    raise FileFormatError(
        f"predictions table has columns {sorted(cols)}; expected slide_id, repeat, outer_fold "
        "and either target+score (binary), target+score_0..score_K-1 (multiclass) or "
        "time+event+score (survival)"
    )


def class_score_columns(predictions: pd.DataFrame) -> list[str]:
    """``score_0 .. score_{K-1}`` in class order (empty if absent)."""
    found = {int(m.group(1)): c for c in predictions.columns if (m := _SCORE_K.match(str(c)))}
    return [found[k] for k in sorted(found)]


def read_run(run_dir: str | Path) -> RunData:
    """Load the tables of one run dir; missing files become ``None`` / ``{}``."""
    run_dir = Path(run_dir)
    predictions = folds = None
    summary: dict[str, Any] = {}
    if (run_dir / PREDICTIONS).exists():
        try:
            predictions = pd.read_csv(run_dir / PREDICTIONS)
        except pd.errors.EmptyDataError as err:
            raise FileFormatError(f"{run_dir / PREDICTIONS} is empty (no finished fold?)") from err
        missing = {"slide_id", "repeat", "outer_fold"} - set(predictions.columns)
        if missing:
            raise FileFormatError(
                f"{run_dir / PREDICTIONS} lacks columns {sorted(missing)}"
            )
        predictions["slide_id"] = predictions["slide_id"].astype(str)
    if (run_dir / FOLDS).exists():
        folds = pd.read_csv(run_dir / FOLDS)
    if (run_dir / SUMMARY).exists():
        try:
            summary = json.loads((run_dir / SUMMARY).read_text())
        except json.JSONDecodeError as err:
            raise FileFormatError(f"{run_dir / SUMMARY} is not valid JSON: {err}") from err
    config: dict[str, Any] = {}
    if (run_dir / CONFIG).exists():
        try:
            loaded = yaml.safe_load((run_dir / CONFIG).read_text())
        except yaml.YAMLError as err:
            logger.warning("report: {} is not valid YAML ({}); ignored", run_dir / CONFIG, err)
            loaded = None
        config = loaded if isinstance(loaded, dict) else {}
    return RunData(run_dir=run_dir, predictions=predictions, folds=folds, summary=summary,
                   config=config)


def find_run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run dirs among ``paths``: each is a run dir or a folder searched recursively.

    A run dir is a folder holding ``predictions.csv``; ``multirun`` sweeps and
    report folders are found the same way. The result is sorted and unique.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if (path / PREDICTIONS).exists():
            found.add(path)
        elif path.is_dir():
            found.update(p.parent for p in path.rglob(PREDICTIONS))
        else:
            logger.warning("report: {} is not a folder; ignored", path)
    return sorted(found)


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[list[RunData], list[str]]:
    """The readable runs, and one reason per run dir that could not be used."""
    runs, skipped = [], []
    for run_dir in run_dirs:
        try:
            run = read_run(run_dir)
            prediction_kind(run.predictions)
        except FileFormatError as err:
            logger.warning("report: run dir {} skipped: {}", run_dir, err)
            skipped.append(f"run {run_dir}: {err}")
            continue
        runs.append(run)
    return runs, skipped


def unique_keys(runs: Sequence[RunData]) -> list[str]:
    """:attr:`RunData.key` of each run, suffixed ``_2``, ``_3``... where two runs share one."""
    seen: dict[str, int] = {}
    keys = []
    for run in runs:
        seen[run.key] = seen.get(run.key, 0) + 1
        keys.append(run.key if seen[run.key] == 1 else f"{run.key}_{seen[run.key]}")
    return keys
