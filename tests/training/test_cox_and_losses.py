"""Losses: Cox partial likelihood (Breslow ties) against a naive O(n^2) version."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.training.losses import cox_loss, make_loss


def naive_cox(eta, time, event):
    total = 0.0
    for i in range(len(time)):
        if event[i]:
            risk_set = [j for j in range(len(time)) if time[j] >= time[i]]
            total -= eta[i] - np.log(np.sum(np.exp(eta[risk_set])))
    return total / len(time)


@pytest.mark.parametrize("seed", range(10))
def test_cox_loss_equals_naive_breslow_partial_likelihood_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    eta = rng.normal(size=n)
    time = rng.integers(1, 6, n).astype(float)
    event = rng.integers(0, 2, n)
    ours = cox_loss(torch.tensor(eta), torch.tensor(time), torch.tensor(event))
    assert abs(float(ours) - naive_cox(eta, time, event)) < 1e-12


def test_cox_loss_without_events_is_zero_and_differentiable():
    eta = torch.randn(5, requires_grad=True)
    loss = cox_loss(eta, torch.arange(5.0), torch.zeros(5))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(eta.grad, torch.zeros(5))


def test_cox_loss_prefers_risks_ordered_against_times():
    time = torch.arange(1.0, 9.0)
    event = torch.ones(8)
    assert cox_loss(-time, time, event) < cox_loss(time, time, event)


def test_make_loss_picks_bce_ce_or_cox():
    out1, out3 = torch.zeros(4, 1), torch.zeros(4, 3)
    y = torch.tensor([0, 1, 1, 0])
    assert float(make_loss("classification", 1)(out1, {"y": y})) == pytest.approx(np.log(2))
    assert float(make_loss("classification", 3)(out3, {"y": y})) == pytest.approx(np.log(3))
    surv = make_loss("survival", 1)(out1, {"time": torch.arange(4.0), "event": torch.ones(4)})
    assert float(surv) > 0
