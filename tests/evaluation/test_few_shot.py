"""Few-shot sampling and the few-shot table (text-initialised head beside random init)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.few_shot import run_few_shot, sample_k_shot
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles

FAST_PROBE = {"cv": 2, "cs": (0.01, 1.0)}
FAST_HEAD = {"epochs": 20}


@pytest.fixture(scope="module")
def tiles():
    return make_synthetic_tiles(n_per_class=40, n_classes=3, dim=24, signal=2.0, text_noise=0.8, seed=2)


def split(tiles):
    train, test = tiles.split == "train", tiles.split == "test"
    return (tiles.features[train], tiles.labels[train], tiles.tile_ids[train],
            tiles.features[test], tiles.labels[test], tiles.tile_ids[test])


def test_k_shot_support_has_k_tiles_per_class_and_is_seeded():
    labels = np.repeat([0, 1, 2], [30, 12, 3])
    idx = sample_k_shot(labels, 4, seed=7)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 3]  # a class with < k gives all it has
    assert np.array_equal(idx, sample_k_shot(labels, 4, seed=7))
    assert not np.array_equal(idx, sample_k_shot(labels, 4, seed=8))
    assert set(sample_k_shot(labels, 2, seed=7)) <= set(idx)  # nested across k for one seed
    with pytest.raises(ConfigError, match="k must be"):
        sample_k_shot(labels, 0, seed=0)


def test_support_never_contains_a_test_tile(tiles):
    trx, try_, trid, tex, tey, teid = split(tiles)
    result = run_few_shot(trx, try_, tex, tey, ks=(1, 4), seeds=(0, 1), methods=("logreg",),
                          train_ids=trid, test_ids=teid, probe_kwargs=FAST_PROBE)
    for (k, _seed), idx in result.supports.items():
        support_ids = set(trid[idx])
        assert support_ids <= set(trid) and not support_ids & set(teid)
        assert np.bincount(try_[idx]).tolist() == [k] * 3
    assert set(result.per_seed["n_support"]) == {3, 12}


def test_a_tile_in_both_train_and_test_is_rejected(tiles):
    trx, try_, trid, tex, tey, teid = split(tiles)
    teid = teid.copy()
    teid[0] = trid[5]
    with pytest.raises(ConfigError, match="both train and test"):
        run_few_shot(trx, try_, tex, tey, ks=(1,), seeds=(0,), train_ids=trid, test_ids=teid)


def test_same_seeds_reproduce_the_few_shot_results(tiles):
    trx, try_, _, tex, tey, _ = split(tiles)
    kw = dict(ks=(2,), seeds=(0, 1), methods=("logreg", "random_init", "text_init"),
              prototypes=tiles.text_prototypes, head_kwargs=FAST_HEAD, probe_kwargs=FAST_PROBE)
    a = run_few_shot(trx, try_, tex, tey, **kw)
    b = run_few_shot(trx, try_, tex, tey, **kw)
    pd.testing.assert_frame_equal(a.per_seed, b.per_seed)


def test_text_initialised_head_is_reported_beside_random_init(tiles):
    trx, try_, _, tex, tey, _ = split(tiles)
    result = run_few_shot(trx, try_, tex, tey, ks=(1, 4, 16), seeds=(0, 1, 2),
                          methods=("random_init", "text_init", "zero_shot"),
                          class_names=tiles.class_names, prototypes=tiles.text_prototypes,
                          head_kwargs=FAST_HEAD)
    table = result.table("balanced_accuracy")
    assert table["k"].tolist() == [0, 1, 4, 16]
    assert {"random_init_mean", "random_init_sd", "text_init_mean", "text_init_sd",
            "zero_shot_mean"} <= set(table.columns)
    shots = table.set_index("k").loc[[1, 4, 16]]
    assert shots[["random_init_mean", "text_init_mean"]].notna().all().all()
    assert (shots["text_init_sd"] >= 0).all()
    # The planted text prior helps when labels are scarce.
    assert shots.loc[1, "text_init_mean"] > shots.loc[1, "random_init_mean"]
    summary = result.summary
    assert set(summary.columns) == {"method", "k", "level", "class", "metric", "mean", "sd",
                                    "n_seeds", "ci_low", "ci_high"}
    assert (summary[summary.method != "zero_shot"]["n_seeds"] == 3).all()


def test_text_methods_need_prototypes(tiles):
    trx, try_, _, tex, tey, _ = split(tiles)
    with pytest.raises(ConfigError, match="prototypes"):
        run_few_shot(trx, try_, tex, tey, ks=(1,), seeds=(0,), methods=("text_init",))
    with pytest.raises(ConfigError, match="valid"):
        run_few_shot(trx, try_, tex, tey, ks=(1,), seeds=(0,), methods=("knn",))


def slide_cohort(n_slides_per_class=6, tiles=8, seed=0):
    """Tiles of slides (two slides per patient), every tile labelled with its slide's class."""
    rng = np.random.default_rng(seed)
    dirs = np.eye(3, 12)
    xs, ys, slides, patients = [], [], [], []
    for c in range(3):
        for s in range(n_slides_per_class):
            xs.append(2.0 * dirs[c] + rng.normal(size=(tiles, 12)))
            ys += [c] * tiles
            slides += [f"c{c}_s{s}"] * tiles
            patients += [f"c{c}_p{s // 2}"] * tiles
    return np.concatenate(xs).astype(np.float32), np.array(ys), np.array(slides), np.array(patients)


def test_k_shot_by_slide_takes_every_tile_of_k_slides_per_class():
    _, y, slides, patients = slide_cohort()
    idx = sample_k_shot(y, 2, seed=3, units=slides)
    picked = pd.Series(slides[idx]).groupby(y[idx]).nunique()
    assert picked.tolist() == [2, 2, 2] and idx.size == 2 * 3 * 8
    assert set(slides[sample_k_shot(y, 1, seed=3, units=slides)]) <= set(slides[idx])  # nested
    by_patient = sample_k_shot(y, 1, seed=3, units=patients)
    assert pd.Series(patients[by_patient]).nunique() == 3 and by_patient.size == 3 * 16
    mixed = slides.copy()
    mixed[y == 1] = "c0_s0"  # one "slide" with tiles of two classes
    with pytest.raises(ConfigError, match="several classes"):
        sample_k_shot(y, 1, seed=0, units=mixed)


def test_slide_level_soft_vote_and_intervals_of_the_seed_mean():
    x, y, slides, patients = slide_cohort()
    train = np.isin(slides, [f"c{c}_s{s}" for c in range(3) for s in range(3)])
    result = run_few_shot(x[train], y[train], x[~train], y[~train], ks=(1, 2), seeds=(0, 1, 2),
                          methods=("logreg",), probe_kwargs=FAST_PROBE, train_units=slides[train],
                          test_slides=slides[~train], test_groups=patients[~train], n_bootstrap=50,
                          keep_tile_scores=True)
    assert set(result.per_seed["level"]) == {"tile", "slide"}
    # The slide probabilities are the mean of their tiles' probabilities.
    probs = result.tile_scores[("logreg", 2, 1)]
    votes = result.slide_scores.query("k == 2 and seed == 1").set_index("slide_id")
    test_slides = slides[~train]
    for sid in ("c0_s3", "c2_s5"):
        np.testing.assert_allclose(votes.loc[sid, ["p_0", "p_1", "p_2"]].to_numpy(float),
                                   probs[test_slides == sid].mean(0))
    table = result.table("accuracy", level="slide")
    assert table["k"].tolist() == [1, 2]
    assert (table["logreg_ci_low"] <= table["logreg_mean"]).all()
    assert (table["logreg_mean"] <= table["logreg_ci_high"]).all()
    macro = result.per_seed.query("level == 'slide' and `class` == 'macro' and metric == 'accuracy'")
    acc = votes.assign(pred=votes[["p_0", "p_1", "p_2"]].to_numpy(float).argmax(1))
    expected = (acc["pred"].to_numpy() == acc["label"].astype(int).to_numpy()).mean()
    assert macro.query("k == 2 and seed == 1")["value"].iloc[0] == pytest.approx(expected)
