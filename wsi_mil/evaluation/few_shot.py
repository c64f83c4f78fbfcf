"""Few-shot tile classification: k labelled tiles per class, over seeds, mean and sd.

The support set of (k, seed) is drawn from the *train* tiles only: per class,
a seeded permutation of that class's train tiles, first k kept (so for one seed
the 1-shot support is inside the 2-shot support, and so on). The test tiles are
a separate array and never reach the sampler; when tile ids are given, a train
id that is also a test id is an error.

Methods (each fitted on the support only, evaluated on every test tile):

- ``logreg``: StandardScaler + logistic regression, C by inner CV when every
  class has >= 2 shots, else C=1 (:class:`~wsi_mil.evaluation.linear_probe.LogRegCVClassifier`);
- ``random_init`` / ``text_init``: the cosine linear head of
  :mod:`wsi_mil.evaluation.text_init`, from random or class-prompt weights;
- ``zero_shot``: the text prototypes alone (no shot), reported at k = 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.linear_probe import LogRegCVClassifier
from wsi_mil.evaluation.tables import summarise_over_seeds
from wsi_mil.evaluation.text_init import LinearHeadClassifier
from wsi_mil.evaluation.tile_metrics import classification_metrics
from wsi_mil.evaluation.zero_shot import cosine_logits, softmax

FEW_SHOT_KS = (1, 2, 4, 8, 16)
METHODS = ("logreg", "random_init", "text_init", "zero_shot")
_TEXT_METHODS = ("text_init", "zero_shot")


def sample_k_shot(train_labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices into ``train_labels`` of k tiles per class (all of a class with < k)."""
    if int(k) < 1:
        raise ConfigError(f"k must be >= 1 shot per class, got {k}")
    labels = np.asarray(train_labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if idx.size < k:
            logger.warning("class {} has {} train tiles < k={}: all are used", cls, idx.size, k)
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen))


@dataclass
class FewShotResult:
    per_seed: pd.DataFrame  # method, k, seed, n_support, class, metric, value
    summary: pd.DataFrame  # method, k, class, metric, mean, sd, n_seeds
    supports: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (k, seed) -> train idx

    def table(self, metric: str = "balanced_accuracy") -> pd.DataFrame:
        """Macro ``metric`` as one row per k and ``<method>_mean`` / ``<method>_sd`` columns."""
        macro = self.summary[(self.summary["class"] == "macro") & (self.summary["metric"] == metric)]
        if macro.empty:
            raise ConfigError(f"no macro {metric!r} in the few-shot summary")
        wide = macro.pivot_table(index="k", columns="method", values=["mean", "sd"], sort=False)
        wide.columns = [f"{method}_{stat}" for stat, method in wide.columns]
        order = [f"{m}_{s}" for m in METHODS for s in ("mean", "sd") if f"{m}_{s}" in wide.columns]
        return wide[order].sort_index().reset_index()


def _make_method(
    method: str, n_classes: int, seed: int, prototypes: np.ndarray | None,
    image_projection: np.ndarray | None, head_kwargs: dict, probe_kwargs: dict,
):
    if method == "logreg":
        return LogRegCVClassifier(n_classes=n_classes, seed=seed, **probe_kwargs)
    init = "text" if method == "text_init" else "random"
    return LinearHeadClassifier(init=init, prototypes=prototypes, image_projection=image_projection,
                                n_classes=n_classes, seed=seed, **head_kwargs)


def _metrics(y: np.ndarray, scores: np.ndarray, class_names: Sequence[str] | None) -> pd.DataFrame:
    table = classification_metrics(y, scores, class_names, n_bootstrap=0)
    return table.drop(columns=["ci_low", "ci_high"])


def run_few_shot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    ks: Sequence[int] = FEW_SHOT_KS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = ("logreg",),
    class_names: Sequence[str] | None = None,
    prototypes: np.ndarray | None = None,
    image_projection: np.ndarray | None = None,
    head_kwargs: dict | None = None,
    probe_kwargs: dict | None = None,
    train_ids: np.ndarray | None = None,
    test_ids: np.ndarray | None = None,
) -> FewShotResult:
    """Every method x k x seed; see the module docstring. ``prototypes`` (C, D) for text methods."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"few-shot methods {unknown}; valid: {list(METHODS)}")
    if prototypes is None and any(m in _TEXT_METHODS for m in methods):
        raise ConfigError(f"methods {list(_TEXT_METHODS)} need class prototypes (a CLIP text side)")
    if train_ids is not None and test_ids is not None:
        leak = np.intersect1d(np.asarray(train_ids).astype(str), np.asarray(test_ids).astype(str))
        if leak.size:
            raise ConfigError(f"{leak.size} tile id(s) are both train and test, e.g. {leak[:5].tolist()}")
    train_x = np.asarray(train_x, dtype=np.float32)
    test_x = np.asarray(test_x, dtype=np.float32)
    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    n_classes = len(class_names) if class_names is not None else int(max(train_y.max(), test_y.max()) + 1)
    rows = []
    if "zero_shot" in methods:
        scores = softmax(100.0 * cosine_logits(test_x if image_projection is None
                                               else test_x @ image_projection, prototypes))
        table = _metrics(test_y, scores, class_names)
        for seed in seeds:  # seed-independent: repeated so the summary has sd 0
            rows.append(table.assign(method="zero_shot", k=0, seed=seed, n_support=0))
    supports: dict[tuple[int, int], np.ndarray] = {}
    for k in ks:
        for seed in seeds:
            idx = sample_k_shot(train_y, k, seed)
            supports[(int(k), int(seed))] = idx
            for method in methods:
                if method == "zero_shot":
                    continue
                clf = _make_method(method, n_classes, seed, prototypes, image_projection,
                                   head_kwargs or {}, probe_kwargs or {})
                clf.fit(train_x[idx], train_y[idx])
                table = _metrics(test_y, clf.predict_proba(test_x), class_names)
                rows.append(table.assign(method=method, k=int(k), seed=int(seed), n_support=idx.size))
        logger.info("few-shot k={} done ({} seeds x {} methods)", k, len(seeds), len(methods))
    per_seed = pd.concat(rows, ignore_index=True)
    per_seed = per_seed[["method", "k", "seed", "n_support", "class", "metric", "value"]]
    summary = summarise_over_seeds(per_seed, ["method", "k", "class", "metric"])
    return FewShotResult(per_seed, summary, supports)
