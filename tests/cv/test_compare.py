"""Paired comparisons of runs on one fold plan: corrected t, paired bootstrap, DeLong, Holm."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_mil.cv.compare import compare_runs, delong_diff, plot_comparison, read_run
from wsi_mil.cv.outputs import aggregate, fold_path
from wsi_mil.cv.settings import CVSettings
from wsi_mil.data.cohort import make_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.errors import ConfigError, FileFormatError, FoldPlanMismatchError
from wsi_mil.evaluation.metrics import auc, c_index
from wsi_mil.io.atomic import write_json_atomic


def _cohort(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n_patients)
    df = pd.DataFrame({"slide_id": [f"s{p}" for p in range(n_patients)],
                       "patient_id": [f"p{p}" for p in range(n_patients)],
                       "label": (signal + 0.5 * rng.normal(size=n_patients) > 0).astype(int)})
    return make_cohort(df, "classification", name="toy"), signal


def _run(root, cohort, plan, score_of, name):
    """A finished run directory whose test scores are ``score_of(test_indices)``."""
    run = root / name
    plan.save(run / "fold_plan.json")
    for r, folds in enumerate(plan.repeats):
        for k, fold in enumerate(folds):
            test = fold.test
            score = score_of(test)
            preds = {"slide_id": cohort.table.slide_id.iloc[test].tolist(),
                     "patient_id": cohort.table.patient_id.iloc[test].tolist(), "repeat": [r] * test.size,
                     "outer_fold": [k] * test.size, "target": cohort.y[test].tolist(), "score": score.tolist()}
            row = {"repeat": r, "outer_fold": k, "auc": auc(cohort.y[test], score), "lr": 1e-3,
                   "weight_decay": 0.0, "epochs": 3, "n_train": int(fold.train.size), "n_test": int(test.size)}
            write_json_atomic(fold_path(run, r, k), {"row": row, "predictions": preds, "settings": {}})
    aggregate(run, cohort, plan, CVSettings("classification", name, mode="kfold"), "auc", 0.0)
    return read_run(run, name)


@pytest.fixture
def toy(tmp_path):
    cohort, signal = _cohort()
    plan = make_fold_plan(cohort, 5, 0, 1, seed=0)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=len(signal))
    good = _run(tmp_path, cohort, plan, lambda i: signal[i] + 0.3 * noise[i], "good")
    weak = _run(tmp_path, cohort, plan, lambda i: rng.normal(size=i.size), "weak")
    same = _run(tmp_path, cohort, plan, lambda i: signal[i] + 0.3 * noise[i], "good_again")
    return cohort, good, weak, same


def test_a_clearly_better_run_is_ranked_first_and_every_test_rejects_equality(toy):
    _, good, weak, _ = toy
    comp = compare_runs([weak, good], n_boot=500)
    assert comp.runs.run.tolist() == ["good", "weak"]
    assert (comp.runs.ci_low <= comp.runs["mean"]).all() and (comp.runs["mean"] <= comp.runs.ci_high).all()
    pair = comp.pairs.iloc[0]
    assert (pair.run_a, pair.run_b) == ("good", "weak") and pair["diff"] > 0.2
    assert pair.diff_low > 0 and pair.p_bootstrap < 0.01 and pair.p_corrected_t < 0.05 and pair.p_delong < 0.01


def test_identical_runs_differ_by_zero_with_p_values_of_one(toy):
    _, good, _, same = toy
    pair = compare_runs([good, same], n_boot=200).pairs.iloc[0]
    assert pair["diff"] == 0.0 and (pair.diff_low, pair.diff_high) == (0.0, 0.0)
    assert pair.p_bootstrap == 1.0 and pair.p_corrected_t == 1.0 and pair.p_delong == 1.0


def test_holm_adjusted_p_values_are_never_below_the_raw_ones(toy):
    _, good, weak, same = toy
    pairs = compare_runs([good, weak, same], n_boot=200).pairs
    assert len(pairs) == 3
    for col in ("p_corrected_t", "p_bootstrap", "p_delong"):
        assert (pairs[f"{col}_holm"] >= pairs[col] - 1e-12).all()


def test_runs_on_different_fold_plans_are_refused_with_a_named_error(tmp_path, toy):
    cohort, good, _, _ = toy
    other_plan = make_fold_plan(cohort, 5, 0, 1, seed=7)
    other = _run(tmp_path / "other", cohort, other_plan, lambda i: np.zeros(i.size), "other")
    with pytest.raises(FoldPlanMismatchError, match="fold_plan.json"):
        compare_runs([good, other], n_boot=200)
    with pytest.raises(ConfigError, match=">= 2 runs"):
        compare_runs([good])
    with pytest.raises(FileFormatError, match="lacks"):
        read_run(tmp_path / "nothing_here")


def _naive_delong(y, a, b):
    y = np.asarray(y).astype(bool)

    def placements(s):
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = placements(a), placements(b)
    var = (np.var(a10 - b10, ddof=1) / y.sum()) + (np.var(a01 - b01, ddof=1) / (~y).sum())
    return a10.mean() - b10.mean(), var


@pytest.mark.parametrize("seed", range(4))
def test_delong_difference_and_variance_equal_the_naive_placement_formula_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    a = rng.integers(0, 6, 40) + y  # tied scores
    b = rng.integers(0, 4, 40).astype(float)
    diff, var = delong_diff(y, a, b)
    ndiff, nvar = _naive_delong(y, a, b)
    assert diff == pytest.approx(ndiff, abs=1e-12) and var == pytest.approx(nvar, rel=1e-10)
    assert diff == pytest.approx(auc(y, a) - auc(y, b), abs=1e-12)


def test_the_plot_is_a_png_with_the_runs_best_first(tmp_path, toy):
    _, good, weak, _ = toy
    path = plot_comparison(compare_runs([weak, good], n_boot=200), tmp_path / "cmp.png", title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_repeats_delong_is_not_applied_and_the_bootstrap_still_separates_the_runs(tmp_path):
    cohort, signal = _cohort(n_patients=50, seed=3)
    plan = make_fold_plan(cohort, 5, 0, 3, seed=0)
    rng = np.random.default_rng(4)
    good = _run(tmp_path, cohort, plan, lambda i: signal[i] + 0.3 * rng.normal(size=i.size), "good")
    weak = _run(tmp_path, cohort, plan, lambda i: rng.normal(size=i.size), "weak")
    pair = compare_runs([good, weak], n_boot=300).pairs.iloc[0]
    assert np.isnan(pair.p_delong) and np.isnan(pair.p_delong_holm)
    assert pair.n_folds == 15 and pair.diff_low > 0 and pair.p_bootstrap < 0.01


def test_delong_gives_no_p_value_when_every_fold_is_perfectly_separated(tmp_path):
    cohort, _ = _cohort(n_patients=30, seed=5)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=0)
    y = cohort.y.astype(float)
    perfect = _run(tmp_path, cohort, plan, lambda i: y[i], "perfect")
    inverted = _run(tmp_path, cohort, plan, lambda i: -y[i], "inverted")
    pair = compare_runs([perfect, inverted], n_boot=200).pairs.iloc[0]
    assert pair["diff"] == 1.0 and np.isnan(pair.p_delong)


def test_survival_and_multiclass_runs_are_compared_by_bootstrap_and_corrected_t_without_delong(tmp_path):
    rng = np.random.default_rng(6)
    n = 60
    risk = rng.normal(size=n)
    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                       "time": np.ceil(rng.exponential(10 * np.exp(-risk))), "event": rng.integers(0, 2, n)})
    cohort = make_cohort(df, "survival", name="toy")
    plan = make_fold_plan(cohort, 4, 0, 1, seed=0)
    runs = []
    for name, noise in (("sharp", 0.2), ("blurred", 3.0)):
        run = tmp_path / name
        plan.save(run / "fold_plan.json")
        for k, fold in enumerate(plan.repeats[0]):
            t = fold.test
            score = risk[t] + noise * rng.normal(size=t.size)
            preds = {"slide_id": df.slide_id[t].tolist(), "patient_id": df.patient_id[t].tolist(),
                     "repeat": [0] * t.size, "outer_fold": [k] * t.size, "time": cohort.time[t].tolist(),
                     "event": cohort.event[t].tolist(), "score": score.tolist()}
            row = {"repeat": 0, "outer_fold": k, "c_index": c_index(cohort.time[t], score, cohort.event[t]),
                   "n_train": int(fold.train.size), "n_test": int(t.size)}
            write_json_atomic(fold_path(run, 0, k), {"row": row, "predictions": preds, "settings": {}})
        aggregate(run, cohort, plan, CVSettings("survival", name, mode="kfold"), "c_index", 0.0)
        runs.append(read_run(run, name))
    comp = compare_runs(runs, n_boot=300)
    pair = comp.pairs.iloc[0]
    assert comp.metric == "c_index" and comp.runs.run.tolist() == ["sharp", "blurred"]
    assert np.isnan(pair.p_delong) and 0 <= pair.p_bootstrap <= 1 and 0 <= pair.p_corrected_t <= 1
    assert pair.diff_low <= pair["diff"] <= pair.diff_high
