"""MUSK and CONCH: official checkpoint layouts at tiny size, both embeddings, text side,
zero-shot end to end, hub ids offline.

Our modules were checked against the official code (lilab-stanford/MUSK
``musk.modeling``, MahmoodLab CONCH ``conch.open_clip_custom``) on tiny random
weights: max |diff| <= 6e-7 (MUSK image CLS, ms_aug, joint image and text) and 0
(CONCH); that check needs those repositories and is not part of this suite.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_mil.encoders import create_encoder, list_encoders
from wsi_mil.errors import ConfigError, WeightsNotFoundError
from wsi_mil.evaluation.zero_shot import make_class_prototypes, zero_shot_tiles
from wsi_mil.testing import tiny_models as tm

NAMES = ("musk", "conch")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("musk_conch")
    return {name: tm.save_official_tiny(name, root / name) for name in NAMES}


def test_both_are_registered_encoders():
    assert {"musk", "conch"} <= set(list_encoders())


@pytest.mark.parametrize("name", NAMES)
def test_mil_and_joint_embeddings(saved, name, tiles):
    mil = create_encoder(**saved[name])
    joint = create_encoder(**saved[name], embedding="joint")
    x = mil.preprocess(tiles)
    feats, emb = mil(x), joint(x)
    assert feats.shape == (2, mil.embed_dim) and emb.shape == (2, joint.embed_dim)
    assert joint.embed_dim == mil.joint_dim
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(mil.encode_image_joint(x), emb, rtol=0, atol=1e-6)
    assert mil.has_text and torch.isfinite(feats).all()


def test_musk_mil_feature_is_cls_at_1x_then_mean_cls_at_2x(saved, tiles):
    enc = create_encoder(**saved["musk"])
    x = enc.preprocess(tiles)  # (2, 3, 32, 32)
    dim = enc.joint_dim
    assert enc.embed_dim == 2 * dim
    feats = enc(x)
    model = enc.model
    torch.testing.assert_close(feats[:, :dim], model.image_cls(x))
    up = F.interpolate(x, scale_factor=2, mode="bicubic")
    quarters = [up[..., i:i + 32, j:j + 32] for i in (0, 32) for j in (0, 32)]
    expected = torch.stack([model.image_cls(q) for q in quarters]).mean(0)
    torch.testing.assert_close(feats[:, dim:], expected, rtol=1e-4, atol=1e-5)


def test_preprocessing_is_the_model_cards(saved):
    musk = create_encoder(**saved["musk"])
    assert (musk.preprocessing.resize, musk.preprocessing.interpolation) == ("center_crop", "bicubic")
    assert musk.preprocessing.mean == (0.5, 0.5, 0.5)
    conch = create_encoder(**saved["conch"])
    assert conch.preprocessing.mean[0] == pytest.approx(0.48145466)
    from wsi_mil.encoders.conch import CONCH_CFG
    from wsi_mil.encoders.musk import LARGE

    assert LARGE["img_size"] == 384 and CONCH_CFG["vision_cfg"]["image_size"] == 448


@pytest.mark.parametrize("name", NAMES)
def test_text_side_and_zero_shot_end_to_end(saved, name, tiles):
    enc = create_encoder(**saved[name])
    text = enc.encode_text(["tumor tissue", "normal mucosa", "adipose"])
    assert text.shape == (3, enc.joint_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(enc.encode_text(["adipose"])[0], text[2], rtol=1e-4, atol=1e-5)
    protos = make_class_prototypes(enc, [["tumor", "carcinoma"], "normal tissue", "stroma"])
    image = enc.encode_image_joint(enc.preprocess(tiles)).numpy()
    probs, preds = zero_shot_tiles(image, protos)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1) and preds.shape == (2,)


def test_musk_tokenizer_follows_xlm_r_ids_and_padding(saved):
    enc = create_encoder(**saved["musk"])
    ids, padding = enc.tokenizer(["lung adenocarcinoma", "zzzz qqq"])
    max_len = enc.tokenizer.max_len
    assert ids.shape == padding.shape == (2, max_len)
    n = int((padding[0] == 0).sum())
    assert ids[0, 0] == 0 and ids[0, n - 1] == 2 and (ids[0, n:] == 1).all()
    assert (ids[0, 1:n - 1] >= 4).all()  # sentencepiece ids shifted by the fairseq offset
    assert (ids[1, 1:int((padding[1] == 0).sum()) - 1] == 3).any()  # unknown pieces -> <unk>
    from wsi_mil.encoders.musk import MAX_TEXT_LEN

    assert MAX_TEXT_LEN == 100


def test_conch_tokens_reserve_the_last_slot_for_the_cls(saved):
    enc = create_encoder(**saved["conch"])
    ids = enc.tokenizer(["Tumor tissue"])
    assert ids.shape == (1, enc.model.text.context_length)
    assert ids[0, :4].tolist()[0] == 1 and 2 in ids[0].tolist() and ids[0, -1] == 0


@pytest.mark.parametrize("name", NAMES)
def test_image_side_works_without_a_tokenizer_and_text_side_says_how_to_add_it(name, tmp_path,
                                                                               tiles):
    info = tm.save_official_tiny(name, tmp_path)
    for f in tmp_path.iterdir():
        if f.name in ("tokenizer.spm", "conch_byte_level_bpe_uncased.json"):
            f.unlink()
    enc = create_encoder(**info)
    assert torch.isfinite(enc(enc.preprocess(tiles))).all()
    if name == "conch" and enc.tokenizer_path is not None:
        pytest.skip("the conch package is installed: its tokenizer is found")
    with pytest.raises(WeightsNotFoundError, match="tokenizer"):
        enc.encode_text(["tumor"])


@pytest.mark.parametrize("name, hub_id", [("musk", "xiangjx/musk"), ("conch", "MahmoodLab/conch")])
def test_hub_ids_load_offline_from_the_cache(saved, name, hub_id, tmp_path, monkeypatch, tiles):
    folder = tm.Path(saved[name]["weights"]).parent
    tm.save_hub_cache(tmp_path / "hub", hub_id, folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch = saved[name]["arch_overrides"]
    for weights in (None, f"hf_hub:{hub_id}"):
        enc = create_encoder(name, weights=weights, arch_overrides=arch)
        assert enc.weights_source == f"hub:{hub_id}" and enc.hub_id == hub_id
        assert enc.encode_text(["tumor"]).shape == (1, enc.joint_dim)


def test_missing_weights_name_the_gated_hub_ids():
    for name, hub_id in (("musk", "xiangjx/musk"), ("conch", "MahmoodLab/conch")):
        with pytest.raises(WeightsNotFoundError, match=hub_id):
            create_encoder(name)


def test_bad_embedding_is_a_config_error(saved):
    with pytest.raises(ConfigError, match="embedding"):
        create_encoder(**saved["musk"], embedding="patch")


@pytest.mark.parametrize("name", NAMES)
def test_zero_shot_cli_path_end_to_end_with_the_joint_encoder(saved, name, tmp_path):
    """Extract tile features with ``<name>_joint``, then run_zero_shot_tiles with its text side."""
    from PIL import Image

    from wsi_mil.evaluation.text_side import ClassText, text_side_of
    from wsi_mil.evaluation.zero_shot_runs import run_zero_shot_tiles
    from wsi_mil.pipeline.extract_tiles_stage import run_tile_extraction

    info = {**saved[name], "name": f"{name}_joint"}
    enc = create_encoder(**info)
    assert enc.name == f"{name}_joint" and enc.embed_dim == enc.joint_dim
    gen = np.random.default_rng(0)
    for label in ("tumor", "stroma"):
        (tmp_path / "tiles" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(gen.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                tmp_path / "tiles" / label / f"{i}.png")
    feats_dir = run_tile_extraction(tmp_path / "tiles", tmp_path / "features", encoder=enc,
                                    num_workers=0, device="cpu", batch_size=4)
    text = ClassText(text_side_of(enc), templates=["an image of {}."], labels_as_prompts=True)
    metrics = run_zero_shot_tiles(feats_dir, text, tmp_path / "zero_shot", n_bootstrap=5)
    assert len(metrics) > 0
