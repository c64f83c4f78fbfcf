"""The encoder cards (``wsi_mil.encoders.cards``) agree with the encoders they describe."""
from __future__ import annotations

import pytest

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.cards import CARDS, format_cards
from wsi_mil.encoders.registry import FAMILY_OF
from wsi_mil.testing import tiny_models as tm


def test_every_registered_encoder_has_a_card():
    assert set(CARDS) == set(FAMILY_OF)


def _build(name, folder):
    if name == "histo_stats":
        return create_encoder("histo_stats", precision=None)
    base = name.removesuffix("_joint")
    info = tm.save_official_tiny(base, folder)
    return create_encoder(**{**info, "name": name}, precision=None)


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_card_matches_the_encoder(name, tmp_path):
    card, enc = CARDS[name], _build(name, tmp_path)
    assert card.has_text == enc.has_text
    assert enc.precision_on("cuda") == card.cuda_precision
    assert enc.precision_on("cpu") == "fp32"
    if "/" in card.weights and not card.weights.startswith("local"):
        assert enc.hub_id == card.weights
    prep = enc.preprocessing
    if not card.preprocessing.startswith("preprocessor_config"):
        assert prep.interpolation in card.preprocessing
        assert (prep.resize == "center_crop") == ("short side" in card.preprocessing)
        assert (prep.resize_size > 0) == (name == "gigapath")  # resize larger than the crop
    if name in ("histo_stats", "resnet50", "resnet50_trunc"):  # tiny = full width
        assert enc.embed_dim == card.feature_dim
    if card.joint_dim and name.startswith("musk") and not name.endswith("_joint"):
        assert enc.embed_dim == 2 * enc.joint_dim and card.feature_dim == 2 * card.joint_dim


def test_full_size_dims_of_the_timm_cards():
    from wsi_mil.encoders.timm_vit import SPECS

    for name, spec in SPECS.items():
        assert CARDS[name].feature_dim == spec.embed_dim
        assert CARDS[name].cuda_precision == spec.precision


def test_format_cards_prints_one_row_per_encoder():
    text = format_cards(sorted(CARDS) + ["timm:<name>"])
    lines = text.splitlines()
    assert len(lines) == len(CARDS) + 2
    assert "musk" in text and "xiangjx/musk" in text and "fp32/fp16" in text
