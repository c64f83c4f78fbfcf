"""Metrics against sklearn / lifelines / naive O(n^2) versions, with ties and edge cases."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from wsi_mil.evaluation.metrics import (
    MetricWarning,
    accuracy,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    c_index,
    macro_ovr_auc,
    mean_ci,
)


def naive_c_index(time, risk, event):
    num = den = 0.0
    for i in range(len(time)):
        if not event[i]:
            continue
        for j in range(len(time)):
            if i != j and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


@pytest.mark.parametrize("seed", range(10))
def test_auc_equals_sklearn_with_tied_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = rng.integers(0, 7, 200) / 7.0  # many ties
    assert abs(auc(y, score) - roc_auc_score(y, score)) < 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_macro_ovr_auc_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 150)
    proba = rng.dirichlet(np.ones(4), 150).round(2)
    proba /= proba.sum(1, keepdims=True)
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert abs(macro_ovr_auc(y, proba) - expected) < 1e-12


def test_accuracy_and_balanced_accuracy_equal_sklearn(rng):
    y, p = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_c_index_equals_lifelines_and_naive_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    time = rng.integers(1, 12, n).astype(float)  # tied times
    event = rng.integers(0, 2, n)
    event[0] = 1
    risk = rng.integers(0, 5, n).astype(float)  # tied risks
    ours = c_index(time, risk, event)
    assert abs(ours - concordance_index(time, -risk, event)) < 1e-12
    assert abs(ours - naive_c_index(time, risk, event)) < 1e-12


def test_c_index_higher_risk_means_shorter_survival():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4)
    assert c_index(time, -time, event) == 1.0
    assert c_index(time, time, event) == 0.0


def test_undefined_metrics_give_nan_and_a_warning():
    with pytest.warns(MetricWarning):
        assert np.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.warns(MetricWarning):
        assert np.isnan(c_index([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0, 0, 0]))
    with pytest.warns(MetricWarning):
        assert np.isnan(macro_ovr_auc([0, 0, 1], np.full((3, 3), 1 / 3)))


def test_mean_ci_and_bootstrap_ci_bracket_the_estimate(rng):
    mean, sd, low, high = mean_ci([0.7, 0.8, 0.75, 0.9, 0.85])
    assert low < mean < high and sd > 0
    y = rng.integers(0, 2, 80)
    score = y + rng.normal(size=80)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est, lo, hi = bootstrap_ci(auc, y, score, n_boot=200, seed=0)
    assert lo <= est <= hi


def test_repeated_cv_interval_is_taken_over_repeat_means():
    from scipy.stats import t as student_t

    from wsi_mil.evaluation.metrics import mean_ci, repeated_cv_ci

    values = np.array([0.70, 0.80, 0.90, 0.72, 0.82, 0.92, 0.60, 0.75, 0.95])
    repeats = np.repeat([0, 1, 2], 3)
    mean, sd, low, high = repeated_cv_ci(values, repeats)
    assert mean == pytest.approx(values.mean()) and sd == pytest.approx(values.std(ddof=1))
    means = np.array([0.80, 0.82, 0.7666666666666667])
    half = student_t.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3)
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert repeated_cv_ci(values[:3], repeats[:3]) == pytest.approx(mean_ci(values[:3]))
