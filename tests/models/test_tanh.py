"""layers.Tanh (2 sigmoid(2x) - 1 on CPU float32) against torch.tanh: values, gradients, state dicts."""
from __future__ import annotations

import torch

from wsi_mil.models.layers import GatedAttention, Tanh


def test_values_and_gradients_match_torch_tanh():
    x64 = torch.cat([torch.linspace(-30, 30, 20_001, dtype=torch.float64),
                     torch.randn(50_000, dtype=torch.float64) * 3,
                     torch.tensor([0.0, 1e-30, -1e-8, 1e-4, float("inf"), float("-inf")], dtype=torch.float64)])
    x = x64.float().requires_grad_(True)
    y = Tanh()(x)
    exact = torch.tanh(x.detach().double())
    assert (y.detach().double() - exact).abs().max() < 3e-7
    assert y.dtype == torch.float32 and bool(y.abs().le(1).all())
    g = torch.randn_like(x)
    y.backward(g)
    x_ref = x.detach().clone().requires_grad_(True)
    torch.tanh(x_ref).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=2e-6, rtol=1e-5)


def test_other_dtypes_use_torch_tanh_and_state_dict_keys_are_unchanged():
    x = torch.randn(100, dtype=torch.float64)
    assert torch.equal(Tanh()(x), torch.tanh(x))
    keys = set(GatedAttention(8, 4).state_dict())
    assert keys == {"attention_a.0.weight", "attention_a.0.bias", "attention_b.0.weight", "attention_b.0.bias",
                    "attention_c.weight", "attention_c.bias"}
