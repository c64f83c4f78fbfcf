"""Fold plans: patient-level, nested inside outer-train, reproducible, saved as JSON."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_mil.data.cohort import make_cohort
from wsi_mil.data.folds import FoldPlan, make_fold_plan
from wsi_mil.errors import FoldPlanError


def cohort_of(n_patients=30, task="classification", seed=0, centers=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label, t, e = int(rng.integers(0, 2)), float(rng.integers(1, 50)), int(rng.integers(0, 2))
        for s in range(int(rng.integers(1, 4))):
            row = {"slide_id": f"p{p}_s{s}", "patient_id": f"p{p}", "label": label, "time": t, "event": e}
            if centers:
                row["center_id"] = f"c{p % centers}"
            rows.append(row)
    return make_cohort(pd.DataFrame(rows), task)


@pytest.mark.parametrize("task", ["classification", "survival"])
def test_no_patient_on_both_sides_at_any_level_and_each_slide_tested_once(task):
    cohort = cohort_of(task=task)
    plan = make_fold_plan(cohort, n_outer=3, n_inner=3, n_repeats=2, seed=4)
    patients = cohort.patient_ids
    for folds in plan.repeats:
        tested = np.sort(np.concatenate([f.test for f in folds]))
        assert tested.tolist() == list(range(len(cohort)))
        for f in folds:
            assert not set(patients[f.train]) & set(patients[f.test])
            assert len(f.inner) == 3
            inner_val = np.sort(np.concatenate([va for _, va in f.inner]))
            assert inner_val.tolist() == f.train.tolist()  # inner folds partition outer-train
            for tr, va in f.inner:
                assert set(tr) | set(va) <= set(f.train)
                assert not set(patients[tr]) & set(patients[va])
    plan.validate(cohort)


def test_same_seed_gives_the_same_plan_and_repeats_differ(tmp_path):
    cohort = cohort_of()
    a = make_fold_plan(cohort, 3, 3, 2, seed=7).to_dict()
    b = make_fold_plan(cohort, 3, 3, 2, seed=7).to_dict()
    assert a == b
    assert a["repeats"][0] != a["repeats"][1]
    assert make_fold_plan(cohort, 3, 3, 2, seed=8).to_dict() != a


def test_plan_round_trips_through_json_and_is_checked_against_the_cohort(tmp_path):
    cohort = cohort_of()
    plan = make_fold_plan(cohort, 3, 2, 1, seed=0)
    plan.save(tmp_path / "plan.json")
    loaded = FoldPlan.load(tmp_path / "plan.json")
    assert loaded.to_dict() == plan.to_dict()
    for f, g in zip(plan.repeats[0], loaded.repeats[0], strict=True):
        assert f.train.tolist() == g.train.tolist() and f.inner[1][0].tolist() == g.inner[1][0].tolist()
    loaded.validate(cohort)
    with pytest.raises(FoldPlanError, match="does not match the cohort"):
        loaded.validate(cohort_of(seed=1, n_patients=31))


def test_leaky_plan_is_rejected():
    cohort = cohort_of()
    d = make_fold_plan(cohort, 3, 0, 1, seed=0).to_dict()
    test0 = d["repeats"][0][0]["test"]
    patient = dict(zip(cohort.slide_ids, cohort.patient_ids, strict=True))
    moved = next(s for s in test0 if sum(patient[t] == patient[s] for t in test0) > 1)
    test0.remove(moved)  # a patient now has slides in two test folds = on both sides
    d["repeats"][0][1]["test"].append(moved)
    with pytest.raises(FoldPlanError):
        FoldPlan.from_dict(d).validate(cohort)


def test_center_grouped_split_keeps_centers_apart():
    cohort = cohort_of(n_patients=40, centers=4)
    plan = make_fold_plan(cohort, n_outer=4, n_inner=0, group_by="center", seed=0)
    for f in plan.repeats[0]:
        assert not set(cohort.centers[f.train]) & set(cohort.centers[f.test])
    with pytest.raises(FoldPlanError, match="center_id"):
        make_fold_plan(cohort_of(), group_by="center")


def test_too_few_patients_for_the_folds_is_an_error():
    with pytest.raises(FoldPlanError, match="cannot make 5 folds from 3 groups"):
        make_fold_plan(cohort_of(n_patients=3), n_outer=5, n_inner=0)
