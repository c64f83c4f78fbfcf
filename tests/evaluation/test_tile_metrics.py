"""Tile-level classification metrics: macro averages as scikit-learn, grouped bootstrap."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from wsi_mil.evaluation.tile_metrics import classification_metrics, macro_metric


def test_macro_f1_precision_recall_are_over_the_classes_present_as_sklearn():
    y = np.array([0, 0, 1, 1])
    scores = np.eye(3)[y]  # perfect on classes 0 and 1; class 2 absent from truth and predictions
    table = classification_metrics(y, scores, n_bootstrap=0)
    assert macro_metric(table, "f1") == 1.0  # scikit-learn's value
    old = classification_metrics(y, scores, n_bootstrap=0, macro_over="all")
    assert macro_metric(old, "f1") == pytest.approx(2 / 3)  # the old convention, on request


@pytest.mark.parametrize("seed", range(5))
def test_macro_metrics_equal_sklearn_on_random_predictions_with_absent_classes(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 3], size=40)  # class 2 and 4 absent from the truth
    scores = rng.random((40, 5))
    scores[:, 4] = -1  # class 4 never predicted either
    pred = scores.argmax(1)
    table = classification_metrics(y, scores, n_bootstrap=0)
    for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        assert macro_metric(table, name) == pytest.approx(
            fn(y, pred, average="macro", zero_division=0)), name


def test_grouped_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(8), 25)
    y = np.repeat(rng.integers(0, 2, 8), 25)
    good = np.repeat(rng.random(8) < 0.5, 25)  # a patient's tiles are all right or all wrong
    scores = np.where(good[:, None], np.eye(2)[y], np.eye(2)[1 - y])
    tiles = classification_metrics(y, scores, n_bootstrap=300)
    grouped = classification_metrics(y, scores, n_bootstrap=300, groups=patients)
    width = lambda t: float(np.diff(t.query("`class` == 'macro' and metric == 'accuracy'")[  # noqa: E731
        ["ci_low", "ci_high"]].to_numpy()[0])[0])
    assert width(grouped) > 2 * width(tiles)  # correlated tiles: the honest interval is wider
