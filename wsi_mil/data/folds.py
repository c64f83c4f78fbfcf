"""Patient-level fold plans for (nested) cross-validation, saved as JSON.

A plan has ``n_repeats`` repeats; each repeat splits the cohort into
``n_outer`` outer folds with :class:`~sklearn.model_selection.StratifiedGroupKFold`
(groups = patients, or centers with ``group_by="center"``; strata = label for
classification, event for survival); inside the *outer-train part only* of each
outer fold, ``n_inner`` inner folds are drawn the same way (``n_inner=0``:
plain K-fold). Every split has its own seed derived from ``seed`` with
:class:`numpy.random.SeedSequence`, so repeats differ and the same seed always
gives the same plan.

JSON stores slide ids (readable, robust to row order): for each repeat and
outer fold the test slides, and for each inner fold the validation slides;
train parts are the complements.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from sklearn.model_selection import StratifiedGroupKFold

from wsi_mil.data.cohort import Cohort
from wsi_mil.errors import FoldPlanError, TargetError
from wsi_mil.io.atomic import write_json_atomic

GROUP_BY = ("patient", "center")
PLAN_VERSION = 1


@dataclass
class OuterFold:
    """Indices into the cohort rows: outer train / test, and inner (train, val) pairs."""

    train: np.ndarray
    test: np.ndarray
    inner: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


@dataclass
class FoldPlan:
    slide_ids: list[str]
    n_outer: int
    n_inner: int
    n_repeats: int
    seed: int
    group_by: str
    repeats: list[list[OuterFold]]

    def __repr__(self) -> str:
        return (f"FoldPlan(slides={len(self.slide_ids)}, outer={self.n_outer}, inner={self.n_inner}, "
                f"repeats={self.n_repeats}, seed={self.seed}, group_by={self.group_by!r})")

    def to_dict(self) -> dict:
        ids = np.asarray(self.slide_ids)
        return {
            "version": PLAN_VERSION, "n_outer": self.n_outer, "n_inner": self.n_inner,
            "n_repeats": self.n_repeats, "seed": self.seed, "group_by": self.group_by,
            "slide_ids": list(self.slide_ids),
            "repeats": [
                [{"test": ids[f.test].tolist(), "inner_val": [ids[v].tolist() for _, v in f.inner]}
                 for f in folds]
                for folds in self.repeats
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FoldPlan:
        try:
            slide_ids = list(d["slide_ids"])
            pos = {s: i for i, s in enumerate(slide_ids)}
            all_idx = np.arange(len(slide_ids))
            repeats = []
            for folds in d["repeats"]:
                out = []
                for f in folds:
                    test = np.sort([pos[s] for s in f["test"]])
                    train = np.setdiff1d(all_idx, test)
                    inner = []
                    for val_ids in f["inner_val"]:
                        val = np.sort([pos[s] for s in val_ids])
                        inner.append((np.setdiff1d(train, val), val))
                    out.append(OuterFold(train, test, inner))
                repeats.append(out)
            return cls(slide_ids, int(d["n_outer"]), int(d["n_inner"]), int(d["n_repeats"]),
                       int(d["seed"]), str(d["group_by"]), repeats)
        except (KeyError, TypeError) as err:
            raise FoldPlanError(f"malformed fold plan: missing or bad field {err}") from err

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FoldPlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise FoldPlanError(f"cannot read fold plan {str(path)!r}: {err}") from err

    def validate(self, cohort: Cohort) -> None:
        """Raise :class:`FoldPlanError` unless the plan fits ``cohort`` and never leaks a group."""
        if list(self.slide_ids) != cohort.slide_ids:
            theirs, ours = set(self.slide_ids), set(cohort.slide_ids)
            raise FoldPlanError(
                "fold plan does not match the cohort: "
                f"{len(ours - theirs)} cohort slides not in the plan (e.g. {sorted(ours - theirs)[:5]}), "
                f"{len(theirs - ours)} plan slides not in the cohort (e.g. {sorted(theirs - ours)[:5]})"
                + ("; same slides, different order" if ours == theirs else "")
            )
        groups = _groups(cohort, self.group_by)
        n = len(cohort)
        if len(self.repeats) != self.n_repeats:
            raise FoldPlanError(f"fold plan declares {self.n_repeats} repeats but holds {len(self.repeats)}")
        for r, folds in enumerate(self.repeats):
            if len(folds) != self.n_outer or any(len(f.inner) != self.n_inner for f in folds):
                raise FoldPlanError(f"repeat {r}: expected {self.n_outer} outer folds with "
                                    f"{self.n_inner} inner folds each")
            tested = np.concatenate([f.test for f in folds])
            if np.sort(tested).tolist() != list(range(n)):
                raise FoldPlanError(f"repeat {r}: slides are not each tested exactly once")
            for k, f in enumerate(folds):
                _check_disjoint(groups, f.train, f.test, f"repeat {r} outer fold {k}")
                for j, (tr, va) in enumerate(f.inner):
                    if not np.isin(np.concatenate([tr, va]), f.train).all():
                        raise FoldPlanError(f"repeat {r} outer fold {k} inner {j}: uses outer-test slides")
                    _check_disjoint(groups, tr, va, f"repeat {r} outer fold {k} inner fold {j}")


def _check_disjoint(groups: np.ndarray, a: np.ndarray, b: np.ndarray, where: str) -> None:
    shared = np.intersect1d(groups[a], groups[b])
    if shared.size:
        raise FoldPlanError(f"{where}: groups on both sides: {shared[:10].tolist()}")


def _groups(cohort: Cohort, group_by: str) -> np.ndarray:
    if group_by not in GROUP_BY:
        raise FoldPlanError(f"group_by {group_by!r}; choose one of {GROUP_BY}")
    if group_by == "center":
        if cohort.centers is None:
            raise FoldPlanError("group_by='center' needs a center_id column in the cohort")
        return cohort.centers
    return cohort.patient_ids


def _split(strata: np.ndarray, groups: np.ndarray, n_splits: int, seed: int, where: str
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    n_groups = np.unique(groups).size
    if n_splits < 2 or n_groups < n_splits:
        raise FoldPlanError(f"{where}: cannot make {n_splits} folds from {n_groups} groups (need 2 <= folds <= groups)")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" warnings
        splits = list(cv.split(np.zeros(len(strata)), strata, groups))
    if any(len(test) == 0 for _, test in splits):
        raise FoldPlanError(f"{where}: an empty fold; use fewer folds")
    return splits


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] % (2**31 - 1))


def make_fold_plan(cohort: Cohort, n_outer: int = 5, n_inner: int = 5, n_repeats: int = 1,
                   seed: int = 0, group_by: str = "patient") -> FoldPlan:
    """Draw a plan for ``cohort`` (``n_inner=0``: no inner folds, plain K-fold)."""
    if n_repeats < 1:
        raise FoldPlanError(f"n_repeats={n_repeats}; need >= 1")
    groups = _groups(cohort, group_by)
    strata = cohort.strata()
    repeats = []
    for r in range(n_repeats):
        folds = []
        for k, (train, test) in enumerate(_split(strata, groups, n_outer, _seed(seed, r), f"repeat {r}")):
            inner = []
            if n_inner:
                for tr, va in _split(strata[train], groups[train], n_inner, _seed(seed, r, k + 1),
                                     f"repeat {r} outer fold {k}"):
                    inner.append((train[tr], train[va]))
            folds.append(OuterFold(np.sort(train), np.sort(test), inner))
        repeats.append(folds)
    return FoldPlan(cohort.slide_ids, n_outer, n_inner, n_repeats, seed, group_by, repeats)


def _comparable_pairs(time: np.ndarray, event: np.ndarray) -> int:
    """Pairs (i, j) with an event at i before time j (Harrell's comparable pairs)."""
    t_event = np.sort(time[event.astype(bool)])
    return int(sum(np.searchsorted(t_event, t, side="left") for t in time))


def _target_problems(cohort: Cohort, train: np.ndarray, test: np.ndarray) -> list[str]:
    if cohort.task == "survival":
        out = []
        if not cohort.event[train].any():
            out.append("its training part has no event (nothing for a Cox model to learn)")
        if _comparable_pairs(cohort.time[test], cohort.event[test]) == 0:
            out.append(f"its test part ({len(test)} slides, {int(cohort.event[test].sum())} "
                       "events) has no comparable pair (the c-index is undefined)")
        return out
    out = []
    missing = sorted(set(range(cohort.n_classes)) - set(cohort.y[train].tolist()))
    if missing:
        out.append(f"its training part has no slide of class(es) "
                   f"{[cohort.classes[c] for c in missing]}")
    if np.unique(cohort.y[test]).size < 2:
        out.append(f"its test part holds a single class ({cohort.classes[int(cohort.y[test][0])]!r};"
                   " AUC is undefined)")
    return out


def validate_targets(cohort: Cohort, plan: FoldPlan) -> None:
    """Before any training: every outer fold can learn and measure the target.

    Survival: an event in every outer training part and a comparable pair in every test
    fold; classification: every class in every training part, two classes in every test
    fold. Else a :class:`TargetError` naming the folds and suggesting fewer folds. The
    same problems in inner folds are logged as warnings (their metric steers selection only).
    """
    bad = []
    for r, folds in enumerate(plan.repeats):
        for k, fold in enumerate(folds):
            bad += [f"repeat {r} outer fold {k}: {p}"
                    for p in _target_problems(cohort, fold.train, fold.test)]
            for j, (tr, va) in enumerate(fold.inner):
                for p in _target_problems(cohort, tr, va):
                    logger.warning("repeat {} outer fold {} inner fold {}: {}", r, k, j, p)
    if bad:
        if cohort.task == "survival":
            units = np.unique(cohort.patient_ids[cohort.event.astype(bool)]).size
            what = f"{int(cohort.event.sum())} events in {units} patients"
        else:
            counts = np.bincount(cohort.y, minlength=cohort.n_classes)
            what = ", ".join(f"{c}: {n}" for c, n in zip(cohort.classes, counts, strict=True))
        fewer = max(2, plan.n_outer - 1)
        raise TargetError(
            f"the {cohort.task} target of {cohort.name!r} ({what}) cannot be trained and "
            f"evaluated in {len(bad)} of {plan.n_outer * plan.n_repeats} outer folds: "
            + "; ".join(bad[:5]) + (f"; ... and {len(bad) - 5} more" if len(bad) > 5 else "")
            + f". Use fewer folds (e.g. outer_folds={fewer}) or a cohort with more "
            + ("events" if cohort.task == "survival" else "slides of the rare classes"))
