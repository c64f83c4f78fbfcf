"""Contract tests run on every registered MIL head (timm-style registry-wide tests)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.errors import ConfigError, EmptyBagError, RegistryError
from wsi_mil.models import MILHead, create_model, list_models
from wsi_mil.testing.synthetic_bags import make_synthetic_bags, pad_bags

ALL_HEADS = list_models()
NOT_PERMUTATION_INVARIANT = {"transmil", "transmil_ref"}  # PPEG convolutions see the tile order
# The reference TransMIL zero-initialises its classifier: every logit is then 0 and
# no gradient flows upstream, which would make the tests below vacuous. They use a
# random classifier for it (its zero initialisation has its own test).
ZERO_INIT_CLASSIFIER = {"transmil_ref"}
D = 32
# The bias of an attention logit shifts every logit of the bag equally, so the
# softmax ignores it: its gradient is connected but zero by construction (kept
# for state-dict / parameter-count parity with the reference).
SOFTMAX_SHIFT_INVARIANT = {"attention.attention_c.bias"}


def _create(name: str, in_dim: int, n_outputs: int) -> MILHead:
    model = create_model(name, in_dim, n_outputs)
    if name in ZERO_INIT_CLASSIFIER:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=gen))
            model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=gen))
    return model


def _bags(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    return [rng.standard_normal((n, D)).astype(np.float32) for n in sizes]


def test_registry_lists_the_six_heads_of_the_reference_and_the_reference_transmil():
    assert ALL_HEADS == ["abmil", "chowder", "dsmil", "hipt_mil", "meanpool", "transmil", "transmil_ref"]


def test_only_the_transmils_are_declared_order_dependent():
    created = {name: create_model(name, D, 1) for name in ALL_HEADS}
    order_dependent = {n for n, m in created.items() if not m.permutation_invariant}
    assert order_dependent == NOT_PERMUTATION_INVARIANT


@pytest.mark.parametrize("name", ALL_HEADS)
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_output_is_finite_b_by_c_and_gradients_reach_every_parameter(name, n_outputs, rng):
    model = _create(name, D, n_outputs)
    assert isinstance(model, MILHead) and model.name == name
    x, mask = pad_bags(_bags(rng, [30, 7, 19]))
    logits = model(x, mask)
    assert logits.shape == (3, n_outputs)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    zero = {n for n, p in model.named_parameters() if not torch.any(p.grad != 0)}
    assert zero <= SOFTMAX_SHIFT_INVARIANT


@pytest.mark.parametrize("name", ALL_HEADS)
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_masked_padded_batch_gives_each_bag_its_unpadded_logits(name, n_outputs, rng):
    # sizes cross TransMIL's grid sides and Nystrom landmark groups (> 256 tokens),
    # and include bags shorter than Chowder's 10 + 10 extremes
    bags = _bags(rng, [5, 300, 17, 64, 1, 260])
    model = _create(name, D, n_outputs).eval()
    x, mask = pad_bags(bags)
    x[~mask] = float("nan")  # whatever the padding holds must not matter
    with torch.no_grad():
        batched = model(x, mask)
        alone = torch.cat([model(torch.from_numpy(b)[None]) for b in bags])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_padding_placed_anywhere_in_the_bag_is_ignored(name, rng):
    bag = torch.from_numpy(_bags(rng, [40])[0])[None]  # (1, 40, D)
    x = torch.cat([bag[:, :10], torch.zeros(1, 25, D), bag[:, 10:]], dim=1)  # (1, 65, D)
    mask = torch.ones(1, 65, dtype=torch.bool)
    mask[:, 10:35] = False
    model = _create(name, D, 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(bag), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(set(ALL_HEADS) - NOT_PERMUTATION_INVARIANT))
def test_shuffling_the_tiles_of_a_bag_leaves_the_logits_unchanged(name, rng):
    x, mask = pad_bags(_bags(rng, [50, 33]))
    perm = torch.from_numpy(rng.permutation(50))
    model = _create(name, D, 3).eval()
    with torch.no_grad():
        shuffled = model(x[:, perm], mask[:, perm])
        torch.testing.assert_close(shuffled, model(x, mask), atol=1e-5, rtol=1e-5)


def test_transmil_depends_on_tile_order_as_documented(rng):
    x, _ = pad_bags(_bags(rng, [50]))
    model = create_model("transmil", D, 1).eval()
    with torch.no_grad():
        assert not torch.allclose(model(x.flip(1)), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ALL_HEADS)
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_tile_scores_are_b_by_n_finite_on_real_tiles_and_nan_on_padding(name, n_outputs, rng):
    bags = _bags(rng, [30, 7, 300])
    x, mask = pad_bags(bags)
    model = _create(name, D, n_outputs).eval()
    with torch.no_grad():
        scores = model.tile_scores(x, mask)
        alone = model.tile_scores(torch.from_numpy(bags[1])[None])
    assert scores.shape == mask.shape
    assert torch.isfinite(scores[mask]).all()
    assert torch.isnan(scores[~mask]).all()
    torch.testing.assert_close(scores[1, :7], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["abmil", "hipt_mil", "dsmil"])
def test_attention_tile_scores_sum_to_one_over_real_tiles(name, rng):
    x, mask = pad_bags(_bags(rng, [30, 7]))
    with torch.no_grad():
        scores = create_model(name, D, 1).eval().tile_scores(x, mask)
    torch.testing.assert_close(scores.nansum(dim=1), torch.ones(2))


def test_meanpool_logit_is_the_mean_of_its_tile_scores(rng):
    x, mask = pad_bags(_bags(rng, [30, 7]))
    model = create_model("meanpool", D, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.tile_scores(x, mask).nanmean(dim=1), model(x, mask)[:, 0])


@pytest.mark.parametrize("name", ALL_HEADS)
def test_unknown_hyperparameter_raises_config_error_listing_valid_ones(name):
    with pytest.raises(ConfigError, match="valid:") as info:
        create_model(name, D, 1, not_a_param=3)
    assert "not_a_param" in str(info.value)
    for valid in create_model(name, D, 1).hparam_names():
        assert valid in str(info.value)


def test_unknown_model_name_lists_the_registered_heads():
    with pytest.raises(RegistryError, match="abmil"):
        create_model("clam", D, 1)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("chowder", {"n_top": -1}),
        ("chowder", {"n_top": 0, "n_bottom": 0}),
        ("abmil", {"mlp_activation": "swish"}),
        ("dsmil", {"out_logits": "median"}),
        ("hipt_mil", {"dropout": 1.5}),
        ("transmil", {"n_heads": 7}),
        ("transmil_ref", {"n_heads": 7}),
        ("transmil_ref", {"dropout": -0.1}),
        ("meanpool", {"hidden": [64, 0]}),
    ],
)
def test_invalid_hyperparameter_values_raise_config_error(name, hparams):
    with pytest.raises(ConfigError):
        create_model(name, D, 1, **hparams)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_hparams_round_trip_through_create_model(name):
    model = create_model(name, D, 2)
    again = create_model(name, D, 2, **model.hparams)
    assert again.hparams == model.hparams
    assert again.load_state_dict(model.state_dict())
    assert "in_dim=32" in repr(model)


def test_wrong_feature_dim_and_empty_bags_are_refused(rng):
    model = create_model("abmil", D, 1)
    with pytest.raises(ConfigError, match="expects features"):
        model(torch.zeros(1, 5, D + 1))
    with pytest.raises(EmptyBagError, match=r"\[1\]"):
        model(torch.zeros(2, 5, D), torch.tensor([[True] * 5, [False] * 5]))
    with pytest.raises(ConfigError, match="mask"):
        model(torch.zeros(1, 5, D), torch.ones(1, 5))


def test_synthetic_bags_have_requested_sizes_labels_and_witnesses():
    bags, labels = make_synthetic_bags(20, in_dim=16, bag_size=(50, 60), seed=3)
    assert len(bags) == 20 and labels.sum() == 10
    assert all(50 <= len(b) <= 60 and b.shape[1] == 16 and b.dtype == np.float32 for b in bags)
    again, _ = make_synthetic_bags(20, in_dim=16, bag_size=(50, 60), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(bags, again, strict=True))
    shifted = [(b[:, :4].mean(axis=1) > 1.5).sum() for b in bags]
    assert all(s >= 1 for s, y in zip(shifted, labels, strict=True) if y)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ALL_HEADS) - {"transmil_ref"}))  # dense 1536^2 x 7^2 convs
def test_a_20000_tile_bag_of_1536_d_features_runs_on_cpu(name):
    # TransMIL goes through Nystrom attention (linear in N), HIPT-MIL through
    # torch's fused attention; timings and memory: dev_tools/bench_heads.py
    x = torch.randn(1, 20_000, 1536, generator=torch.Generator().manual_seed(0))
    model = create_model(name, 1536, 1).eval()
    with torch.no_grad():
        logits = model(x)
        scores = model.tile_scores(x)
    assert logits.shape == (1, 1) and torch.isfinite(logits).all()
    assert scores.shape == (1, 20_000) and torch.isfinite(scores).all()
