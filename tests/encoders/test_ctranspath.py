"""CTransPath: published (timm 0.5.4) key layout -> timm >= 0.9 Swin with ConvStem."""
from __future__ import annotations

import torch

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.ctranspath import convert_ctranspath_state_dict
from wsi_mil.testing import tiny_models as tm


def test_old_layout_keys_map_onto_the_timm_model_keys():
    model = tm.tiny_ctranspath_model()
    old = tm.to_old_ctranspath_layout(model)
    assert "layers.0.downsample.reduction.weight" in old["model"]
    assert "head.weight" in old["model"]
    assert any(k.endswith("relative_position_index") for k in old["model"])
    new = convert_ctranspath_state_dict(old)
    assert set(new) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(new[key], value), key


def test_conversion_is_idempotent_on_the_new_layout():
    model = tm.tiny_ctranspath_model()
    state = {k: v for k, v in model.state_dict().items()}
    assert set(convert_ctranspath_state_dict(state)) == set(state)


def test_published_checkpoint_format_gives_the_original_model_features(tmp_path, tiles):
    info = tm.save_tiny_ctranspath(tmp_path)
    enc = create_encoder(**info)
    ref = tm.tiny_ctranspath_model()
    x = enc.preprocess(tiles)
    assert enc.embed_dim == 8 * tm.TINY_SWIN["embed_dim"]
    torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)
