"""Text-initialised linear head (weights from class prompt embeddings) vs random init."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.text_init import LinearHeadClassifier, initial_weights
from wsi_mil.evaluation.zero_shot import zero_shot_tiles
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles


@pytest.fixture(scope="module")
def tiles():
    return make_synthetic_tiles(n_per_class=30, n_classes=3, dim=16, signal=2.0, seed=3)


def test_text_head_before_training_is_the_zero_shot_classifier(tiles):
    head = LinearHeadClassifier("text", tiles.text_prototypes, epochs=0).fit(tiles.features, tiles.labels)
    zs_probs, _ = zero_shot_tiles(tiles.features, tiles.text_prototypes, logit_scale=100.0)
    np.testing.assert_allclose(head.predict_proba(tiles.features), zs_probs, atol=1e-4)


def test_projection_pulls_text_prototypes_back_to_the_image_space(tiles, rng):
    proj = rng.normal(size=(10, 16)).astype(np.float32)  # (D_img, D_joint): joint = x @ P
    x = rng.normal(size=(40, 10)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    head = LinearHeadClassifier("text", tiles.text_prototypes, image_projection=proj, epochs=0).fit(x, y)
    _, zs_pred = zero_shot_tiles(x @ proj, tiles.text_prototypes)
    assert np.array_equal(head.predict_proba(x).argmax(1), zs_pred)
    with pytest.raises(ConfigError, match="image_projection"):
        LinearHeadClassifier("text", tiles.text_prototypes).fit(x, y)


def test_training_is_deterministic_and_lowers_the_loss(tiles):
    x, y = tiles.part("train")
    a = LinearHeadClassifier("random", n_classes=3, seed=5).fit(x, y)
    b = LinearHeadClassifier("random", n_classes=3, seed=5).fit(x, y)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    assert a.losses_[-1] < a.losses_[0]


def test_random_init_has_unit_rows_and_depends_on_the_seed():
    w0, w1 = initial_weights("random", 3, 8, seed=0), initial_weights("random", 3, 8, seed=1)
    torch.testing.assert_close(w0.norm(dim=1), torch.ones(3))
    assert not torch.equal(w0, w1)
    torch.testing.assert_close(w0, initial_weights("random", 3, 8, seed=0))
    with pytest.raises(ConfigError, match="valid"):
        initial_weights("zeros", 3, 8)
    with pytest.raises(ConfigError, match="prototypes"):
        initial_weights("text", 3, 8)
