"""engine=batched gives engine=loop's answers: same selections, same test scores (1e-4)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from loguru import logger

from wsi_mil.cv import engine as cv_engine
from wsi_mil.cv.engine import CVSettings, run_cv
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import read_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.models import create_model
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort

FAST = {"batch_size": 6, "n_tiles": 24, "epochs": 4}
# weight decay > 0: with none, Adam turns the float-rounding noise of gradients that are zero in
# exact arithmetic (a Cox model's output bias, a softmax's shift, dead ReLU units) into steps of
# size lr, and the loop engine itself then differs by 1e-3 between 1 and 2 torch threads.
GRID = {"lr": [1e-3, 3e-4], "weight_decay": [1e-4, 1e-3]}
# survival: a strong planted risk, so that no two validation risks are tied to float rounding
# (a c-index of near-equal risks would depend on the last bit, in either engine)
TASKS = {"binary": ("classification", {}), "multiclass": ("classification", {"n_classes": 3}),
         "survival": ("survival", {"witness_fraction": (0.0, 0.5), "signal": 3.0})}


def _setup(root, task: str):
    kind, kw = TASKS[task]
    syn = write_synthetic_cohort(root, task=kind, n_patients=24, dim=12, n_tiles=(8, 40), seed=3, **kw)
    cohort = read_cohort(syn.cohort_csv, kind)
    return cohort, BagStore.from_dir(syn.features_dir, cohort.slide_ids)


def _run(root, cohort, store, engine: str, model: str, hparams: dict | None = None):
    plan = make_fold_plan(cohort, 3, 2, 1, seed=1)
    settings = CVSettings(cohort.task, model, hparams=hparams or {}, grid=GRID, engine=engine, **FAST)
    return run_cv(cohort, store, plan, settings, root / engine)


def _centered(preds: pd.DataFrame, folds: pd.DataFrame) -> np.ndarray:
    """Cox risks minus their fold's training median: a Cox model's risk is defined up to a constant."""
    med = folds.set_index("outer_fold").train_risk_median
    return (preds.score - preds.outer_fold.map(med)).to_numpy()


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("model", ["meanpool", "abmil", "chowder", "dsmil"])
def test_batched_engine_selects_and_scores_as_the_loop(tmp_path, model, task):
    cohort, store = _setup(tmp_path, task)
    loop = _run(tmp_path, cohort, store, "loop", model)
    batched = _run(tmp_path, cohort, store, "batched", model)
    cols = ["lr", "weight_decay", "epochs"]
    pd.testing.assert_frame_equal(batched.folds[cols], loop.folds[cols])
    np.testing.assert_allclose(batched.folds.inner_score, loop.folds.inner_score, atol=1e-6)
    score_cols = [c for c in loop.predictions if c.startswith("score")]
    assert score_cols
    if task == "survival":
        np.testing.assert_allclose(_centered(batched.predictions, batched.folds),
                                   _centered(loop.predictions, loop.folds), atol=1e-4)
    else:
        np.testing.assert_allclose(batched.predictions[score_cols], loop.predictions[score_cols], atol=1e-4)
    metric = loop.summary["metric"]
    np.testing.assert_allclose(batched.folds[metric], loop.folds[metric], atol=1e-6)


def test_batched_models_load_into_the_plain_head(tmp_path):
    cohort, store = _setup(tmp_path, "binary")
    result = _run(tmp_path, cohort, store, "batched", "abmil")
    saved = torch.load(result.run_dir / "models" / "r0_f0.pt", weights_only=True)
    head = create_model(saved["model"], saved["in_dim"], saved["n_outputs"], **saved["hparams"])
    head.load_state_dict(saved["state_dict"], strict=True)


@pytest.mark.parametrize("model", ["transmil", "hipt_mil"])
def test_heads_that_cannot_be_stacked_fall_back_to_the_loop_and_say_so(tmp_path, model):
    cohort, store = _setup(tmp_path, "binary")
    messages: list[str] = []
    logger.enable("wsi_mil")
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        plan = make_fold_plan(cohort, 2, 0, 1, seed=1)
        settings = CVSettings("classification", model, mode="kfold", engine="batched",
                              hparams={"dropout": 0.0} if model == "hipt_mil" else {},
                              batch_size=6, n_tiles=24, epochs=1)
        result = run_cv(cohort, store, plan, settings, tmp_path / "run")
    finally:
        logger.remove(sink)
        logger.disable("wsi_mil")
    assert any("falling back to engine=loop" in m and model in m for m in messages), messages
    assert result.summary["n_folds"] == 2


def test_a_rerun_reuses_checkpointed_inner_curves_and_trains_only_the_refits(tmp_path, monkeypatch):
    cohort, store = _setup(tmp_path, "binary")
    first = _run(tmp_path, cohort, store, "batched", "meanpool")
    inner = sorted(p.name for p in (first.run_dir / "inner").iterdir())
    assert inner == ["r0_f0.json", "r0_f1.json", "r0_f2.json"]
    for f in (first.run_dir / "folds").iterdir():  # as if killed after the inner fits
        f.unlink()
    calls = []
    real = cv_engine.fit_stacked

    def counting(store, targets, streams, *a, **kw):
        calls.append(all(st.val_idx is None for st in streams))
        return real(store, targets, streams, *a, **kw)

    monkeypatch.setattr(cv_engine, "fit_stacked", counting)
    second = _run(tmp_path, cohort, store, "batched", "meanpool")
    assert calls and all(calls)  # only refits ran
    pd.testing.assert_frame_equal(second.predictions, first.predictions)


def test_inner_checkpoints_of_other_settings_are_not_reused(tmp_path):
    cohort, store = _setup(tmp_path, "binary")
    first = _run(tmp_path, cohort, store, "batched", "meanpool")
    path = first.run_dir / "inner" / "r0_f0.json"
    d = json.loads(path.read_text())
    d["settings"]["epochs"] = 99
    path.write_text(json.dumps(d))
    assert cv_engine.cv_outputs.read_inner(first.run_dir, 0, 0, {"other": 1}) is None
