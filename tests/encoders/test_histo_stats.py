"""histo_stats: weight-free, deterministic, fixed dimension, sees stain colour."""
from __future__ import annotations

import torch

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.histo_stats import HISTO_STATS_FEATURES


def _tile(rgb, noise=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor(rgb, dtype=torch.float32).view(1, 1, 3).expand(224, 224, 3)
    jitter = torch.randint(-noise, noise + 1, (224, 224, 3), generator=gen).float()
    return (base + jitter).clamp(0, 255).to(torch.uint8)


def test_histo_stats_needs_no_weights_and_has_its_documented_dimension(tiles):
    enc = create_encoder("histo_stats")
    feats = enc(enc.preprocess(tiles))
    assert enc.embed_dim == len(HISTO_STATS_FEATURES) == 60
    assert feats.shape == (2, 60) and torch.isfinite(feats).all()
    assert enc.weights_sha256 == "none"


def test_histo_stats_is_deterministic_and_batch_independent(tiles):
    enc = create_encoder("histo_stats")
    x = enc.preprocess(tiles)
    torch.testing.assert_close(enc(x), enc(x), rtol=0, atol=0)
    torch.testing.assert_close(enc(x)[1:], enc(x[1:]), rtol=1e-6, atol=1e-6)
    other = create_encoder("histo_stats")
    torch.testing.assert_close(other(x), enc(x), rtol=0, atol=0)


def test_histo_stats_separates_a_pink_eosin_tile_from_a_purple_haematoxylin_tile():
    enc = create_encoder("histo_stats")
    pink = torch.stack([_tile((235, 160, 200), seed=s) for s in range(3)])
    purple = torch.stack([_tile((110, 60, 160), seed=s) for s in range(3)])
    f_pink, f_purple = enc(enc.preprocess(pink)), enc(enc.preprocess(purple))
    idx = {n: i for i, n in enumerate(HISTO_STATS_FEATURES)}
    assert (f_purple[:, idx["od_h_mean"]] > f_pink[:, idx["od_h_mean"]]).all()
    between = (f_pink.mean(0) - f_purple.mean(0)).norm()
    within = max((f_pink - f_pink.mean(0)).norm(dim=1).max(), (f_purple - f_purple.mean(0)).norm(dim=1).max())
    assert between > 5 * within


def test_histo_stats_texture_sees_edges():
    enc = create_encoder("histo_stats")
    flat = _tile((200, 120, 180), noise=0)
    stripes = flat.clone()
    stripes[::8] = 40
    f = enc(enc.preprocess(torch.stack([flat, stripes])))
    i = HISTO_STATS_FEATURES.index("gray_grad_mean")
    assert f[1, i] > f[0, i] + 0.01 and f[0, i] == 0
