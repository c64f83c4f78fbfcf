"""CV intervals: patient-level cluster bootstrap, corrected variance, Holm."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from wsi_mil.cv.statistics import (
    corrected_t_interval,
    corrected_ttest,
    corrected_variance,
    fold_metric_replicates,
    holdout_ratio,
    holm,
    patient_bootstrap_ci,
    patient_weights,
    weighted_fold_metric,
)
from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.metrics import MetricWarning, auc, c_index, macro_ovr_auc, repeated_cv_ci


def _binary_predictions(rng, n_patients=40, n_repeats=1, n_folds=5, slides_per_patient=1, signal=1.0):
    patients = np.arange(n_patients)
    y_patient = rng.integers(0, 2, n_patients)
    y_patient[:2] = [0, 1]
    base = signal * y_patient + rng.normal(size=n_patients)  # a patient scores alike in every repeat
    rows = []
    for r in range(n_repeats):
        folds = rng.permutation(n_patients) % n_folds
        for p in patients:
            for s in range(slides_per_patient):
                rows.append({"slide_id": f"p{p}_s{s}", "patient_id": f"p{p}", "repeat": r,
                             "outer_fold": int(folds[p]), "target": int(y_patient[p]),
                             "score": float(base[p] + 0.3 * rng.normal())})
    return pd.DataFrame(rows)


def _expand(fold: pd.DataFrame, w: np.ndarray) -> pd.DataFrame:
    return fold.loc[np.repeat(np.arange(len(fold)), w.astype(int))].reset_index(drop=True)


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auc_and_c_index_equal_the_metric_on_the_resample_written_out(seed):
    rng = np.random.default_rng(seed)
    n = 30
    fold = pd.DataFrame({"target": rng.integers(0, 2, n), "score": rng.integers(0, 5, n) / 5.0,
                         "time": rng.integers(1, 8, n).astype(float), "event": rng.integers(0, 2, n)})
    fold.loc[:1, "target"] = [0, 1]
    w = rng.multinomial(n, np.full(n, 1 / n), size=4).astype(float)
    w[:, :2] = np.maximum(w[:, :2], 1)
    got_auc = weighted_fold_metric("auc", fold, w)
    got_c = weighted_fold_metric("c_index", fold.assign(event=fold.event.where(fold.index > 0, 1)), w)
    for b in range(len(w)):
        d = _expand(fold, w[b])
        assert got_auc[b] == pytest.approx(auc(d.target, d.score), abs=1e-12)
        e_fold = fold.event.where(fold.index > 0, 1).to_numpy()
        e = np.repeat(e_fold, w[b].astype(int))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            expected = c_index(d.time, d.score, e)
        assert got_c[b] == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_weighted_macro_auc_equals_sklearn_style_and_reference_style_on_the_resample(rng):
    n, k = 40, 3
    proba = rng.dirichlet(np.ones(k), n).round(2)
    fold = pd.DataFrame({"target": rng.integers(0, k, n), **{f"score_{c}": proba[:, c] for c in range(k)}})
    fold.loc[:2, "target"] = [0, 1, 2]
    w = np.ones((2, n))
    w[1, fold.target.to_numpy() == 2] = 0  # class 2 drawn zero times
    got = weighted_fold_metric("macro_auc", fold, w)
    got_present = weighted_fold_metric("macro_auc_present", fold, w)
    assert got[0] == pytest.approx(macro_ovr_auc(fold.target, proba), abs=1e-12)
    assert np.isnan(got[1])  # sklearn style: undefined when a class is absent
    d = _expand(fold, w[1])
    expected = macro_ovr_auc(d.target, d[[f"score_{c}" for c in range(k)]].to_numpy(), classes="present")
    assert got_present[1] == pytest.approx(expected, abs=1e-12)


def test_all_slides_of_a_patient_share_its_bootstrap_weight(rng):
    preds = _binary_predictions(rng, n_patients=20, slides_per_patient=3)
    weights = patient_weights(preds.patient_id, 50, seed=1)
    values = fold_metric_replicates(preds, "auc", weights)
    for b in range(3):
        for f, ((_, fold)) in enumerate(preds.groupby(["repeat", "outer_fold"])):
            w = weights.loc[b, fold.patient_id.to_numpy()].to_numpy()
            d = _expand(fold.reset_index(drop=True), w)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetricWarning)
                assert values[b, f] == pytest.approx(auc(d.target, d.score), nan_ok=True)
    assert (weights.sum(axis=1) == 20).all()


def test_estimate_is_the_mean_of_the_fold_metrics_and_lies_in_its_bounded_interval(rng):
    preds = _binary_predictions(rng, n_patients=60)
    ci = patient_bootstrap_ci(preds, "auc", n_boot=500, seed=0)
    folds = [auc(f.target, f.score) for _, f in preds.groupby("outer_fold")]
    assert ci.estimate == pytest.approx(np.mean(folds), abs=1e-12)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci.method == "patient_bootstrap" and ci.level == 0.95


def test_perfect_predictions_give_a_degenerate_interval_at_one(rng):
    preds = _binary_predictions(rng, n_patients=30)
    preds["score"] = preds.target + 0.01 * rng.random(len(preds))
    ci = patient_bootstrap_ci(preds, "auc", n_boot=200)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_identical_repeats_give_exactly_the_single_repeat_interval(rng):
    one = _binary_predictions(rng, n_patients=40)
    five = pd.concat([one.assign(repeat=r) for r in range(5)], ignore_index=True)
    a = patient_bootstrap_ci(one, "auc", n_boot=300, seed=3)
    b = patient_bootstrap_ci(five, "auc", n_boot=300, seed=3)
    assert (a.estimate, a.low, a.high) == pytest.approx((b.estimate, b.low, b.high), abs=1e-12)


def test_repeats_of_the_same_patients_do_not_shrink_the_interval_like_a_t_interval_over_repeats(rng):
    preds = _binary_predictions(rng, n_patients=60, n_repeats=5, signal=0.8)
    one = patient_bootstrap_ci(preds[preds.repeat == 0], "auc", n_boot=400)
    five = patient_bootstrap_ci(preds, "auc", n_boot=400)
    folds = preds.groupby(["repeat", "outer_fold"])
    values = np.array([auc(f.target, f.score) for _, f in folds])
    reps = np.array([r for (r, _), _ in folds])
    _, _, low, high = repeated_cv_ci(values, reps)
    # more repeats compare more pairs of the same patients: some narrowing is real, a
    # collapse is not (the old interval over repeat means)
    assert five.high - five.low > 0.5 * (one.high - one.low)
    assert five.high - five.low > 2.0 * (high - low)


def test_c_index_interval_on_survival_predictions_is_bounded(rng):
    n = 50
    risk = rng.normal(size=n)
    preds = pd.DataFrame({"patient_id": np.arange(n).astype(str), "repeat": 0, "outer_fold": np.arange(n) % 5,
                          "time": np.round(rng.exponential(np.exp(-risk))), "event": rng.integers(0, 2, n),
                          "score": risk})
    ci = patient_bootstrap_ci(preds, "c_index", n_boot=300)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0


def test_bad_settings_raise_config_errors_naming_the_value(rng):
    preds = _binary_predictions(rng, n_patients=20)
    with pytest.raises(ConfigError, match="n_boot=10"):
        patient_bootstrap_ci(preds, "auc", n_boot=10)
    with pytest.raises(ConfigError, match="level=1.5"):
        patient_bootstrap_ci(preds, "auc", level=1.5)
    with pytest.raises(ConfigError, match="'accuracy'"):
        patient_bootstrap_ci(preds, "accuracy")
    with pytest.raises(ConfigError, match="n_train"):
        holdout_ratio(np.array([0, 4]), np.array([1, 1]))


def test_corrected_variance_and_t_test_follow_nadeau_bengio():
    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.00, 0.02, 0.04, 0.01])
    ratio = 12 / 48
    var = (1 / 10 + ratio) * d.var(ddof=1)
    assert corrected_variance(d, ratio) == pytest.approx(var)
    t, p = corrected_ttest(d, ratio)
    assert t == pytest.approx(d.mean() / np.sqrt(var))
    assert p == pytest.approx(2 * student_t.sf(abs(t), 9))
    naive_t = d.mean() / (d.std(ddof=1) / np.sqrt(10))
    assert abs(t) < abs(naive_t)  # the correction widens
    assert corrected_ttest(np.zeros(5), ratio) == (0.0, 1.0)


def test_corrected_t_interval_is_clipped_to_the_bounds_given():
    ci = corrected_t_interval(np.array([0.99, 0.6, 1.0, 0.7, 0.95]), 0.25, bounds=(0.0, 1.0))
    assert ci.high == 1.0 and ci.low < ci.estimate
    assert np.isnan(corrected_t_interval(np.array([0.8]), 0.25).low)


def test_holm_adjustment_matches_the_step_down_by_hand():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08->0.09, 0.5*1=0.5
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])
    assert holm(np.array([0.9, 0.8]))[0] == 1.0
