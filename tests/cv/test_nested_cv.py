"""Nested CV end to end on planted feature bags (patients with several slides)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from wsi_mil.cv.engine import CVSettings, grid_points, run_cv, select
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import make_cohort, read_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.errors import ConfigError, StaleOutputError
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort

FAST = {"batch_size": 8, "n_tiles": 32}


def setup(root, task="classification", n_patients=36, **kw):
    syn = write_synthetic_cohort(root, task=task, n_patients=n_patients, dim=16, n_tiles=(20, 60), seed=0, **kw)
    cohort = read_cohort(syn.cohort_csv, task)
    return cohort, BagStore.from_dir(syn.features_dir, cohort.slide_ids)


@pytest.fixture(scope="module")
def abmil_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("abmil")
    cohort, store = setup(root, n_patients=30)
    plan = make_fold_plan(cohort, 3, 3, 1, seed=0)
    settings = CVSettings("classification", "abmil", grid={"lr": [1e-3], "weight_decay": [0.0, 1e-4]},
                          epochs=6, **FAST)
    return run_cv(cohort, store, plan, settings, root / "run"), cohort


@pytest.mark.slow
def test_abmil_finds_the_planted_witness_tiles(abmil_run):
    result, _ = abmil_run
    assert result.summary["metric"] == "auc"
    assert result.summary["mean"] >= 0.9, result.folds


@pytest.mark.slow
def test_run_directory_has_the_contract_files(abmil_run):
    result, cohort = abmil_run
    run = result.run_dir
    for name in ("fold_plan.json", "predictions.csv", "folds.csv", "summary.json", "models/r0_f0.pt"):
        assert (run / name).exists(), name
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns) == ["slide_id", "patient_id", "repeat", "outer_fold", "target", "score"]
    assert sorted(preds.slide_id) == sorted(cohort.slide_ids)  # each slide tested once
    folds = pd.read_csv(run / "folds.csv")
    for col in ("repeat", "outer_fold", "auc", "accuracy", "lr", "weight_decay", "epochs", "n_train", "n_test"):
        assert col in folds, col
    assert folds.epochs.between(1, 6).all() and (folds.n_train + folds.n_test == len(cohort)).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_folds"] == 3 and summary["ci95_low"] <= summary["mean"] <= summary["ci95_high"]


@pytest.mark.slow
def test_survival_with_planted_risk_reaches_c_index_07(tmp_path):
    cohort, store = setup(tmp_path, "survival", n_patients=50, witness_fraction=(0.0, 0.5), signal=3.0)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=0)
    settings = CVSettings("survival", "abmil", mode="kfold", epochs=8, **FAST)
    result = run_cv(cohort, store, plan, settings, tmp_path / "run")
    assert result.summary["metric"] == "c_index"
    assert result.summary["mean"] >= 0.7, result.folds
    folds = pd.read_csv(tmp_path / "run" / "folds.csv")
    assert "train_risk_median" in folds and folds.train_risk_median.notna().all()
    assert {"time", "event", "score"} <= set(pd.read_csv(tmp_path / "run" / "predictions.csv").columns)


def test_outer_test_labels_never_influence_selection_or_model(tmp_path):
    cohort, store = setup(tmp_path, n_patients=24)
    plan = make_fold_plan(cohort, 3, 2, 1, seed=0)
    settings = CVSettings("classification", "meanpool", epochs=4, **FAST)
    a = run_cv(cohort, store, plan, settings, tmp_path / "a")
    flipped = cohort.table.copy()
    test0 = plan.repeats[0][0].test
    flipped.loc[test0, "y"] = 1 - flipped.loc[test0, "y"]
    df = flipped.rename(columns={"y": "label"})
    b = run_cv(make_cohort(df, "classification"), store, plan, settings, tmp_path / "b")
    cols = ["lr", "weight_decay", "epochs", "inner_score"]
    assert a.folds.loc[0, cols].tolist() == b.folds.loc[0, cols].tolist()
    pa, pb = (r.predictions[r.predictions.outer_fold == 0] for r in (a, b))
    np.testing.assert_array_equal(pa.score.to_numpy(), pb.score.to_numpy())


def test_same_seed_gives_identical_folds_csv_and_rerun_resumes(tmp_path):
    cohort, store = setup(tmp_path, n_patients=18)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=1)
    settings = CVSettings("classification", "meanpool", mode="kfold", epochs=3, **FAST)
    run_cv(cohort, store, plan, settings, tmp_path / "a")
    run_cv(cohort, store, plan, settings, tmp_path / "b")
    first = (tmp_path / "a" / "folds.csv").read_text()
    assert first == (tmp_path / "b" / "folds.csv").read_text()
    (tmp_path / "a" / "folds" / "r0_f1.json").unlink()
    (tmp_path / "a" / "folds.csv").unlink()
    run_cv(cohort, store, plan, settings, tmp_path / "a")
    assert (tmp_path / "a" / "folds.csv").read_text() == first
    with pytest.raises(StaleOutputError, match="other settings"):
        run_cv(cohort, store, plan, CVSettings("classification", "meanpool", mode="kfold", epochs=4, **FAST),
               tmp_path / "a")


def test_a_rerun_never_reuses_folds_made_with_other_targets_or_another_plan(tmp_path):
    cohort, store = setup(tmp_path, task="survival", n_patients=18)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=1)
    settings = CVSettings("survival", "meanpool", mode="kfold", epochs=2, **FAST)
    run_cv(cohort, store, plan, settings, tmp_path / "run")
    edited = cohort.table.drop(columns=["y"], errors="ignore").copy()
    edited["time"] = edited["time"] * 2.0 + 1.0  # same events (same plan), other times
    other = make_cohort(edited, "survival")
    with pytest.raises(StaleOutputError, match="other settings"):
        run_cv(other, store, plan, settings, tmp_path / "run")
    with pytest.raises(StaleOutputError, match="another fold plan"):
        run_cv(cohort, store, make_fold_plan(cohort, 3, 0, 1, seed=2), settings, tmp_path / "run")


def test_multiclass_string_labels_give_one_probability_per_class(tmp_path):
    cohort, store = setup(tmp_path, n_patients=24, n_classes=3, string_labels=True)
    plan = make_fold_plan(cohort, 2, 0, 1, seed=0)
    result = run_cv(cohort, store, plan, CVSettings("classification", "meanpool", mode="kfold", epochs=2, **FAST),
                    tmp_path / "run")
    assert result.summary["metric"] == "macro_auc"
    assert result.summary["classes"] == ["class_0", "class_1", "class_2"]
    assert {"score_0", "score_1", "score_2"} <= set(result.predictions.columns)


@pytest.mark.slow
def test_parallel_processes_give_the_same_results_as_one_process(tmp_path):
    cohort, store = setup(tmp_path, n_patients=18)
    plan = make_fold_plan(cohort, 2, 2, 1, seed=0)
    settings = CVSettings("classification", "abmil", grid={"lr": [1e-3], "weight_decay": [0.0, 1e-4]},
                          epochs=2, **FAST)
    one = run_cv(cohort, store, plan, settings, tmp_path / "one")
    two = run_cv(cohort, store, plan, CVSettings(**{**settings.__dict__, "n_jobs": 2}), tmp_path / "two")
    pd.testing.assert_frame_equal(one.folds, two.folds)
    pd.testing.assert_frame_equal(one.predictions, two.predictions)
    assert not (tmp_path / "two" / ".features_cache.npy").exists()


def test_selection_takes_the_best_mean_inner_curve_first_grid_point_and_fewest_epochs_on_ties():
    curves = np.array([[[0.5, 0.7, 0.7], [0.5, 0.9, 0.7]],      # grid 0: mean [0.5, 0.8, 0.7]
                       [[0.6, 0.8, np.nan], [0.6, 0.8, 0.8]]])  # grid 1: mean [0.6, 0.8, 0.8]
    assert select(curves) == (0, 2, pytest.approx(0.8))
    assert select(np.full((2, 2, 3), np.nan))[:2] == (0, 3)


def test_selection_breaks_metric_ties_by_the_lowest_mean_inner_loss():
    # the AUC saturates at 1.0 from epoch 2 in both grid points; the loss keeps falling until epoch 3
    curves = np.array([[[0.8, 1.0, 1.0, 1.0], [0.8, 1.0, 1.0, 1.0]],
                       [[0.9, 1.0, 1.0, 0.9], [0.9, 1.0, 1.0, 1.0]]])
    loss = np.array([[[0.6, 0.5, 0.4, 0.45], [0.6, 0.5, 0.4, 0.45]],
                     [[0.5, 0.45, 0.35, 0.3], [0.5, 0.45, 0.35, 0.3]]])
    assert select(curves, loss) == (1, 3, 1.0)  # grid 1 epoch 4 has a lower loss but not the best AUC
    assert select(curves, loss, tiebreak="first") == (0, 2, 1.0)  # the reference's argmax
    assert select(curves, np.full_like(loss, np.nan)) == (0, 2, 1.0)  # no loss: first
    with pytest.raises(ConfigError, match="tie-break"):
        select(curves, loss, tiebreak="last")


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multiclass_logits", "survival"])
def test_validation_loss_is_the_training_loss_of_the_scores(kind):
    from wsi_mil.training.fit import Targets, outputs_to_scores
    from wsi_mil.training.losses import make_loss

    rng = np.random.default_rng(0)
    n, c = 30, (1 if kind in ("binary", "survival") else 3)
    out = torch.from_numpy(rng.normal(size=(n, c)) * 2)
    idx = np.arange(n)
    if kind == "survival":
        t = Targets("survival", 1, time=rng.integers(1, 8, size=n).astype(float), event=rng.random(n) < 0.6)
        tgt = {"time": torch.from_numpy(t.time), "event": torch.from_numpy(t.event)}
        task = "survival"
    else:
        t = Targets("classification", c, y=rng.integers(0, max(c, 2), size=n),
                    multiclass_scores="logits" if kind.endswith("logits") else "probabilities")
        tgt = {"y": torch.from_numpy(t.y)}
        task = "classification"
    want = float(make_loss(task, c)(out, tgt))
    got = t.loss(idx, outputs_to_scores(out, task, t.multiclass_scores))
    assert got == pytest.approx(want, rel=1e-6)


def test_grid_includes_head_hyperparameters():
    s = CVSettings("classification", "abmil", grid={"lr": [1e-3, 1e-4], "weight_decay": [0.0],
                                                    "d_model_attention": [64, 128]})
    points = grid_points(s)
    assert len(points) == 4 and {"lr", "weight_decay", "d_model_attention"} == set(points[0])
    assert grid_points(CVSettings("classification", "abmil", mode="kfold", lr=0.01)) == [
        {"lr": 0.01, "weight_decay": 0.0}]
