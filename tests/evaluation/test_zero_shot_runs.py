"""Slide zero-shot on files: streamed one slide at a time, same scores, guarded provenance."""
from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import pytest

from wsi_mil.evaluation import zero_shot_runs
from wsi_mil.evaluation.provenance import ProvenanceMismatchError
from wsi_mil.evaluation.text_side import ClassText
from wsi_mil.evaluation.zero_shot import cosine_logits, mizero_slide_scores
from wsi_mil.io import feature_sources
from wsi_mil.io.features import FeatureProvenance, write_features
from wsi_mil.io.scores import read_tile_scores
from wsi_mil.testing.synthetic_tiles import make_controlled_embeddings

MODEL = FeatureProvenance("clip_x", "a" * 64)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    fx = make_controlled_embeddings()
    root = tmp_path_factory.mktemp("zs")
    attrs = {"wsi_mil_version": "t", "encoder": MODEL.encoder, "weights_sha256": MODEL.weights_sha256}
    rows = []
    for sid, feats in fx.slides.items():
        coords = np.zeros((len(feats), 3), np.int64)
        write_features(root / "features" / f"{sid}.h5", feats, coords, coords[:, :2], attrs)
        rows.append({"slide_id": sid, "patient_id": sid,
                     "label": fx.class_names[fx.slide_labels[sid]]})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    return fx, root


def test_streamed_slide_scores_equal_the_in_memory_scores(cohort, tmp_path, monkeypatch):
    fx, root = cohort
    held = []
    real = feature_sources.read_slide_features

    def tracking(*args, **kw):  # at most the previous slide's array may still be alive
        assert sum(ref() is not None for ref in held) <= 1
        arr = real(*args, **kw)
        held.append(weakref.ref(arr))
        return arr

    monkeypatch.setattr(feature_sources, "read_slide_features", tracking)
    text = ClassText(prototypes=fx.expected_prototypes, provenance=MODEL)
    metrics = zero_shot_runs.run_zero_shot_slides(root / "features", root / "cohort.csv", text,
                                                  tmp_path, top_ks=(1, 3, "all"), n_bootstrap=0)
    assert len(held) == len(fx.slides)
    got = pd.read_csv(tmp_path / "zero_shot_slide_scores.csv", dtype={"top_k": str})
    names = sorted(fx.class_names)  # the cohort's classes are sorted labels = class order here
    assert names == fx.class_names
    expected = mizero_slide_scores(fx.slides, fx.expected_prototypes, (1, 3, "all"))
    merged = got.merge(expected, on=["slide_id", "top_k"], suffixes=("", "_ref"))
    assert len(merged) == len(expected)
    np.testing.assert_allclose(merged["score_1"], merged["score_1_ref"], atol=1e-6)
    assert (merged["pred"] == merged["pred_ref"]).all()
    classes, tiles = read_tile_scores(tmp_path / "zero_shot_tile_scores.h5")
    assert classes == fx.class_names and set(tiles) == set(fx.slides)
    sid = fx.focal_slides[0]
    np.testing.assert_allclose(tiles[sid], cosine_logits(fx.slides[sid], fx.expected_prototypes),
                               atol=1e-6)
    macro = metrics[(metrics["class"] == "macro") & (metrics["metric"] == "balanced_accuracy")]
    assert macro.set_index("top_k").loc["1", "value"] == 1.0


def test_slide_features_of_another_model_are_refused(cohort, tmp_path):
    fx, root = cohort
    text = ClassText(prototypes=fx.expected_prototypes, provenance=FeatureProvenance("plip", "p" * 64))
    with pytest.raises(ProvenanceMismatchError, match="clip_x"):
        zero_shot_runs.run_zero_shot_slides(root / "features", root / "cohort.csv", text, tmp_path,
                                            n_bootstrap=0)
    zero_shot_runs.run_zero_shot_slides(root / "features", root / "cohort.csv", text, tmp_path,
                                        top_ks=(1,), n_bootstrap=0, allow_mixed_models=True)
