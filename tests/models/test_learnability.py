"""Every attention-type head learns the planted MIL signal of synthetic bags.

Bags: D = 64, 50-500 tiles; a positive bag holds 1-5% witness tiles shifted
by 3 along 4 dimensions. MeanPool's AUC is reported, not gated: the witness
fraction is so low that the bag mean barely moves, which is the contrast the
attention / extreme-score heads exist for (the test asserts MeanPool stays
below them and prints every AUC; run with ``-s`` to see the figures).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsi_mil.models import create_model
from wsi_mil.testing.synthetic_bags import make_synthetic_bags, pad_bags

N_TRAIN, N_TEST, BATCH = 120, 80, 8
# Short trainings, sized to ~<20 s per head on one CPU thread (slow ones marked).
TRAINING = {
    "abmil": {"epochs": 5, "lr": 1e-3},
    "chowder": {"epochs": 25, "lr": 1e-3},
    "dsmil": {"epochs": 4, "lr": 1e-3},
    "hipt_mil": {"epochs": 3, "lr": 1e-3},
    "meanpool": {"epochs": 30, "lr": 1e-3},
    "transmil": {"epochs": 6, "lr": 5e-4},
}
# TransMIL's default 256 landmarks cost a 256 x 256 pseudo-inverse per head and
# layer whatever the bag size; a slimmer TransMIL keeps the test affordable.
HPARAMS = {"transmil": {"proj_dim": 64, "n_heads": 4, "n_landmarks": 64}}
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def data():
    train = make_synthetic_bags(N_TRAIN, in_dim=64, seed=1)
    test = make_synthetic_bags(N_TEST, in_dim=64, seed=2)
    return train, test


def train_and_score(name: str, data) -> float:
    (train, y_train), (test, y_test) = data
    cfg = TRAINING[name]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model(name, 64, 1, **HPARAMS.get(name, {}))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(cfg["epochs"]):
            model.train()
            order = rng.permutation(N_TRAIN)
            for start in range(0, N_TRAIN, BATCH):
                idx = order[start : start + BATCH]
                x, mask = pad_bags([train[i] for i in idx])
                target = torch.as_tensor(y_train[idx], dtype=torch.float32)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    model(x, mask)[:, 0], target
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            scores = torch.cat(
                [model(*pad_bags(test[i : i + 20]))[:, 0] for i in range(0, N_TEST, 20)]
            )
    finally:
        torch.set_num_threads(threads)
    return float(roc_auc_score(y_test, scores.numpy()))


@pytest.mark.parametrize(
    "name",
    [
        "abmil",
        "chowder",
        "dsmil",
        pytest.param("hipt_mil", marks=pytest.mark.slow),
        pytest.param("transmil", marks=pytest.mark.slow),
    ],
)
def test_attention_type_head_reaches_test_auc_095_on_planted_witnesses(name, data):
    start = time.perf_counter()
    auc = train_and_score(name, data)
    RESULTS[name] = auc
    print(f"\n{name}: test AUC {auc:.3f} ({time.perf_counter() - start:.1f} s)")
    assert auc >= 0.95


def test_meanpool_is_reported_and_lower_at_1_to_5_percent_witnesses(data):
    auc = train_and_score("meanpool", data)
    print(f"\nmeanpool: test AUC {auc:.3f} (reported, not gated)")
    assert 0.4 <= auc < 0.95  # the mean dilutes 1-5% witnesses: it cannot match the others
    for name, other in RESULTS.items():
        assert auc < other, f"meanpool {auc:.3f} >= {name} {other:.3f}"
