"""Typed settings of a CV run and the hyperparameter grid they define.

The CLI builds :class:`CVSettings` from ``conf/cv.yaml``; library code (engine,
outputs) takes it as a plain dataclass.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wsi_mil.cv.selection import TIEBREAKS
from wsi_mil.data.cohort import Cohort
from wsi_mil.data.folds import FoldPlan
from wsi_mil.errors import ConfigError
from wsi_mil.training.fit import MULTICLASS_SCORES, check_train_precision

MODES = ("nested", "kfold")
BACKENDS = ("loky", "threading")
ENGINES = ("batched", "loop")
PROTOCOLS = ("default", "reference")
_FIXED_NAMES = {"lr", "learning_rate", "weight_decay"}


@dataclass
class CVSettings:
    """Typed settings of a CV run (the CLI builds it from ``conf/cv.yaml``).

    ``engine="batched"`` (default) trains all fits of a block of outer folds
    as one stacked model in this process, with torch using every core;
    ``engine="loop"`` trains one model at a time (the trusted reference path,
    and the fallback for heads that cannot be stacked). ``n_jobs`` matters
    for the loop only: that many fits run in parallel worker processes
    (``backend="loky"``) or threads, each with ``cores // n_jobs`` torch threads.
    For small fits (128-d features, bags of 5-50 tiles) one single-threaded
    worker per core is the loop's fastest setting (1.2-1.7x faster than
    ``n_jobs=1`` on the README's 2 cores); at 768-d x 1,000 tiles it is not.
    """

    task: str
    model: str
    hparams: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=lambda: {"lr": [1e-3, 1e-4], "weight_decay": [0.0, 1e-4]})
    mode: str = "nested"
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 16
    n_tiles: int | None = 1000
    tile_sampling: str = "random"
    seed: int = 0
    engine: str = "batched"
    n_jobs: int = 1
    backend: str = "loky"
    device: str = "cpu"
    feature_dtype: str = "float32"
    standardize: bool = False  # per-fit feature standardisation (moments of each fit's training tiles)
    precision: str = "fp32"  # the heads' forward: fp32 | bf16 (autocast matmuls; run_cv falls back to fp32
    # where the device has no native bf16 and records what ran)
    protocol: str = "default"
    auc_classes: str = "all"  # multiclass macro AUC over "all" classes, or those "present" (the reference)
    multiclass_scores: str = "probabilities"  # multiclass scores (predictions, AUC): "probabilities" | "logits"
    selection_tiebreak: str = "loss"  # equal inner metrics: lowest inner loss ("loss") or first/fewest epochs
    encoder: str = ""
    features_dir: str = ""
    cohort_path: str = ""
    save_models: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r}; choose one of {MODES}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine {self.engine!r}; choose one of {ENGINES}")
        if self.selection_tiebreak not in TIEBREAKS:
            raise ConfigError(f"selection_tiebreak {self.selection_tiebreak!r}; choose one of {TIEBREAKS}")
        if self.multiclass_scores not in MULTICLASS_SCORES:
            raise ConfigError(f"multiclass_scores {self.multiclass_scores!r}; choose one of {MULTICLASS_SCORES}")
        check_train_precision(self.precision)
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r}; choose one of {BACKENDS}")
        for name, values in self.grid.items():
            if not isinstance(values, (list, tuple)) or len(values) == 0:
                raise ConfigError(f"grid.{name} must be a non-empty list, got {values!r}")

    def fingerprint(self) -> dict:
        """Settings that change results (not the engine, n_jobs, backend, paths: a run
        may resume with another engine, whose results agree to float rounding)."""
        d = asdict(self)
        for k in ("engine", "n_jobs", "backend", "device", "save_models", "features_dir", "cohort_path",
                  "encoder"):
            d.pop(k)
        return json.loads(json.dumps(d, default=str))


def _data_fingerprint(cohort: Cohort, plan: FoldPlan, settings: CVSettings) -> str:
    """sha1 of what a finished fold depends on besides the settings: the cohort's slides,
    patients and targets, the fold plan, the feature folder and the encoder name."""
    cols = [c for c in ("slide_id", "patient_id", "y", "time", "event") if c in cohort.table]
    payload = json.dumps({
        "cohort": cohort.table[cols].to_csv(index=False), "classes": [str(c) for c in cohort.classes],
        "plan": plan.to_dict(), "features_dir": str(settings.features_dir), "encoder": settings.encoder,
    }, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()


def grid_points(settings: CVSettings) -> list[dict[str, Any]]:
    """All grid combinations (nested mode) or the single fixed point (kfold mode)."""
    if settings.mode == "kfold" or not settings.grid:
        return [{"lr": settings.lr, "weight_decay": settings.weight_decay}]
    names = list(settings.grid)
    points = []
    for values in itertools.product(*(settings.grid[n] for n in names)):
        p = {"lr": settings.lr, "weight_decay": settings.weight_decay}
        for n, v in zip(names, values, strict=True):
            p["lr" if n == "learning_rate" else n] = v
        points.append(p)
    return points


def apply_protocol(settings: CVSettings) -> tuple[CVSettings, list[str]]:
    """``settings`` with the preset of ``settings.protocol`` applied, and what it changed.

    ``reference`` reproduces owkin's HistoSSLscaling where it is not a bug: one
    seeded random 1,000 tiles per slide for every epoch and evaluation, float32
    features (not standardised), HIPT-MIL at batch size 1, TransMIL as the reference builds it
    (``transmil_ref``), 100 epochs for ResNet50 features, multiclass one-vs-rest AUC on
    the logits over the classes present in a fold (predictions then hold logits), and
    selection ties broken by the first grid point and fewest epochs (argmax). Its intended fixes (refit for the selected number
    of epochs, masks, seeding, Cox ties, DSMIL multiclass) stay.
    """
    if settings.protocol != "reference":
        return settings, []
    changes: dict[str, Any] = {"tile_sampling": "fixed", "n_tiles": 1000, "feature_dtype": "float32",
                               "auc_classes": "present", "multiclass_scores": "logits", "standardize": False,
                               "precision": "fp32",
                               "selection_tiebreak": "first"}
    if settings.model == "hipt_mil":
        changes["batch_size"] = 1
    if settings.model == "transmil":
        changes["model"] = "transmil_ref"
        changes["hparams"] = {}  # the reference head's own defaults
    if "resnet50" in settings.encoder.lower():
        changes["epochs"] = 100
    done = [f"{k}={v!r} (was {getattr(settings, k)!r})" for k, v in changes.items() if getattr(settings, k) != v]
    return replace(settings, **changes), done
