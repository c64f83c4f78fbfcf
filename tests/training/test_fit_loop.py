"""One fit: deterministic for a seed, per-epoch validation curve, predicted scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.data.bags import BagStore
from wsi_mil.errors import ConfigError
from wsi_mil.training.fit import FitParams, Targets, fit, predict


@pytest.fixture
def data(rng):
    bags = [rng.normal(size=(int(rng.integers(10, 30)), 8)).astype(np.float32) for _ in range(24)]
    y = rng.integers(0, 2, 24)
    for b, label in zip(bags, y, strict=True):
        b[:3] += 2.0 * label
    return BagStore.from_arrays(bags, [f"s{i}" for i in range(24)]), y


@pytest.mark.parametrize("model", ["meanpool", "abmil"])
def test_same_seed_gives_identical_weights_and_curves(data, model):
    store, y = data
    targets = Targets("classification", 1, y=y)
    params = FitParams(model, epochs=3, batch_size=4, n_tiles=8, seed=3)
    a = fit(store, targets, np.arange(16), params, val_idx=np.arange(16, 24))
    b = fit(store, targets, np.arange(16), params, val_idx=np.arange(16, 24))
    assert a.val_curve.shape == (3,)
    np.testing.assert_array_equal(a.val_curve, b.val_curve)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    c = fit(store, targets, np.arange(16), FitParams(model, epochs=3, batch_size=4, n_tiles=8, seed=4))
    assert not np.allclose(c.train_loss, a.train_loss)


def test_predict_returns_probabilities_or_risks(data):
    store, y = data
    multi = Targets("classification", 3, y=np.arange(24) % 3)
    model = fit(store, multi, np.arange(24), FitParams("meanpool", epochs=1, batch_size=8)).model
    proba = predict(model, store, np.arange(5), "classification")
    assert proba.shape == (5, 3) and np.allclose(proba.sum(1), 1)
    surv = Targets("survival", 1, time=np.arange(24.0) + 1, event=np.ones(24, dtype=int))
    model = fit(store, surv, np.arange(24), FitParams("meanpool", epochs=1, batch_size=8)).model
    risk = predict(model, store, np.arange(5), "survival")
    assert risk.shape == (5,) and np.isfinite(risk).all()


def test_bad_fit_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="epochs=0"):
        FitParams("meanpool", epochs=0)
