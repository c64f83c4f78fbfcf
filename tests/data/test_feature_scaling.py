"""standardize=true: moments of each fit's training tiles only, as sklearn's StandardScaler, everywhere."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from wsi_mil.cv.engine import CVSettings, run_cv
from wsi_mil.data.bags import BagStore, assemble, pick_tiles
from wsi_mil.data.cohort import read_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.data.scaling import FeatureScaler, ScaledHead
from wsi_mil.reports.tile_scores import load_fold_model
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort
from wsi_mil.training.fit import FitParams, Targets, fit, predict
from wsi_mil.training.fit_stacked import Stream, fit_stacked, predict_stacked


def _bags(seed: int = 0, n: int = 12, dim: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        b = rng.normal(size=(int(rng.integers(3, 30)), dim)) * np.arange(1, dim + 1) + 1e4 + i  # far from 0
        b[:, 2] = 7.0  # a constant dimension
        bags.append(b.astype(np.float32))
    return bags


def test_scaler_equals_sklearn_on_the_training_tiles_only():
    bags = _bags()
    store = BagStore.from_arrays(bags, [f"s{i}" for i in range(len(bags))])
    train = np.array([0, 3, 4, 7, 11])
    sk = StandardScaler().fit(np.concatenate([bags[i] for i in train]).astype(np.float64))
    ours = FeatureScaler.fit(store, train)
    np.testing.assert_allclose(ours.mean.numpy(), sk.mean_, rtol=1e-7)
    np.testing.assert_allclose(ours.scale.numpy(), sk.scale_, rtol=1e-5)
    assert float(ours.scale[2]) == 1.0  # constant dimension, as sklearn
    # slides outside the training part do not move it
    changed = [b if i in train else b * 3 - 5 for i, b in enumerate(bags)]
    other = FeatureScaler.fit(BagStore.from_arrays(changed, store.slide_ids), train)
    torch.testing.assert_close(other.mean, ours.mean)
    torch.testing.assert_close(other.scale, ours.scale)


def test_scaled_batches_keep_zero_padding_and_pool_to_the_scaled_mean():
    bags = _bags(1)
    store = BagStore.from_arrays(bags, [f"s{i}" for i in range(len(bags))])
    scaler = FeatureScaler.fit(store, np.arange(6))
    picks = [pick_tiles(store, [0, 1, 2], None, None)]
    x, mask = assemble(store, picks, scalers=[scaler])
    for b, i in enumerate([0, 1, 2]):
        n = len(bags[i])
        want = (bags[i] - scaler.mean.numpy()) / scaler.scale.numpy()
        np.testing.assert_allclose(x[0, b, :n].numpy(), want, rtol=1e-4, atol=1e-4)
        assert not x[0, b, n:].any()
    pooled, _ = assemble(store, picks, pooled=True, scalers=[scaler])
    # float32 means of features near 1e4 carry ~1e-3 absolute rounding (eps 6e-8 x 1e4)
    np.testing.assert_allclose(pooled[0, :, 0].numpy(), x[0].sum(1).numpy() / mask[0].sum(1, keepdim=True).numpy(),
                               atol=2e-3)


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled")
    syn = write_synthetic_cohort(root, n_patients=16, dim=10, n_tiles=(6, 30), seed=5)
    cohort = read_cohort(syn.cohort_csv, "classification")
    store = BagStore.from_dir(syn.features_dir, cohort.slide_ids)
    return cohort, store


def _prescaled(store: BagStore, scaler: FeatureScaler) -> BagStore:
    feats = (store.features - scaler.mean.numpy()) / scaler.scale.numpy()
    return BagStore(feats.astype(np.float32), store.offsets, store.slide_ids)


@pytest.mark.parametrize("model", ["abmil", "meanpool"])
def test_fit_with_standardize_equals_fit_on_features_scaled_beforehand(cohort_store, model):
    cohort, store = cohort_store
    targets = Targets.from_cohort(cohort)
    train, val = np.arange(0, 20), np.arange(20, len(cohort))
    params = FitParams(model, epochs=3, batch_size=4, n_tiles=12, seed=2, weight_decay=1e-4)
    scaled = fit(store, targets, train, replace(params, standardize=True), val)
    scaler = FeatureScaler.fit(store, train)
    plain = fit(_prescaled(store, scaler), targets, train, params, val)
    np.testing.assert_allclose(scaled.val_curve, plain.val_curve, atol=1e-6)
    torch.testing.assert_close(scaled.scaler.mean, scaler.mean)
    a = predict(scaled.model, store, val, "classification", 12, scaler=scaled.scaler, seed=2)
    b = predict(plain.model, _prescaled(store, scaler), val, "classification", 12, seed=2)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stacked_fits_standardize_each_stream_by_its_own_training_part(cohort_store):
    cohort, store = cohort_store
    targets = Targets.from_cohort(cohort)
    n = len(cohort)
    streams = [Stream(np.arange(0, 20), np.arange(20, n), 4), Stream(np.arange(8, n), np.arange(0, 8), 9)]
    params = FitParams("abmil", epochs=3, batch_size=4, n_tiles=12, standardize=True)
    lr, wd = np.full((1, 2), 1e-3), np.full((1, 2), 1e-4)
    res = fit_stacked(store, targets, streams, params, lr, wd, np.full((1, 2), 3))
    scores = predict_stacked(res, store, targets, [st.val_idx for st in streams], params)[0]
    for s, st in enumerate(streams):
        one = fit(store, targets, st.train_idx, replace(params, seed=st.seed, lr=1e-3,
                                              weight_decay=1e-4), st.val_idx)
        np.testing.assert_allclose(res.curves[0, s], one.val_curve, atol=1e-6)
        torch.testing.assert_close(res.scalers[s].mean, FeatureScaler.fit(store, st.train_idx).mean)
        want = predict(one.model, store, st.val_idx, "classification", 12, seed=st.seed, batch_size=4,
                       scaler=one.scaler)
        np.testing.assert_allclose(scores[s], want, atol=1e-5)


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_cv_saves_the_refit_scaler_and_the_loaded_model_reproduces_its_scores(cohort_store, tmp_path, engine):
    cohort, store = cohort_store
    plan = make_fold_plan(cohort, 3, 2, 1, seed=1)
    settings = CVSettings("classification", "abmil", grid={"lr": [1e-3], "weight_decay": [1e-4]}, epochs=3,
                          batch_size=4, n_tiles=None, standardize=True, engine=engine)
    result = run_cv(cohort, store, plan, settings, tmp_path / engine)
    assert json.loads((result.run_dir / "summary.json").read_text())["standardize"] is True
    fold = plan.repeats[0][1]
    model = load_fold_model(result.run_dir / "models" / "r0_f1.pt")
    assert isinstance(model, ScaledHead)
    torch.testing.assert_close(model.feature_mean, FeatureScaler.fit(store, fold.train).mean)
    preds = result.predictions.query("outer_fold == 1").set_index("slide_id").score
    for i in fold.test[:4]:
        x = torch.from_numpy(np.asarray(store.bag(i)))[None]
        with torch.no_grad():
            p = torch.sigmoid(model(x))[0, 0].item()
        assert p == pytest.approx(preds[cohort.slide_ids[i]], abs=1e-5)


def test_batched_and_loop_agree_with_standardize(cohort_store, tmp_path):
    cohort, store = cohort_store
    plan = make_fold_plan(cohort, 3, 2, 1, seed=1)
    out = {}
    for engine in ("batched", "loop"):
        settings = CVSettings("classification", "meanpool", grid={"lr": [1e-3, 1e-2], "weight_decay": [1e-4]},
                              epochs=4, batch_size=4, n_tiles=12, standardize=True, engine=engine)
        out[engine] = run_cv(cohort, store, plan, settings, tmp_path / engine)
    assert out["batched"].folds[["lr", "epochs"]].equals(out["loop"].folds[["lr", "epochs"]])
    np.testing.assert_allclose(out["batched"].predictions.score, out["loop"].predictions.score, atol=1e-4)
