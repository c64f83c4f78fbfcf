import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from report_run_builders import make_survival_run

from wsi_mil.errors import FileFormatError
from wsi_mil.reports.runs import RunData, read_run
from wsi_mil.reports.survival import (
    HIGH,
    LOW,
    logrank,
    make_kaplan_meier_figure,
    risk_groups,
)


def _hand_run(tmp_path) -> RunData:
    """Fold 0: test scores 1..6 with training median 4.5; fold 1: 0.1..0.6, median 0.0.

    A test-fold median would split each fold 3/3 (6 high); the training medians give
    2 + 6 = 8 high-risk slides.
    """
    scores = [1, 2, 3, 4, 5, 6, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    preds = pd.DataFrame({
        "slide_id": [f"s{i}" for i in range(12)], "patient_id": [f"p{i}" for i in range(12)],
        "repeat": 0, "outer_fold": [0] * 6 + [1] * 6,
        "time": [9, 8, 7, 6, 2, 1, 1.5, 3, 2.5, 4, 5, 12], "event": [1, 0, 1, 1, 1, 1] * 2,
        "score": scores,
    })
    folds = pd.DataFrame({"repeat": [0, 0], "outer_fold": [0, 1], "c_index": [0.7, 0.6],
                          "train_risk_median": [4.5, 0.0], "n_train": [6, 6], "n_test": [6, 6]})
    return RunData(tmp_path, preds, folds, {"model": "abmil"})


def test_cutoff_is_the_training_risk_median_not_the_test_median(tmp_path):
    run = _hand_run(tmp_path)
    groups = risk_groups(run.predictions, run.folds)
    high = set(groups.loc[groups["group"] == HIGH, "slide_id"])
    assert high == {"s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11"}
    assert (groups["group"] == LOW).sum() == 4
    test_median_split = sum(
        (p["score"] > p["score"].median()).sum() for _, p in run.predictions.groupby("outer_fold"))
    assert test_median_split == 6 != len(high)


def test_logrank_p_value_is_lifelines_logrank_test(tmp_path):
    run = _hand_run(tmp_path)
    groups = risk_groups(run.predictions, run.folds)
    hi, lo = groups[groups["group"] == HIGH], groups[groups["group"] == LOW]
    direct = logrank_test(hi["time"], lo["time"], event_observed_A=hi["event"],
                          event_observed_B=lo["event"])
    stat, p_value = logrank(groups)
    assert p_value == pytest.approx(direct.p_value, rel=1e-12)
    assert stat == pytest.approx(direct.test_statistic, rel=1e-12)
    path, result = make_kaplan_meier_figure(run, tmp_path / "km.png")
    assert (result.n_high, result.n_low) == (8, 4)
    assert result.p_value == pytest.approx(direct.p_value, rel=1e-12)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kaplan_meier_uses_one_repeat_so_patients_are_counted_once(tmp_path, rng):
    run = read_run(make_survival_run(tmp_path / "os", rng))
    first = risk_groups(run.predictions, run.folds)
    second = risk_groups(run.predictions, run.folds, repeat=1)
    assert first["slide_id"].is_unique and len(first) == run.predictions["slide_id"].nunique()
    assert set(first["repeat"]) == {0} and set(second["repeat"]) == {1}
    cut = run.folds.set_index(["repeat", "outer_fold"])["train_risk_median"]
    expected = [s > cut[(0, k)] for s, k in zip(first["score"], first["outer_fold"], strict=True)]
    np.testing.assert_array_equal(first["group"] == HIGH, expected)


def test_missing_training_median_is_an_error_never_a_test_fold_fallback(tmp_path):
    run = _hand_run(tmp_path)
    with pytest.raises(FileFormatError, match="train_risk_median"):
        risk_groups(run.predictions, run.folds.drop(columns="train_risk_median"))
    with pytest.raises(FileFormatError, match="outer folds \\[1\\]"):
        risk_groups(run.predictions, run.folds.iloc[:1])
