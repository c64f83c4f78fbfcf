"""Tile-level classification metrics and the linear probe protocols."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.linear_probe import (
    LogRegCVClassifier,
    SGDEnsembleClassifier,
    make_probe,
    run_linear_probe,
    stratified_subsample,
)
from wsi_mil.evaluation.tables import write_table
from wsi_mil.evaluation.tile_metrics import binary_auc, classification_metrics, macro_metric
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles


def naive_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """O(n^2): P(score_pos > score_neg) + 1/2 P(tie)."""
    p, n = score[pos], score[~pos]
    total = sum((a > b) + 0.5 * (a == b) for a in p for b in n)
    return total / (len(p) * len(n))


def test_binary_auc_equals_naive_pairwise_count_with_ties(rng):
    for _ in range(5):
        y = rng.integers(0, 2, size=40).astype(bool)
        s = rng.integers(0, 6, size=40).astype(float)  # many ties
        assert binary_auc(y, s) == pytest.approx(naive_auc(y, s))
        assert binary_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert np.isnan(binary_auc(np.ones(5, bool), np.arange(5.0)))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_equal_sklearn_on_random_data(rng, n_classes):
    y = rng.integers(0, n_classes, size=120)
    scores = rng.dirichlet(np.ones(n_classes), size=120)
    scores[10:30] = scores[:20]  # tied scores
    pred = scores.argmax(1)
    table = classification_metrics(y, scores, n_bootstrap=0)
    labels = list(range(n_classes))
    if n_classes == 2:
        macro_auc = skm.roc_auc_score(y, scores[:, 1])
    else:
        macro_auc = skm.roc_auc_score(y, scores, multi_class="ovr", average="macro")
    expected_macro = {
        "auc": macro_auc,
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "f1": skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "precision": skm.precision_score(y, pred, labels=labels, average="macro", zero_division=0),
        "recall": skm.recall_score(y, pred, labels=labels, average="macro", zero_division=0),
    }
    for metric, value in expected_macro.items():
        assert macro_metric(table, metric) == pytest.approx(value), metric
    for c in range(n_classes):
        yc, pc = y == c, pred == c
        expected = {
            "auc": skm.roc_auc_score(yc, scores[:, c]),
            "accuracy": skm.accuracy_score(yc, pc),
            "balanced_accuracy": skm.balanced_accuracy_score(yc, pc),
            "f1": skm.f1_score(yc, pc, zero_division=0),
            "precision": skm.precision_score(yc, pc, zero_division=0),
            "recall": skm.recall_score(yc, pc, zero_division=0),
        }
        got = table[table["class"] == str(c)].set_index("metric")["value"]
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value), (c, metric)


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded(rng):
    y = rng.integers(0, 3, size=150)
    scores = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y]
    a = classification_metrics(y, scores, ["a", "b", "c"], n_bootstrap=200, seed=3)
    b = classification_metrics(y, scores, ["a", "b", "c"], n_bootstrap=200, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["class"]) == {"a", "b", "c", "macro"}
    assert (a["ci_low"] <= a["value"] + 1e-9).all() and (a["value"] <= a["ci_high"] + 1e-9).all()


def test_basic_interval_reflects_the_percentile_interval(rng):
    y = rng.integers(0, 2, size=80)
    scores = rng.normal(size=(80, 2)) + np.eye(2)[y]
    pct = classification_metrics(y, scores, n_bootstrap=100, seed=1)
    basic = classification_metrics(y, scores, n_bootstrap=100, seed=1, ci_method="basic")
    np.testing.assert_allclose(basic["ci_low"], 2 * pct["value"] - pct["ci_high"])
    np.testing.assert_allclose(basic["ci_high"], 2 * pct["value"] - pct["ci_low"])


def test_bad_metric_inputs_raise_config_errors(rng):
    with pytest.raises(ConfigError, match="labels must lie"):
        classification_metrics(np.array([0, 3]), np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="ci_method"):
        classification_metrics(np.array([0, 1]), np.eye(2), ci_method="bca")


def test_stratified_subsample_keeps_every_class_and_is_seeded():
    labels = np.repeat([0, 1, 2], [500, 100, 10])
    idx = stratified_subsample(labels, 0.01, seed=4)
    assert np.array_equal(idx, stratified_subsample(labels, 0.01, seed=4))
    assert not np.array_equal(idx, stratified_subsample(labels, 0.01, seed=5))
    assert np.bincount(labels[idx]).tolist() == [5, 1, 1]
    assert stratified_subsample(labels, 1.0, seed=0).size == labels.size
    with pytest.raises(ConfigError, match="portion"):
        stratified_subsample(labels, 0.0, seed=0)


@pytest.fixture(scope="module")
def planted():
    return make_synthetic_tiles(n_per_class=80, n_classes=3, dim=32, signal=2.0, seed=1)


@pytest.mark.parametrize("protocol", ["reference", "logreg_cv"])
def test_linear_probe_beats_chance_on_planted_signal(planted, protocol):
    (trx, try_), (tex, tey) = planted.part("train"), planted.part("test")
    table = run_linear_probe(trx, try_, tex, tey, protocol=protocol, portions=(0.1, 1.0),
                             class_names=planted.class_names, n_bootstrap=50,
                             probe_kwargs={"cv": 3} if protocol == "logreg_cv" else None)
    assert set(table.columns) >= {"protocol", "portion", "seed", "n_train", "class", "metric",
                                  "value", "ci_low", "ci_high"}
    full = table[(table.portion == 1.0) & (table["class"] == "macro")].set_index("metric")
    assert full.loc["auc", "value"] > 0.85  # chance = 0.5
    assert full.loc["balanced_accuracy", "value"] > 0.6  # chance = 1/3
    assert table[table.portion == 0.1]["n_train"].iloc[0] == 12


def test_reference_ensemble_averages_thirty_seeded_members(planted):
    x, y = planted.part("train")
    probe = make_probe("reference", n_classes=3, seed=2).fit(x, y)
    assert isinstance(probe, SGDEnsembleClassifier) and len(probe.members_) == 30
    assert [m.random_state for m in probe.members_] == list(range(2, 32))
    proba = probe.predict_proba(x[:5])
    expected = np.mean([m.predict_proba(probe.scaler_.transform(x[:5])) for m in probe.members_], 0)
    np.testing.assert_allclose(proba, expected)


def test_probe_returns_every_class_column_when_train_lacks_a_class(planted):
    x, y = planted.part("train")
    keep = y != 1
    for probe in (LogRegCVClassifier(n_classes=3), SGDEnsembleClassifier(n_members=2, n_classes=3)):
        proba = probe.fit(x[keep], y[keep]).predict_proba(x)
        assert proba.shape == (len(x), 3)
        assert np.all(proba[:, 1] == 0) and np.allclose(proba.sum(1), 1)


def test_logreg_cv_falls_back_to_fixed_c_with_one_shot(planted):
    x, y = planted.part("train")
    idx = [np.flatnonzero(y == c)[0] for c in range(3)]
    probe = LogRegCVClassifier(n_classes=3).fit(x[idx], y[idx])
    assert probe.C_ == 1.0
    assert make_probe("logreg_cv", 3).fit(x, y).C_ > 0


def test_unknown_protocol_raises_config_error():
    with pytest.raises(ConfigError, match="valid"):
        make_probe("svm", n_classes=2)


def test_write_table_writes_csv_and_markdown(tmp_path):
    df = pd.DataFrame({"metric": ["auc", "f1|x"], "value": [0.91234, float("nan")]})
    csv, md = write_table(df, tmp_path / "out" / "linear_probe")
    assert csv.name == "linear_probe.csv" and md.name == "linear_probe.md"
    pd.testing.assert_frame_equal(pd.read_csv(csv), df)
    text = md.read_text()
    assert text.splitlines()[0] == "| metric | value |" and "0.912" in text and "f1\\|x" in text
    assert text.count("\n") == 4
