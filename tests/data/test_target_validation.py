"""Targets are validated before any work: events and classes in every fold, no continuous labels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_mil.data.cohort import make_cohort
from wsi_mil.data.folds import make_fold_plan, validate_targets
from wsi_mil.errors import TargetError


def _survival(n=20, events=None, seed=0):
    rng = np.random.default_rng(seed)
    event = np.zeros(n, int) if events is None else np.isin(np.arange(n), events).astype(int)
    return pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)],
                         "patient_id": [f"p{i}" for i in range(n)],
                         "time": rng.uniform(1, 100, n).round(1), "event": event})


def test_a_survival_cohort_without_events_is_a_named_error():
    with pytest.raises(TargetError, match="has no event"):
        make_cohort(_survival(), "survival")


def test_too_few_events_for_the_folds_name_the_fold_and_suggest_fewer_folds():
    cohort = make_cohort(_survival(events=[0, 1]), "survival")
    plan = make_fold_plan(cohort, n_outer=5, n_inner=0, seed=0)
    with pytest.raises(TargetError, match=r"outer fold \d: .*comparable pair.*outer_folds=4"):
        validate_targets(cohort, plan)
    enough = make_cohort(_survival(events=list(range(0, 20, 2))), "survival")
    validate_targets(enough, make_fold_plan(enough, n_outer=5, n_inner=3, seed=0))


def test_a_test_fold_with_one_class_is_a_named_error():
    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(12)],
                       "patient_id": [f"p{i}" for i in range(12)],
                       "label": ["a"] * 10 + ["b"] * 2})
    cohort = make_cohort(df, "classification")
    with pytest.raises(TargetError, match="single class"):
        validate_targets(cohort, make_fold_plan(cohort, n_outer=4, n_inner=0, seed=0))
    validate_targets(cohort, make_fold_plan(cohort, n_outer=2, n_inner=0, seed=0))


def test_a_continuous_label_column_needs_allow_many_classes():
    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(26)],
                       "patient_id": [f"p{i}" for i in range(26)],
                       "label": np.linspace(30.5, 80.5, 26).round(1)})
    with pytest.raises(TargetError, match=r"looks continuous.*26 distinct numeric values.*"
                                          r"allow_many_classes=true"):
        make_cohort(df, "classification")
    assert make_cohort(df, "classification", allow_many_classes=True).n_classes == 26
    df["label"] = np.arange(26) % 3  # a few integer classes are classes
    assert make_cohort(df, "classification").n_classes == 3
