"""Packed bags (no padding) give the padded forward's logits and gradients, head by head."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.data.bags import BagStore, assemble, assemble_packed
from wsi_mil.errors import ConfigError, EmptyBagError
from wsi_mil.models import create_model
from wsi_mil.models.base import trusted_inputs
from wsi_mil.models.layers import Packing
from wsi_mil.training.stacked import StackedHeads

D = 12


def _ragged(n_models: int = 3, n_bags: int = 5, seed: int = 0):
    """Sizes 1..50 with a 1-tile bag, a model of small total (T > its total); both layouts."""
    rng = np.random.default_rng(seed)
    sizes = torch.from_numpy(rng.integers(1, 51, size=(n_models, n_bags)))
    sizes[0, 1] = 1
    if n_models > 1:
        sizes[1] = torch.tensor([2, 1, 3, 1, 4])[:n_bags]
    n_rows = int(sizes.sum(1).max()) + 2
    n_max = int(sizes.max())
    packed = torch.zeros(n_models, n_rows, D)
    padded = torch.zeros(n_models, n_bags, n_max, D)
    mask = torch.zeros(n_models, n_bags, n_max, dtype=torch.bool)
    for m in range(n_models):
        row = 0
        for b in range(n_bags):
            n = int(sizes[m, b])
            tiles = torch.from_numpy(rng.normal(size=(n, D)).astype(np.float32))
            packed[m, row:row + n], padded[m, b, :n], mask[m, b, :n] = tiles, tiles, True
            row += n
    return sizes, packed, padded.view(-1, n_max, D), mask.view(-1, n_max)


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("model", ["abmil", "chowder", "dsmil"])
def test_packed_forward_and_gradients_equal_the_padded_ones(model, n_outputs):
    sizes, packed, padded, mask = _ragged()
    torch.manual_seed(0)
    stacked = StackedHeads([create_model(model, D, n_outputs) for _ in range(sizes.shape[0])])
    assert stacked.packable
    params = list(stacked.parameters())
    packed.requires_grad_(True)
    padded.requires_grad_(True)
    weights = torch.randn(padded.shape[0], n_outputs)  # a loss that weighs every logit differently
    with trusted_inputs():
        ref = stacked(padded, mask)  # (M * B, C)
        ref_grads = torch.autograd.grad((ref * weights).sum(), [padded, *params])
        out = stacked.forward_packed(packed, Packing(sizes, packed.shape[1]))  # (M * B, C)
        grads = torch.autograd.grad((out * weights).sum(), [packed, *params])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads[1:], ref_grads[1:], strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    # input gradients: the same per real tile, none on padding rows
    packing = Packing(sizes, packed.shape[1])
    torch.testing.assert_close(grads[0][packing.real], ref_grads[0][mask], atol=1e-5, rtol=1e-5)
    assert not grads[0][~packing.real].any()


@pytest.mark.parametrize("model", ["abmil", "chowder", "dsmil"])
def test_a_single_head_runs_packed_as_one_model(model):
    sizes, packed, padded, mask = _ragged(n_models=1, n_bags=4, seed=1)
    torch.manual_seed(0)
    head = create_model(model, D, 2)
    torch.testing.assert_close(head.forward_packed(packed, Packing(sizes, packed.shape[1])), head(padded, mask),
                               atol=1e-5, rtol=1e-5)


def test_packing_maps_tiles_to_their_bags():
    p = Packing(np.array([[2, 1], [1, 1]]), 4)
    assert p.onehot.tolist() == [[[1, 1, 0, 0], [0, 0, 1, 0]], [[1, 0, 0, 0], [0, 1, 0, 0]]]
    assert p.real.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert p.mask.tolist() == [[True, True], [True, False], [True, False], [True, False]]
    values = torch.arange(8.0).view(2, 4)  # (M, T)
    assert p.unpack(values).tolist() == [[0, 1], [2, 2], [4, 4], [5, 5]]
    assert p.pack(p.unpack(values))[p.real].tolist() == [0, 1, 2, 4, 5]
    pooled = p.pool(torch.ones(2, 4, 1), values.unsqueeze(-1))  # (M * B, 1, 1)
    assert pooled.flatten().tolist() == [1, 2, 4, 5]
    per_bag = torch.tensor([10.0, 20, 30, 40]).view(4, 1, 1)  # (M * B, K, Q)
    assert p.bag_dot(torch.ones(2, 4, 1), per_bag).flatten().tolist() == [10, 10, 20, 0, 30, 40, 0, 0]


def test_packing_refuses_empty_bags_and_overflowing_totals():
    with pytest.raises(EmptyBagError):
        Packing(torch.tensor([[2, 0]]), 4)
    with pytest.raises(ConfigError, match="do not fit"):
        Packing(torch.tensor([[3, 2]]), 4)


def test_assemble_packed_holds_the_padded_batch_tiles_without_padding():
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 7, 1, 5)]
    store = BagStore.from_arrays(bags, ["a", "b", "c", "d"])
    picks = [[(0, None), (1, np.array([1, 4, 6])), (2, None)], [(3, None)]]  # stream 1: two empty slots
    x, mask = assemble(store, picks)  # (S, B, N, D), (S, B, N)
    packed, sizes = assemble_packed(store, picks)  # (S, T, D), (S, B)
    assert sizes.tolist() == [[3, 3, 1], [5, 1, 1]]
    assert packed.shape == (2, 7, 4)
    for s in range(2):
        total = int(sizes[s].sum())
        torch.testing.assert_close(packed[s, :total], x[s][mask[s]])
        assert not packed[s, total:].any()
