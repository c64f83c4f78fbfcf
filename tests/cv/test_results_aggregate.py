"""``aggregate``: bootstrap interval, sd / std_ref, survival metrics from fold files
(fold json files written in write_fold's layout, without training anything)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsi_mil.cv.outputs import aggregate, fold_path
from wsi_mil.cv.settings import CVSettings
from wsi_mil.cv.statistics import patient_bootstrap_ci
from wsi_mil.data.cohort import make_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.evaluation.metrics import auc, c_index, uno_c_index
from wsi_mil.io.atomic import write_json_atomic


def _cohort(task, n_patients=45, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        risk = rng.normal()
        for s in range(1 + p % 2):  # patients with one or two slides
            row = {"slide_id": f"p{p}_s{s}", "patient_id": f"p{p}", "risk": risk}
            if task == "survival":
                t, c = np.ceil(rng.exponential(10 * np.exp(-risk))), np.ceil(rng.exponential(15))
                row.update(time=float(min(t, c)) if s == 0 else rows[-1]["time"],
                           event=int(t <= c) if s == 0 else rows[-1]["event"])
            else:
                row["label"] = int(risk > 0)
            rows.append(row)
    df = pd.DataFrame(rows)
    return make_cohort(df.drop(columns="risk"), task, name="toy"), df["risk"].to_numpy()


def _write_folds(run_dir, cohort, plan, risk, rng, with_train_scores):
    for r, folds in enumerate(plan.repeats):
        for k, fold in enumerate(folds):
            test = fold.test
            score = risk[test] + rng.normal(size=test.size)
            table = cohort.table.iloc[test]
            preds = {"slide_id": table.slide_id.tolist(), "patient_id": table.patient_id.tolist(),
                     "repeat": [r] * test.size, "outer_fold": [k] * test.size}
            if cohort.task == "survival":
                preds.update(time=cohort.time[test].tolist(), event=cohort.event[test].tolist())
                metric = {"c_index": c_index(cohort.time[test], score, cohort.event[test])}
            else:
                preds["target"] = cohort.y[test].tolist()
                metric = {"auc": auc(cohort.y[test], score)}
            preds["score"] = score.tolist()
            row = {"repeat": r, "outer_fold": k, **metric, "lr": 1e-3, "weight_decay": 0.0, "epochs": 5,
                   "inner_score": None, "n_train": int(fold.train.size), "n_test": int(test.size)}
            d = {"row": row, "hparams": {}, "inner_curves": None, "seconds": 0.1, "predictions": preds,
                 "settings": {}}
            if with_train_scores:
                d["train_scores"] = (risk[fold.train] + rng.normal(size=fold.train.size)).tolist()
            write_json_atomic(fold_path(run_dir, r, k), d)


@pytest.mark.parametrize("n_repeats", [1, 3])
def test_summary_has_the_bootstrap_interval_sd_and_std_ref_of_the_fold_metric(tmp_path, n_repeats):
    cohort, risk = _cohort("classification")
    plan = make_fold_plan(cohort, 5, 0, n_repeats, seed=0)
    _write_folds(tmp_path, cohort, plan, risk, np.random.default_rng(1), False)
    settings = CVSettings("classification", "abmil", mode="kfold", seed=4)
    result = aggregate(tmp_path, cohort, plan, settings, "auc", 1.0)
    s = json.loads((tmp_path / "summary.json").read_text())
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert s["mean"] == pytest.approx(folds.auc.mean())
    assert s["sd"] == pytest.approx(folds.auc.std(ddof=1)) and s["std_ref"] == pytest.approx(folds.auc.std(ddof=0))
    ci = patient_bootstrap_ci(result.predictions, "auc", seed=4)
    assert (s["ci95_low"], s["ci95_high"], s["ci_method"]) == (ci.low, ci.high, "patient_bootstrap")
    assert 0.0 <= s["ci95_low"] <= s["mean"] <= s["ci95_high"] <= 1.0


def test_survival_runs_get_uno_c_time_dependent_auc_and_ibs_per_fold_and_in_the_summary(tmp_path):
    cohort, risk = _cohort("survival", n_patients=80)
    plan = make_fold_plan(cohort, 4, 0, 1, seed=0)
    _write_folds(tmp_path, cohort, plan, risk, np.random.default_rng(2), True)
    aggregate(tmp_path, cohort, plan, CVSettings("survival", "abmil", mode="kfold"), "c_index", 1.0)
    folds = pd.read_csv(tmp_path / "folds.csv")
    s = json.loads((tmp_path / "summary.json").read_text())["survival_metrics"]
    for col in ("uno_c", "td_auc_q25", "td_auc_q50", "td_auc_q75", "ibs"):
        assert folds[col].notna().any(), col
        assert s[col]["mean"] == pytest.approx(folds[col].mean())
    assert s["tau"] == s["horizons"][-1]
    preds = pd.read_csv(tmp_path / "predictions.csv")
    f0 = preds[preds.outer_fold == 0]
    train = plan.repeats[0][0].train
    expected = uno_c_index(cohort.time[train], cohort.event[train], f0.time, f0.event, f0.score, tau=s["tau"])
    assert folds.uno_c[0] == pytest.approx(expected)
    assert ((folds.ibs > 0) & (folds.ibs < 0.25)).all()  # a Brier score of an informative model


def test_without_train_scores_in_the_fold_files_ibs_is_nan_and_the_rest_is_computed(tmp_path):
    cohort, risk = _cohort("survival", n_patients=60)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=0)
    _write_folds(tmp_path, cohort, plan, risk, np.random.default_rng(3), False)
    result = aggregate(tmp_path, cohort, plan, CVSettings("survival", "abmil", mode="kfold"), "c_index", 1.0)
    assert result.folds.ibs.isna().all() and result.folds.uno_c.notna().all()
    assert 0.0 <= result.summary["ci95_low"] <= result.summary["ci95_high"] <= 1.0
