"""protocol=reference: the reference's settings where they are not bugs, each change reported."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsi_mil.cv.engine import run_cv
from wsi_mil.cv.settings import CVSettings, apply_protocol
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import read_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.errors import ConfigError
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort
from wsi_mil.training.fit import outputs_to_scores


def test_default_protocol_changes_nothing():
    s = CVSettings("classification", "abmil")
    assert apply_protocol(s) == (s, [])


def test_reference_protocol_fixes_tiles_dtype_auc_and_head_specific_rules():
    s, changed = apply_protocol(CVSettings("classification", "hipt_mil", protocol="reference", encoder="resnet50",
                                           feature_dtype="float16", epochs=50))
    assert (s.tile_sampling, s.n_tiles, s.feature_dtype, s.auc_classes) == ("fixed", 1000, "float32", "present")
    assert s.multiclass_scores == "logits" and s.standardize is False
    assert s.batch_size == 1 and s.epochs == 100
    assert any(c.startswith("batch_size=1") for c in changed) and any("epochs=100" in c for c in changed)
    t, _ = apply_protocol(CVSettings("classification", "transmil", hparams={"proj_dim": 64}, protocol="reference"))
    assert t.model == "transmil_ref" and t.hparams == {} and t.batch_size == 16 and t.epochs == 50


def test_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="reference"):
        CVSettings("classification", "abmil", protocol="paper")


def test_logit_scores_rank_classes_differently_from_probabilities():
    """Why the preset matters: one-vs-rest AUC on logits is not the AUC on softmax probabilities."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.5, 3.0, 3.0], [0.0, 1.0, -1.0]])
    y = np.array([0, 1, 2])
    raw, prob = outputs_to_scores(logits, "classification", "logits"), outputs_to_scores(logits, "classification")
    np.testing.assert_array_equal(raw, logits.numpy())
    assert roc_auc_score(y == 0, raw[:, 0]) != roc_auc_score(y == 0, prob[:, 0])


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_reference_multiclass_auc_is_one_vs_rest_on_logits_over_present_classes(tmp_path, engine):
    syn = write_synthetic_cohort(tmp_path, n_patients=18, dim=8, n_tiles=(5, 20), n_classes=3, seed=2)
    cohort = read_cohort(syn.cohort_csv, "classification")
    store = BagStore.from_dir(syn.features_dir, cohort.slide_ids)
    settings, _ = apply_protocol(CVSettings("classification", "abmil", protocol="reference", epochs=2,
                                            batch_size=4, grid={"lr": [1e-3], "weight_decay": [1e-4]},
                                            engine=engine))
    result = run_cv(cohort, store, make_fold_plan(cohort, 3, 2, 1, seed=0), settings, tmp_path / engine)
    preds = result.predictions
    cols = ["score_0", "score_1", "score_2"]
    assert not np.allclose(preds[cols].sum(1), 1.0)  # logits, not probabilities
    for k, part in preds.groupby("outer_fold"):
        y = part.target.to_numpy()
        want = np.mean([roc_auc_score(y == c, part[f"score_{c}"]) for c in np.unique(y)])
        got = result.folds.set_index("outer_fold").loc[k, "macro_auc"]
        assert got == pytest.approx(want, abs=1e-12)
    assert result.summary["multiclass_scores"] == "logits"
