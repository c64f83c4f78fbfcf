"""Results table: recorded run settings (with defaults), numeric ties, `results compare=<column>`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_compare import _cohort, _run

from wsi_mil.cli.main import main
from wsi_mil.cv.results import SETTING_DEFAULTS, _selected, collect_results, compare_results
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.errors import ConfigError, FoldPlanMismatchError


def _summary(run, **extra):
    run.mkdir(parents=True, exist_ok=True)
    s = {"task": "classification", "cohort": "toy", "encoder": "e", "model": "abmil", "metric": "auc",
         "mean": 0.7, "sd": 0.1, "ci95_low": 0.6, "ci95_high": 0.8, "n_folds": 4, **extra}
    (run / "summary.json").write_text(json.dumps(s))
    pd.DataFrame({"repeat": 0, "outer_fold": range(4), "auc": [0.6, 0.7, 0.7, 0.8],
                  "lr": [1e-05, 1e-4, 1e-05, 1e-4], "epochs": [10, 9, 10, 9]}).to_csv(run / "folds.csv", index=False)


def test_ties_of_the_selected_value_go_to_the_smallest_number_not_the_first_string():
    folds = pd.DataFrame({"lr": [1e-4, 1e-05, 1e-4, 1e-05], "epochs": [10, 9, 10, 9], "act": ["b", "a", "b", "a"]})
    assert _selected(folds, "lr").startswith("1e-05 ")  # as strings, "0.0001" < "1e-05"
    assert _selected(folds, "epochs").startswith("9 ")  # as strings, "10" < "9"
    assert _selected(folds, "act").startswith("a ")


def test_run_settings_come_from_the_summary_then_the_fold_files_then_the_old_defaults(tmp_path):
    _summary(tmp_path / "new", batch_size=1, tile_sampling="fixed", feature_dtype="float32", standardize=True,
             protocol="reference", std_ref=0.05)
    _summary(tmp_path / "fold_only")
    (tmp_path / "fold_only" / "folds").mkdir()
    (tmp_path / "fold_only" / "folds" / "r0_f0.json").write_text(json.dumps({"settings": {"batch_size": 4}}))
    _summary(tmp_path / "old")
    df = collect_results(tmp_path).set_index(df_index := "run_path")
    assert df_index == "run_path"
    new, fold_only, old = (df.loc[str(tmp_path / n)] for n in ("new", "fold_only", "old"))
    assert (new.batch_size, new.tile_sampling, new.feature_dtype, new.standardize, new.protocol) == (
        1, "fixed", "float32", True, "reference")
    assert new.std_ref == 0.05
    assert fold_only.batch_size == 4 and fold_only.tile_sampling == SETTING_DEFAULTS["tile_sampling"]
    assert {k: old[k] for k in SETTING_DEFAULTS} == SETTING_DEFAULTS
    assert old.std_ref == pytest.approx(np.std([0.6, 0.7, 0.7, 0.8]))  # ddof=0 from folds.csv


@pytest.fixture
def two_heads(tmp_path):
    cohort, signal = _cohort()
    plan = make_fold_plan(cohort, 5, 0, 1, seed=0)
    rng = np.random.default_rng(2)
    _run(tmp_path / "runs", cohort, plan, lambda i: signal[i] + 0.3 * rng.normal(size=i.size), "abmil")
    _run(tmp_path / "runs", cohort, plan, lambda i: rng.normal(size=i.size), "meanpool")
    return tmp_path / "runs", cohort


def test_results_compare_head_writes_tables_and_a_plot_with_the_better_head_first(two_heads, capsys):
    runs_dir, _ = two_heads
    assert main(["results", f"runs_dir={runs_dir}", "compare=head", "n_boot=300"]) == 0
    runs = pd.read_csv(runs_dir / "results_compare_head_runs.csv")
    pairs = pd.read_csv(runs_dir / "results_compare_head_pairs.csv")
    assert runs.run.tolist() == ["abmil", "meanpool"]
    assert pairs.loc[0, "run_a"] == "abmil" and pairs.loc[0, "p_bootstrap_holm"] < 0.05
    assert (runs_dir / "results_compare_head_0.png").read_bytes()[:4] == b"\x89PNG"
    assert (runs_dir / "results_compare_head_pairs.md").exists()
    assert "p_corrected_t" in capsys.readouterr().out


def test_compare_refuses_runs_of_one_group_made_on_different_fold_plans(two_heads):
    runs_dir, cohort = two_heads
    _run(runs_dir, cohort, make_fold_plan(cohort, 5, 0, 1, seed=3), lambda i: np.zeros(i.size), "chowder")
    with pytest.raises(FoldPlanMismatchError, match="different fold plans"):
        compare_results(collect_results(runs_dir), "head", n_boot=200)
    with pytest.raises(ConfigError, match="compare='lr'"):
        compare_results(collect_results(runs_dir), "lr")
