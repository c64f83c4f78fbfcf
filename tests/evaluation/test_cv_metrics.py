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


# --- reference multiclass AUC, std_ref ----------------------------------------------------
def _reference_mean_one_vs_all_auc(labels, logits):
    """rl_benchmarks.metrics.compute_mean_one_vs_all_auc, transcribed."""
    aucs = []
    for i in np.unique(labels):
        try:
            aucs.append(roc_auc_score(np.array(labels == i, int), logits[:, int(i)]))
        except ValueError:
            aucs.append(np.nan)
    return np.mean(aucs)


@pytest.mark.parametrize("seed", range(5))
def test_macro_auc_over_present_classes_equals_the_reference_on_logits(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 2, 3], 60)  # class 1 absent from this fold
    logits = rng.normal(size=(60, 4)).round(1)
    assert macro_ovr_auc(y, logits, classes="present") == pytest.approx(
        _reference_mean_one_vs_all_auc(y, logits), abs=1e-12)
    with pytest.warns(MetricWarning):
        assert np.isnan(macro_ovr_auc(y, logits))  # sklearn style refuses the absent class


def test_macro_auc_rejects_an_unknown_class_rule():
    from wsi_mil.errors import ConfigError

    with pytest.raises(ConfigError, match="'some'"):
        macro_ovr_auc([0, 1], np.eye(2), classes="some")


def test_std_ref_is_the_population_sd_of_the_finite_values():
    from wsi_mil.evaluation.metrics import std_ref

    v = np.array([0.6, 0.7, np.nan, 0.9, 0.8, 0.75])
    assert std_ref(v) == pytest.approx(np.std([0.6, 0.7, 0.9, 0.8, 0.75]))
    assert std_ref(v) * np.sqrt(5 / 4) == pytest.approx(np.nanstd(v, ddof=1))


# --- survival beyond Harrell: scikit-survival and naive versions, ties and censoring -------
def _survival(rng, n, censor_scale=8.0):
    risk = rng.normal(size=n)
    t = np.ceil(rng.exponential(5 * np.exp(-risk)))  # integer times: many ties
    c = np.ceil(rng.exponential(censor_scale, n))
    return np.minimum(t, c), (t <= c).astype(int), risk + 0.5 * rng.normal(size=n)


def _censoring_survival(train_time, train_event, x):
    """Kaplan-Meier of the censoring times, events before censorings at tied times."""
    s = 1.0
    for u in np.unique(train_time):
        if u > x:
            break
        c = ((train_time == u) & (train_event == 0)).sum()
        at_risk = (train_time >= u).sum() - ((train_time == u) & (train_event == 1)).sum()
        if c:
            s *= 1 - c / at_risk
    return s


@pytest.mark.parametrize("seed", range(3))
def test_uno_c_index_equals_scikit_survival_and_a_naive_ipcw_count(seed):
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    from wsi_mil.evaluation.metrics import uno_c_index

    rng = np.random.default_rng(seed)
    tt, te, _ = _survival(rng, 150)
    t, e, r = _survival(rng, 60)
    tau = float(np.quantile(t[e == 1], 0.8))
    num = den = 0.0
    for i in range(t.size):
        if not e[i] or t[i] >= tau:
            continue
        w = _censoring_survival(tt, te, t[i]) ** -2
        for j in range(t.size):
            if t[i] < t[j] or (t[i] == t[j] and not e[j]):
                den += w
                num += w * (1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0)
    ours = uno_c_index(tt, te, t, e, r, tau=tau)
    assert ours == pytest.approx(num / den, abs=1e-12)
    lib = concordance_index_ipcw(Surv.from_arrays(te.astype(bool), tt), Surv.from_arrays(e.astype(bool), t), r, tau)
    assert ours == lib[0]


def test_uno_c_index_without_comparable_pairs_is_nan_with_a_warning():
    from wsi_mil.evaluation.metrics import uno_c_index

    with pytest.warns(MetricWarning, match="Uno"):
        assert np.isnan(uno_c_index([1.0, 2.0, 3.0], [1, 0, 1], [1.0, 2.0], [0, 0], [0.1, 0.2]))


@pytest.mark.parametrize("seed", range(3))
def test_time_dependent_auc_equals_a_naive_cumulative_dynamic_count(seed):
    from wsi_mil.evaluation.metrics import time_dependent_auc

    rng = np.random.default_rng(seed)
    tt, te, _ = _survival(rng, 150)
    t, e, r = _survival(rng, 60)
    times = np.quantile(t[e == 1], [0.25, 0.5, 0.75])
    aucs, mean = time_dependent_auc(tt, te, t, e, r, times)
    for k, s in enumerate(times):
        cases = np.flatnonzero((t <= s) & (e == 1))
        controls = np.flatnonzero(t > s)
        w = np.array([1 / _censoring_survival(tt, te, t[i]) for i in cases])
        conc = (r[cases][:, None] > r[controls][None, :]) + 0.5 * (r[cases][:, None] == r[controls][None, :])
        assert aucs[k] == pytest.approx((w @ conc).sum() / (w.sum() * controls.size), abs=1e-12)
    assert aucs.min() <= mean <= aucs.max()


@pytest.mark.parametrize("seed", range(3))
def test_breslow_survival_and_integrated_brier_score_equal_naive_versions_with_ties(seed):
    from wsi_mil.evaluation.metrics import breslow_survival, integrated_brier_score

    rng = np.random.default_rng(seed)
    tt, te, tr = _survival(rng, 150)
    t, e, r = _survival(rng, 60)
    times = np.linspace(np.quantile(t, 0.1), np.quantile(t, 0.7), 8)
    # Breslow: H0(s) = sum over event times u <= s of d_u / sum_{t_j >= u} exp(r_j)
    h0 = np.array([sum(((tt == u) & (te == 1)).sum() / np.exp(tr[tt >= u]).sum()
                       for u in np.unique(tt[te == 1]) if u <= s) for s in times])
    surv = np.exp(-h0)[None, :] ** np.exp(r)[:, None]
    np.testing.assert_allclose(breslow_survival(tr, tt, te, r, times), surv, rtol=1e-10)
    brier = []
    for k, s in enumerate(times):
        died = (t <= s) & (e == 1)
        g_i = np.array([_censoring_survival(tt, te, x) for x in t])
        g_s = _censoring_survival(tt, te, s)
        brier.append(np.mean(np.where(died, surv[:, k] ** 2 / np.where(died, g_i, 1.0), 0.0)
                             + np.where(t > s, (1 - surv[:, k]) ** 2 / g_s, 0.0)))
    expected = np.trapezoid(brier, times) / (times[-1] - times[0])
    assert integrated_brier_score(tt, te, tr, t, e, r, times) == pytest.approx(expected, rel=1e-10)


def test_integrated_brier_score_needs_two_time_points():
    from wsi_mil.evaluation.metrics import integrated_brier_score

    with pytest.warns(MetricWarning, match=">= 2 time points"):
        assert np.isnan(integrated_brier_score([1, 2], [1, 1], [0, 0], [1, 2], [1, 0], [0, 0], [1.5]))
