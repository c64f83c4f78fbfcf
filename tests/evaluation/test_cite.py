"""CITE-style head: frozen class texts, learned image->text projection."""
from __future__ import annotations

import numpy as np
import torch

from wsi_mil.evaluation.cite import CiteClassifier, CiteHead
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles


def test_class_texts_stay_frozen_and_only_the_projection_and_scale_learn():
    text = torch.randn(3, 5)
    head = CiteHead(8, text, logit_scale=10.0)
    names = {n for n, p in head.named_parameters() if p.requires_grad}
    assert names == {"proj.weight", "log_scale"}
    torch.testing.assert_close(head.class_text.norm(dim=1), torch.ones(3))
    frozen = CiteHead(8, text, logit_scale=10.0, learn_logit_scale=False)
    assert {n for n, _ in frozen.named_parameters()} == {"proj.weight"}
    assert head(torch.randn(4, 8)).abs().max() <= 10.0 + 1e-5  # |cosine| <= 1, times the scale


def test_cite_head_learns_an_unaligned_text_space_deterministically():
    tiles = make_synthetic_tiles(n_per_class=30, n_classes=3, dim=16, signal=3.0, seed=1)
    x, y = tiles.part("train")
    tx, ty = tiles.part("test")
    class_text = np.random.default_rng(7).normal(size=(3, 10))  # another space, another width
    a = CiteClassifier(class_text, steps=150, lr=1e-2, seed=3).fit(x, y)
    b = CiteClassifier(class_text, steps=150, lr=1e-2, seed=3).fit(x, y)
    np.testing.assert_array_equal(a.predict_proba(tx), b.predict_proba(tx))
    assert np.mean(a.losses_[-10:]) < np.mean(a.losses_[:10])
    assert (a.predict_proba(tx).argmax(1) == ty).mean() > 0.8
    assert a.predict_proba(tx).shape == (len(ty), 3)
