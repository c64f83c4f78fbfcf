"""Stacked fits == one-at-a-time fits, model by model (the batched engine's core)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from wsi_mil.data.bags import BagStore
from wsi_mil.models import create_model
from wsi_mil.models.base import trusted_inputs
from wsi_mil.training.fit import FitParams, Targets, fit, predict
from wsi_mil.training.fit_stacked import Stream, fit_stacked, predict_stacked
from wsi_mil.training.stacked import StackedAdam, StackedHeads, stackable


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(int(rng.integers(3, 40)), 10)).astype(np.float32) for _ in range(30)]
    y = rng.integers(0, 2, 30)
    for b, label in zip(bags, y, strict=True):
        b[:2] += 1.5 * label
    return BagStore.from_arrays(bags, [f"s{i}" for i in range(30)]), Targets("classification", 1, y=y)


@pytest.mark.parametrize("chunk_bytes", [64 * 2**20, 1])  # one chunk; every stream and row apart
@pytest.mark.parametrize("model", ["meanpool", "abmil", "chowder", "dsmil"])
def test_each_stacked_model_trains_and_scores_as_its_own_fit(data, model, chunk_bytes):
    store, targets = data
    perm = np.random.default_rng(1).permutation(30)
    # three streams: different training sets (one smaller than a batch), seeds, validation sets
    streams = [Stream(np.sort(perm[:20]), perm[20:], 11), Stream(perm[5:25], perm[25:], 12),
               Stream(perm[:5], perm[5:12], 13)]
    lr = np.array([[1e-3, 1e-2, 1e-3], [3e-3, 1e-3, 1e-2]])
    wd = np.array([[1e-4, 1e-3, 1e-4], [1e-4, 1e-4, 1e-3]])
    epochs = np.array([[3, 3, 2], [1, 3, 3]])  # models stop at different epochs
    base = FitParams(model, batch_size=8, n_tiles=16, seed=0)
    result = fit_stacked(store, targets, streams, base, lr, wd, epochs, chunk_bytes=chunk_bytes)
    scored = predict_stacked(result, store, targets, [st.val_idx for st in streams], base)
    for g in range(2):
        for s, st in enumerate(streams):
            p = replace(base, lr=lr[g, s], weight_decay=wd[g, s], epochs=int(epochs[g, s]), seed=st.seed)
            one = fit(store, targets, st.train_idx, p, val_idx=st.val_idx)
            np.testing.assert_allclose(result.curves[g, s, : epochs[g, s]], one.val_curve, atol=1e-6)
            assert np.isnan(result.curves[g, s, epochs[g, s]:]).all()
            ref = predict(one.model, store, st.val_idx, "classification", 16, "random", st.seed, 8)
            np.testing.assert_allclose(scored[g][s], ref, atol=1e-5)


def test_stacked_adam_equals_torch_adam_per_model_with_skipped_steps():
    torch.manual_seed(0)
    heads = [create_model("abmil", 6, 2, d_model_attention=4, mlp_hidden=[5]) for _ in range(3)]
    stacked = StackedHeads(heads)
    lr, wd = torch.tensor([1e-2, 1e-3, 3e-2]), torch.tensor([0.0, 1e-2, 1e-3])
    opt = StackedAdam(list(stacked.parameters()), lr, wd)
    refs = [torch.optim.Adam(h.parameters(), lr=float(lr[m]), weight_decay=float(wd[m])) for m, h in enumerate(heads)]
    x, mask = torch.randn(3, 4, 7, 6), torch.ones(3, 4, 7, dtype=torch.bool)
    for step in range(4):
        active = torch.tensor([True, step != 1, step % 2 == 0])
        with trusted_inputs():
            out = stacked(x.reshape(12, 7, 6), mask.reshape(12, 7)).view(3, 4, 2)
            opt.zero_grad()
            ((out ** 2).mean((1, 2)) * active).sum().backward()
            opt.step(active)
            for m, h in enumerate(heads):
                if active[m]:
                    refs[m].zero_grad()
                    (h(x[m], mask[m]) ** 2).mean().backward()
                    refs[m].step()
    for m, h in enumerate(heads):
        for name, value in h.state_dict().items():
            if name != "attention.attention_c.bias":  # zero gradient in exact arithmetic: Adam follows noise
                torch.testing.assert_close(stacked.state_dict_of(m)[name], value, atol=1e-6, rtol=1e-5)


def test_stacked_adam_fused_path_equals_torch_adam_per_model(monkeypatch):
    """All models step every time: the fused kernel runs once per run of models sharing lr / decay."""
    torch.manual_seed(1)
    heads = [create_model("abmil", 6, 1, d_model_attention=4, mlp_hidden=[5]) for _ in range(4)]
    stacked = StackedHeads(heads)
    lr, wd = torch.tensor([1e-2, 1e-2, 3e-3, 3e-3]), torch.tensor([0.0, 0.0, 1e-2, 1e-2])
    opt = StackedAdam(list(stacked.parameters()), lr, wd)
    assert [r[:2] for r in opt._runs] == [(0, 2), (2, 4)]
    calls = []
    fused = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: (calls.append(k["lr"]), fused(*a, **k)))
    refs = [torch.optim.Adam(h.parameters(), lr=float(lr[m]), weight_decay=float(wd[m])) for m, h in enumerate(heads)]
    x, mask = torch.randn(4, 3, 7, 6), torch.ones(4, 3, 7, dtype=torch.bool)
    for _ in range(5):
        with trusted_inputs():
            out = stacked(x.reshape(12, 7, 6), mask.reshape(12, 7)).view(4, 3)
            opt.zero_grad()
            (out ** 2).mean(1).sum().backward()
            opt.step(torch.ones(4, dtype=torch.bool))
        for m, h in enumerate(heads):
            refs[m].zero_grad()
            (h(x[m], mask[m]) ** 2).mean().backward()
            refs[m].step()
    assert len(calls) == 10 and sorted(set(calls)) == pytest.approx([3e-3, 1e-2])  # 5 steps x 2 runs
    for m, h in enumerate(heads):
        for name, value in h.state_dict().items():
            if name != "attention.attention_c.bias":  # zero gradient in exact arithmetic: Adam follows noise
                torch.testing.assert_close(stacked.state_dict_of(m)[name], value, atol=1e-6, rtol=1e-5)


def test_heads_outside_linear_layers_are_not_stackable():
    ok, why = stackable(create_model("transmil", 8, 1))
    assert not ok and "cls_token" in why
    assert stackable(create_model("chowder", 8, 1)) == (True, "")


def test_stacked_gradients_keep_the_parameter_layout_and_state_dicts_are_row_major_copies():
    """The batched matmul's weight gradient comes out in the parameters' own (contiguous) layout, so
    autograd keeps it instead of copying it each step; a model's state dict is the nn.Linear
    layout and shares no memory with the stacked parameters (1-row weights included)."""
    torch.manual_seed(2)
    heads = [create_model("abmil", 6, 1, d_model_attention=4, mlp_hidden=[5]) for _ in range(3)]
    stacked = StackedHeads(heads)
    x, mask = torch.randn(3, 4, 7, 6), torch.ones(3, 4, 7, dtype=torch.bool)
    for lo, hi in [(0, 3), (1, 2)]:  # every model (batched matmuls); one model (the plain-matmul path)
        stacked.zero_grad()
        with trusted_inputs(), stacked.models(lo, hi):
            out = stacked(x[lo:hi].reshape(-1, 7, 6), mask[lo:hi].reshape(-1, 7))
        if (lo, hi) == (0, 3):  # each parameter feeds its matmul directly: no slice / transpose node whose
            # backward would copy (or zero-fill and copy) a full-size gradient every step
            consumers = _parameter_consumers(out.grad_fn)
            assert set(consumers) == {id(p) for p in stacked.parameters()}
            allowed = {"BaddbmmBackward0", "BmmBackward0", "UnsqueezeBackward0"}  # the bias's unsqueeze: a view
            assert {name for names in consumers.values() for name in names} <= allowed
        out.sum().backward()
        for name, p in stacked.named_parameters():
            assert p.is_contiguous() and p.grad.is_contiguous(), name
    sd = stacked.state_dict_of(1)
    for name, value in heads[1].state_dict().items():
        assert sd[name].is_contiguous() and sd[name].shape == value.shape, name
        torch.testing.assert_close(sd[name], value)
    before = sd["attention.attention_c.weight"].clone()  # (1, 4): contiguous as a view too
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(1.0)
    torch.testing.assert_close(sd["attention.attention_c.weight"], before)


def _parameter_consumers(root) -> dict[int, set[str]]:
    """id(parameter) -> names of the autograd nodes that take it as an input."""
    out: dict[int, set[str]] = {}
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None and hasattr(child, "variable"):
                out.setdefault(id(child.variable), set()).add(node.name())
            todo.append(child)
    return out
