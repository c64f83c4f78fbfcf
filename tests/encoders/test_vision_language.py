"""The pieces MUSK and CONCH share: tokenizer lookup, factory options, the ``_joint`` variants."""
from __future__ import annotations

import pytest

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.vision_language import check_factory_options, find_tokenizer
from wsi_mil.errors import ConfigError, WeightsNotFoundError


def test_find_tokenizer_order_and_named_errors(tmp_path):
    (tmp_path / "b.spm").write_text("x")
    (tmp_path / "a.spm").write_text("x")
    other = tmp_path / "pkg" / "tok.json"
    other.parent.mkdir()
    other.write_text("x")
    assert find_tokenizer("MUSK", tmp_path, None, ("a.spm", "b.spm")) == tmp_path / "a.spm"
    assert find_tokenizer("MUSK", tmp_path, None, ("c.spm", "b.spm")) == tmp_path / "b.spm"
    assert find_tokenizer("CONCH", tmp_path, None, ("c.json",), [tmp_path / "no.json", other]) == other
    assert find_tokenizer("CONCH", tmp_path, None, ("c.json",)) is None
    assert find_tokenizer("MUSK", tmp_path, str(other), ("a.spm",)) == other  # explicit wins
    with pytest.raises(WeightsNotFoundError, match="MUSK tokenizer '.*missing.spm' does not exist"):
        find_tokenizer("MUSK", tmp_path, str(tmp_path / "missing.spm"), ("a.spm",))


def test_factory_options_are_checked():
    check_factory_options("musk", "joint", {})
    with pytest.raises(ConfigError, match="choose one of"):
        check_factory_options("conch", "patch", {})
    with pytest.raises(ConfigError, match="unknown options \\['layers'\\]"):
        check_factory_options("conch", "mil", {"layers": 3})


@pytest.mark.parametrize("name", ["musk", "conch"])
def test_joint_variants_fix_their_embedding(name, tmp_path):
    with pytest.raises(ConfigError, match=f"'{name}_joint' has embedding='joint'; use '{name}'"):
        create_encoder(f"{name}_joint", weights=str(tmp_path), embedding="mil")
