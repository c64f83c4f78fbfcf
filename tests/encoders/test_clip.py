"""CLIP-style encoders: text side, joint space."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsi_mil.encoders import create_encoder
from wsi_mil.testing import tiny_models as tm

SAVERS = {"plip": tm.save_tiny_plip, "biomedclip": tm.save_tiny_open_clip,
          "unimed_clip": tm.save_tiny_unimed_clip,
          "open_clip:ViT-B-16": tm.save_tiny_open_clip_builtin}


@pytest.fixture(scope="module")
def clip_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return {name: create_encoder(**saver(root / name.replace(":", "_")))
            for name, saver in SAVERS.items()}


@pytest.mark.parametrize("name", sorted(SAVERS))
def test_text_and_image_embeddings_share_the_joint_space(clip_models, name, tiles):
    enc = clip_models[name]
    assert enc.has_text
    prompts = ["an image of tumor tissue", "normal mucosa", "adipose"]
    text = enc.encode_text(prompts)
    image = enc(enc.preprocess(tiles))
    assert text.shape == (3, enc.embed_dim) and image.shape == (2, enc.embed_dim)
    assert text.dtype == torch.float32 and torch.isfinite(text).all()
    sims = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T  # (B, P)
    assert sims.shape == (2, 3) and (sims.abs() <= 1 + 1e-5).all()


@pytest.mark.parametrize("name", sorted(SAVERS))
def test_text_embeddings_are_deterministic_and_per_prompt(clip_models, name):
    enc = clip_models[name]
    both = enc.encode_text(["tumor", "stroma"])
    torch.testing.assert_close(enc.encode_text(["tumor", "stroma"]), both, rtol=0, atol=0)
    torch.testing.assert_close(enc.encode_text(["stroma"])[0], both[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1])


def test_vision_only_encoders_have_no_text_side(tmp_path):
    enc = create_encoder("histo_stats")
    assert not enc.has_text
    with pytest.raises(NotImplementedError):
        enc.encode_text(["tumor"])
