"""Few-shot classification: k labelled units per class, over seeds, with intervals.

Sampling (:func:`sample_k_shot`): the support set of (k, seed) is drawn from
the *train* tiles only: per class, a seeded permutation of that class's train
*units*, first k kept, and every train tile of a kept unit is in the support.
Units are tiles (the classic tile k-shot), slides or patients (CITE's slide
k-shot: k slides per class and all their tiles). For one seed the 1-shot
support is inside the 2-shot support, and so on. The test tiles never reach
the sampler; when tile ids are given, a train id that is also a test id is an error.

Methods (each fitted on the support only, evaluated on every test tile):

- ``logreg``: StandardScaler + logistic regression, C by inner CV when every
  class has >= 2 shots, else C=1 (:class:`~wsi_mil.evaluation.linear_probe.LogRegCVClassifier`);
- ``random_init`` / ``text_init``: the cosine linear head of
  :mod:`wsi_mil.evaluation.text_init`, from random or class-prompt weights;
- ``cite``: frozen class-text embeddings (any text model), learned
  image->text projection (:mod:`wsi_mil.evaluation.cite`);
- ``zero_shot``: the text prototypes alone (no shot), reported at k = 0.

Metrics: tile level (every test tile) and, when the test tiles' slides are
known, slide level by soft vote: a slide's probabilities are the mean of its
tiles' probabilities (CITE's WSI-level accuracy). Intervals: per seed, the
percentile bootstrap over test units (patients / slides when known, else
tiles); in the summary, the mean over seeds with the interval of that mean
from the *same* test resamples for every seed (the replicates of the seed
mean), beside the sd over seeds (support-sampling variability).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.cite import CiteClassifier
from wsi_mil.evaluation.linear_probe import LogRegCVClassifier
from wsi_mil.evaluation.tables import summarise_over_seeds
from wsi_mil.evaluation.text_init import LinearHeadClassifier
from wsi_mil.evaluation.tile_metrics import (
    class_names_of,
    interval,
    metric_replicates,
    metrics_frame,
)
from wsi_mil.evaluation.zero_shot import cosine_logits, softmax

FEW_SHOT_KS = (1, 2, 4, 8, 16)
METHODS = ("logreg", "random_init", "text_init", "cite", "zero_shot")
_TEXT_METHODS = ("text_init", "zero_shot")
LEVELS = ("tile", "slide")


def sample_k_shot(train_labels: np.ndarray, k: int, seed: int,
                  units: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices into ``train_labels`` of the tiles of k units per class.

    ``units`` (N,): the unit (slide, patient) of each tile; None = each tile is
    a unit. A class with fewer than k units gives all it has (logged). A unit
    whose tiles carry several labels cannot be sampled by class: an error.
    """
    if int(k) < 1:
        raise ConfigError(f"k must be >= 1 shot per class, got {k}")
    labels = np.asarray(train_labels)
    rng = np.random.default_rng(seed)
    if units is None:
        chosen = []
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            if idx.size < k:
                logger.warning("class {} has {} train tiles < k={}: all are used", cls, idx.size, k)
            chosen.append(idx[:k])
        return np.sort(np.concatenate(chosen))
    units = np.asarray(units).astype(str)
    table = pd.DataFrame({"unit": units, "label": labels})
    n_labels = table.groupby("unit", sort=True)["label"].nunique()
    mixed = n_labels[n_labels > 1].index.tolist()
    if mixed:
        raise ConfigError(f"{len(mixed)} sampling unit(s) hold tiles of several classes, e.g. "
                          f"{mixed[:3]}: sample by a finer unit (slide or tile)")
    unit_label = table.groupby("unit", sort=True)["label"].first()
    keep = []
    for cls in np.unique(labels):
        cls_units = unit_label.index[unit_label == cls].to_numpy()
        picked = rng.permutation(cls_units)[:k]
        if cls_units.size < k:
            logger.warning("class {} has {} train units < k={}: all are used", cls, cls_units.size, k)
        keep.append(picked)
    return np.flatnonzero(np.isin(units, np.concatenate(keep)))


@dataclass
class FewShotResult:
    per_seed: pd.DataFrame  # method, k, seed, n_support, level, class, metric, value, ci_low, ci_high
    summary: pd.DataFrame  # method, k, level, class, metric, mean, sd, n_seeds, ci_low, ci_high
    supports: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (k, seed) -> idx
    tile_scores: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    slide_scores: pd.DataFrame | None = None  # method, k, seed, slide_id, label, p_<class>...

    def table(self, metric: str = "balanced_accuracy", level: str = "tile") -> pd.DataFrame:
        """Macro ``metric`` at ``level``: one row per k, ``<method>_{mean,sd,ci_low,ci_high}``."""
        sel = self.summary[(self.summary["class"] == "macro") & (self.summary["metric"] == metric)
                           & (self.summary["level"] == level)]
        if sel.empty:
            raise ConfigError(f"no macro {metric!r} at level {level!r} in the few-shot summary")
        stats = ["mean", "sd", "ci_low", "ci_high"]
        wide = sel.pivot_table(index="k", columns="method", values=stats, sort=False, dropna=False)
        wide.columns = [f"{method}_{stat}" for stat, method in wide.columns]
        order = [f"{m}_{s}" for m in METHODS for s in stats if f"{m}_{s}" in wide.columns]
        return wide[order].sort_index().reset_index()


def _make_method(method: str, n_classes: int, seed: int, prototypes: np.ndarray | None,
                 image_projection: np.ndarray | None, head_kwargs: dict, probe_kwargs: dict,
                 class_text: np.ndarray | None, cite_kwargs: dict):
    if method == "logreg":
        return LogRegCVClassifier(n_classes=n_classes, seed=seed, **probe_kwargs)
    if method == "cite":
        return CiteClassifier(class_text, seed=seed, **cite_kwargs)
    init = "text" if method == "text_init" else "random"
    return LinearHeadClassifier(init=init, prototypes=prototypes, image_projection=image_projection,
                                n_classes=n_classes, seed=seed, **head_kwargs)


def soft_vote(probs: np.ndarray, slides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slide ids (S,), slide probabilities (S, C)): the mean of each slide's tile probabilities."""
    ids, inverse = np.unique(np.asarray(slides).astype(str), return_inverse=True)
    sums = np.zeros((ids.size, probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return ids, sums / np.bincount(inverse)[:, None]


@dataclass
class _Level:
    """One evaluation level: labels, bootstrap groups and how tile scores map onto it."""

    name: str
    y: np.ndarray
    groups: np.ndarray | None
    slides: np.ndarray | None = None  # tile -> slide (slide level only)
    ids: np.ndarray | None = None     # slide ids (slide level only)

    def scores(self, tile_probs: np.ndarray) -> np.ndarray:
        return tile_probs if self.slides is None else soft_vote(tile_probs, self.slides)[1]


def _levels(test_y: np.ndarray, test_slides: np.ndarray | None,
            test_groups: np.ndarray | None) -> list[_Level]:
    levels = [_Level("tile", test_y, test_groups if test_groups is not None else test_slides)]
    if test_slides is not None:
        frame = pd.DataFrame({"slide": np.asarray(test_slides).astype(str), "y": test_y,
                              "group": test_slides if test_groups is None else test_groups})
        per_slide = frame.groupby("slide", sort=True)  # the order of soft_vote's np.unique
        n_labels = per_slide["y"].nunique()
        mixed = n_labels[n_labels > 1].index.tolist()
        if mixed:
            raise ConfigError(f"{len(mixed)} test slide(s) hold tiles of several classes, e.g. "
                              f"{mixed[:3]}: no slide-level label for the soft vote")
        first = per_slide.first()
        groups = None if test_groups is None else first["group"].to_numpy()
        levels.append(_Level("slide", first["y"].to_numpy(np.int64), groups,
                             np.asarray(test_slides).astype(str), first.index.to_numpy()))
    return levels


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
    train_units: np.ndarray | None = None,
    test_slides: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
    class_text: np.ndarray | None = None,
    cite_kwargs: dict | None = None,
    zero_shot_logit_scale: float = 100.0,
    n_bootstrap: int = 0,
    confidence_level: float = 0.95,
    bootstrap_seed: int = 0,
    macro_over: str = "present",
    keep_tile_scores: bool = False,
) -> FewShotResult:
    """Every method x k x seed; see the module docstring.

    ``prototypes`` (C, D) for the text methods (the image encoder's own text
    side); ``class_text`` (C, D_txt) for ``cite``; ``train_units`` (N_train,)
    the sampling units (None = tiles); ``test_slides`` (N_test,) enables the
    slide-level soft vote; ``test_groups`` (N_test,) the bootstrap units
    (patients; default: the test slides, else tiles).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"few-shot methods {unknown}; valid: {list(METHODS)}")
    if prototypes is None and any(m in _TEXT_METHODS for m in methods):
        raise ConfigError(f"methods {list(_TEXT_METHODS)} need class prototypes (a CLIP text side)")
    if class_text is None and "cite" in methods:
        raise ConfigError("method 'cite' needs class-text embeddings (a text model)")
    if train_ids is not None and test_ids is not None:
        leak = np.intersect1d(np.asarray(train_ids).astype(str), np.asarray(test_ids).astype(str))
        if leak.size:
            raise ConfigError(f"{leak.size} tile id(s) are both train and test, e.g. {leak[:5].tolist()}")
    train_x = np.asarray(train_x, dtype=np.float32)
    test_x = np.asarray(test_x, dtype=np.float32)
    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    n_classes = len(class_names) if class_names is not None else int(max(train_y.max(), test_y.max()) + 1)
    names = class_names_of(np.zeros((1, n_classes)), class_names)
    levels = _levels(test_y, test_slides, test_groups)
    rows: list[pd.DataFrame] = []
    boots: dict[tuple[str, int, str], list[np.ndarray]] = {}
    tile_scores: dict[tuple[str, int, int], np.ndarray] = {}
    slide_rows: list[pd.DataFrame] = []

    def evaluate(method: str, k: int, seed: int, n_support: int, probs: np.ndarray) -> None:
        if keep_tile_scores:
            tile_scores[(method, k, seed)] = probs.astype(np.float32)
        for level in levels:
            scores = level.scores(probs)
            values, boot = metric_replicates(level.y, scores, n_bootstrap, bootstrap_seed,
                                             level.groups, macro_over)
            low, high = interval(values, boot, confidence_level)
            table = metrics_frame(values, low, high, names)
            rows.append(table.assign(method=method, k=k, seed=seed, n_support=n_support,
                                     level=level.name))
            if boot is not None:
                boots.setdefault((method, k, level.name), []).append(boot)
            if level.name == "slide":
                frame = pd.DataFrame(scores, columns=[f"p_{c}" for c in names])
                slide_rows.append(frame.assign(method=method, k=k, seed=seed, slide_id=level.ids,
                                               label=np.asarray(names)[level.y]))

    if "zero_shot" in methods:
        feats = test_x if image_projection is None else test_x @ image_projection
        probs = softmax(zero_shot_logit_scale * cosine_logits(feats, prototypes))
        for seed in seeds:  # seed-independent: repeated so the summary has sd 0
            evaluate("zero_shot", 0, int(seed), 0, probs)
    supports: dict[tuple[int, int], np.ndarray] = {}
    for k in ks:
        for seed in seeds:
            idx = sample_k_shot(train_y, k, seed, train_units)
            supports[(int(k), int(seed))] = idx
            for method in methods:
                if method == "zero_shot":
                    continue
                clf = _make_method(method, n_classes, int(seed), prototypes, image_projection,
                                   head_kwargs or {}, probe_kwargs or {}, class_text,
                                   cite_kwargs or {})
                clf.fit(train_x[idx], train_y[idx])
                evaluate(method, int(k), int(seed), int(idx.size), clf.predict_proba(test_x))
        logger.info("few-shot k={} done ({} seeds x {} methods)", k, len(seeds), len(methods))
    per_seed = pd.concat(rows, ignore_index=True)
    per_seed = per_seed[["method", "k", "seed", "n_support", "level", "class", "metric", "value",
                         "ci_low", "ci_high"]]
    summary = summarise_over_seeds(per_seed, ["method", "k", "level", "class", "metric"])
    summary["ci_low"], summary["ci_high"] = np.nan, np.nan
    for (method, k, level), reps in boots.items():  # interval of the seed mean
        mean_boot = np.mean(reps, axis=0)  # (B, C+1, M): the same resamples for every seed
        low, high = interval(mean_boot.mean(axis=0), mean_boot, confidence_level)
        frame = metrics_frame(np.zeros_like(low), low, high, names)
        sel = (summary["method"] == method) & (summary["k"] == k) & (summary["level"] == level)
        keyed = frame.set_index(["class", "metric"])
        pairs = list(zip(summary.loc[sel, "class"], summary.loc[sel, "metric"], strict=True))
        summary.loc[sel, "ci_low"] = keyed.loc[pairs, "ci_low"].to_numpy()
        summary.loc[sel, "ci_high"] = keyed.loc[pairs, "ci_high"].to_numpy()
    slides = pd.concat(slide_rows, ignore_index=True) if slide_rows else None
    return FewShotResult(per_seed, summary, supports, tile_scores, slides)
