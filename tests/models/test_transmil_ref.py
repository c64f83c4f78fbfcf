"""transmil_ref against the reference TransMIL (owkin/HistoSSLscaling rl_benchmarks)."""
from __future__ import annotations

from math import ceil, sqrt

import pytest
import torch

from wsi_mil.models import create_model

# rl_benchmarks.models.TransMIL(in_features=768, out_features=1) state_dict, key -> shape,
# derived from the reference code (proj = Identity, attention_type="original", PPEG
# convolutions without groups)
REFERENCE_768_1 = {
    "cls_token": (1, 1, 768),
    "cor.attn.qkv.weight": (2304, 768),
    "cor.attn.proj.weight": (768, 768),
    "cor.attn.proj.bias": (768,),
    "cor.norm1.weight": (768,),
    "cor.norm1.bias": (768,),
    "pos_enc.group_conv1.weight": (768, 768, 3, 3),
    "pos_enc.group_conv1.bias": (768,),
    "pos_enc.group_conv2.weight": (768, 768, 5, 5),
    "pos_enc.group_conv2.bias": (768,),
    "pos_enc.group_conv3.weight": (768, 768, 7, 7),
    "pos_enc.group_conv3.bias": (768,),
    "agg.attn.qkv.weight": (2304, 768),
    "agg.attn.proj.weight": (768, 768),
    "agg.attn.proj.bias": (768,),
    "agg.norm1.weight": (768,),
    "agg.norm1.bias": (768,),
    "norm.weight": (768,),
    "norm.bias": (768,),
    "head.weight": (1, 768),
    "head.bias": (1,),
}


def test_state_dict_has_the_reference_keys_and_shapes_and_53_7_m_parameters():
    with torch.device("meta"):
        model = create_model("transmil_ref", 768, 1)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == REFERENCE_768_1
    assert sum(p.numel() for p in model.parameters()) == 53_683_969


def _reference_forward(model, x):
    """The reference TransMIL.forward, transcribed, with the model's weights (one unpadded bag)."""
    def block(b, t):
        h = b.norm1(t)
        bsz, n, c = h.shape
        qkv = b.attn.qkv(h).reshape(bsz, n, 3, 8, c // 8).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // 8) ** -0.5).softmax(dim=-1)
        return t + b.attn.proj((attn @ v).transpose(1, 2).reshape(bsz, n, c))

    n = x.shape[1]
    m = ceil(sqrt(n)) ** 2 - n
    x = torch.cat((x, x[:, :m, :]), dim=1)  # squaring
    x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    x = block(model.cor, x)
    cls, tiles = x[:, :1], x[:, 1:]
    side = int(sqrt(tiles.shape[1]))
    g = tiles.reshape(-1, side, side, tiles.shape[-1]).permute(0, 3, 1, 2)
    p = model.pos_enc
    g = g + p.group_conv1(g) + p.group_conv2(g) + p.group_conv3(g)
    x = torch.cat((cls, g.permute(0, 2, 3, 1).reshape(x.shape[0], -1, tiles.shape[-1])), dim=1)
    x = block(model.agg, x)
    return model.head(model.norm(x[:, 0]))


@pytest.mark.parametrize("n_tiles", [1, 7, 16, 50])
def test_logits_equal_the_transcribed_reference_forward(n_tiles):
    torch.manual_seed(0)
    model = create_model("transmil_ref", 64, 3).eval()
    torch.nn.init.normal_(model.head.weight)
    torch.nn.init.normal_(model.cls_token)
    x = torch.randn(1, n_tiles, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(model, x), atol=1e-5, rtol=1e-5)


def test_initialisation_is_the_reference_one_zero_classifier_and_cls_token():
    torch.manual_seed(0)
    model = create_model("transmil_ref", 64, 2)
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert torch.count_nonzero(model.cls_token) == 0
    assert 0.015 < float(model.cor.attn.qkv.weight.detach().std()) < 0.025  # trunc_normal_(std=0.02), cut at +-2
    assert torch.count_nonzero(model.cor.attn.proj.bias) == 0


def test_transmil_ref_depends_on_tile_order_as_documented():
    torch.manual_seed(0)
    model = create_model("transmil_ref", 32, 1).eval()
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(1, 50, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x.flip(1)), model(x), atol=1e-5)
