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

N_TEST, BATCH = 80, 8
# Short trainings, sized to ~<20 s per head on one idle CPU thread (slower ones
# are marked slow). With 120 training bags Chowder (depending on the init) and
# TransMIL memorise them (train loss ~0, test AUC 0.5-0.9); 400 bags generalise.
TRAINING = {
    "abmil": {"n_train": 400, "epochs": 3, "lr": 1e-3},
    "chowder": {"n_train": 400, "epochs": 6, "lr": 1e-3},
    "dsmil": {"n_train": 400, "epochs": 3, "lr": 1e-3},
    "hipt_mil": {"n_train": 120, "epochs": 3, "lr": 1e-3},
    "meanpool": {"n_train": 400, "epochs": 20, "lr": 1e-3},
    "transmil": {"n_train": 400, "epochs": 2, "lr": 1e-3},
}
# TransMIL's default 256 landmarks cost a 256 x 256 pseudo-inverse per head and
# layer whatever the bag size; a slimmer TransMIL keeps the test affordable.
HPARAMS = {"transmil": {"proj_dim": 128, "n_landmarks": 32}}
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def data():
    train = make_synthetic_bags(400, in_dim=64, seed=1)
    test = make_synthetic_bags(N_TEST, in_dim=64, seed=2)
    low = make_synthetic_bags(N_TEST, in_dim=64, witness_rate=(0.01, 0.01), seed=3)
    return train, test, low


def _auc(model: torch.nn.Module, bags: list[np.ndarray], labels: np.ndarray) -> float:
    with torch.no_grad():
        batches = [pad_bags(bags[i : i + 20]) for i in range(0, len(bags), 20)]
        scores = torch.cat([model(x, mask)[:, 0] for x, mask in batches])
    return float(roc_auc_score(labels, scores.numpy()))


def train_and_score(name: str, data) -> tuple[float, float]:
    """Test AUC at 1-5% witnesses and at 1% witnesses after a short training."""
    (train, y_train), (test, y_test), (low, y_low) = data
    cfg = TRAINING[name]
    n_train = cfg["n_train"]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model(name, 64, 1, **HPARAMS.get(name, {}))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(cfg["epochs"]):
            model.train()
            order = rng.permutation(n_train)
            for start in range(0, n_train, BATCH):
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
        return _auc(model, test, y_test), _auc(model, low, y_low)
    finally:
        torch.set_num_threads(threads)


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
    auc, auc_low = train_and_score(name, data)
    RESULTS[name] = auc_low
    took = time.perf_counter() - start
    print(f"\n{name}: test AUC {auc:.3f}, at 1% witnesses {auc_low:.3f} ({took:.1f} s)")
    assert auc >= 0.95


def test_meanpool_is_reported_and_lower_at_low_witness_rates(data):
    auc, auc_low = train_and_score("meanpool", data)
    print(f"\nmeanpool: test AUC {auc:.3f}, at 1% witnesses {auc_low:.3f} (reported, not gated)")
    # The mean dilutes 1% witnesses to a shift of 0.03 per signal dim against a
    # noise of ~0.05-0.14: MeanPool falls well behind the attention-type heads.
    assert auc_low < 0.9
    for name, other in RESULTS.items():
        assert auc_low < other, f"meanpool {auc_low:.3f} >= {name} {other:.3f} at 1% witnesses"
