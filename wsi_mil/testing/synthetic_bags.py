"""Synthetic feature bags with a planted multiple-instance signal.

A negative bag is i.i.d. N(0, 1) tiles. A positive bag is the same plus a few
*witness* tiles (a fraction ``witness_rate`` of the bag, at least one) shifted
by ``shift`` along the first ``n_signal_dims`` dimensions. With low witness
rates the bag mean barely moves, so mean pooling struggles while attention /
max-type heads find the witnesses: the classic MIL contrast.
"""
from __future__ import annotations

import numpy as np
import torch

from wsi_mil.errors import ConfigError, EmptyBagError


def make_synthetic_bags(
    n_bags: int,
    in_dim: int = 64,
    bag_size: tuple[int, int] = (50, 500),
    witness_rate: tuple[float, float] = (0.01, 0.05),
    shift: float = 3.0,
    n_signal_dims: int = 4,
    positive_fraction: float = 0.5,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Make ``n_bags`` bags ``(N_i, in_dim)`` float32 and their labels ``(n_bags,)`` int64.

    Bag sizes are uniform in ``bag_size`` (inclusive); each positive bag draws
    its witness rate uniformly in ``witness_rate``; exactly
    ``round(positive_fraction * n_bags)`` bags are positive, in random order.
    """
    lo, hi = bag_size
    if n_bags < 1 or not 1 <= lo <= hi:
        raise ConfigError(f"need n_bags >= 1 and 1 <= bag_size[0] <= bag_size[1]; "
                          f"got n_bags={n_bags}, bag_size={bag_size}")
    if not 0 < n_signal_dims <= in_dim:
        raise ConfigError(f"n_signal_dims must be in [1, in_dim={in_dim}]; got {n_signal_dims}")
    rng = np.random.default_rng(seed)
    n_pos = int(round(positive_fraction * n_bags))
    labels = rng.permutation(np.r_[np.ones(n_pos), np.zeros(n_bags - n_pos)]).astype(np.int64)
    bags = []
    for label in labels:
        n = int(rng.integers(lo, hi + 1))
        bag = rng.standard_normal((n, in_dim)).astype(np.float32)
        if label:
            n_witness = max(1, int(round(rng.uniform(*witness_rate) * n)))
            witness = rng.choice(n, size=n_witness, replace=False)
            bag[np.ix_(witness, np.arange(n_signal_dims))] += shift
        bags.append(bag)
    return bags, labels


def pad_bags(bags: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags ``(N_i, D)`` into ``x (B, N_max, D)`` float32 (zeros in the
    padding) and ``mask (B, N_max)`` bool, True = real tile. For tests and
    demos; the training code has its own collate."""
    if not bags or any(len(b) == 0 for b in bags):
        raise EmptyBagError("pad_bags needs at least one bag and no empty bag")
    n_max, dim = max(len(b) for b in bags), bags[0].shape[1]
    x = torch.zeros(len(bags), n_max, dim)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = torch.as_tensor(bag, dtype=torch.float32)
        mask[i, : len(bag)] = True
    return x, mask
