"""The mixed-model guard: features and text side must be one model (encoder + weights)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.provenance import (
    ProvenanceMismatchError,
    check_consistent,
    check_same_model,
    same_model,
)
from wsi_mil.evaluation.text_side import learned_logit_scale, resolve_logit_scale
from wsi_mil.io.feature_sources import read_slide_provenance
from wsi_mil.io.features import (
    FeatureProvenance,
    read_tile_feature_set,
    write_features,
    write_reference_features,
    write_tile_features,
)

PLIP = FeatureProvenance("plip", "a" * 64)
BIOMEDCLIP = FeatureProvenance("biomedclip", "b" * 64)


def test_weights_fingerprints_decide_when_both_sides_have_one():
    assert same_model(PLIP, FeatureProvenance("plip", "a" * 64)) is True
    assert same_model(PLIP, FeatureProvenance("plip", "c" * 64)) is False  # same name, other weights
    alias = FeatureProvenance("open_clip:hf-hub:microsoft/BiomedCLIP", "b" * 64)
    assert same_model(BIOMEDCLIP, alias) is True  # same weights under another name
    assert same_model(PLIP, FeatureProvenance("plip", None)) is True  # names when a sha is missing
    assert same_model(PLIP, FeatureProvenance("quiltnet", None)) is False
    assert same_model(PLIP, FeatureProvenance()) is None  # nothing recorded: undecidable


def test_a_mismatch_is_a_named_error_unless_allowed(caplog_loguru):
    with pytest.raises(ProvenanceMismatchError, match="allow_mixed_models=true") as err:
        check_same_model(BIOMEDCLIP, PLIP, what="zero-shot")
    assert isinstance(err.value, ConfigError) and "biomedclip" in str(err.value)
    assert check_same_model(BIOMEDCLIP, PLIP, allow_mixed_models=True) is False
    assert "allowed by allow_mixed_models=true" in caplog_loguru.text
    assert check_same_model(PLIP, PLIP) is True
    assert check_same_model(FeatureProvenance(source="old folder"), PLIP) is False
    assert "cannot check" in caplog_loguru.text


def test_slides_of_one_run_must_come_from_one_model():
    check_consistent([("s1", PLIP), ("s2", FeatureProvenance()), ("s3", PLIP)], "features")
    with pytest.raises(ProvenanceMismatchError, match="s2"):
        check_consistent([("s1", PLIP), ("s2", BIOMEDCLIP)], "features")


def test_readers_return_the_encoder_and_weights_recorded_at_extraction(tmp_path, rng):
    feats = rng.normal(size=(3, 4)).astype(np.float32)
    write_tile_features(tmp_path / "t", feats, np.array(["a", "b", "c"]), np.array(["x", "y", "x"]))
    assert not read_tile_feature_set(tmp_path / "t").provenance.known  # no meta.json
    (tmp_path / "t" / "meta.json").write_text(json.dumps(
        {"encoder": "plip", "weights_sha256": "a" * 64, "dataset": "crc"}))
    got = read_tile_feature_set(tmp_path / "t")
    assert got.provenance == FeatureProvenance("plip", "a" * 64, str(tmp_path / "t" / "meta.json"))
    assert got.qualified_ids.tolist() == ["crc:a", "crc:b", "crc:c"]

    coords = np.zeros((3, 3), np.int64)
    write_features(tmp_path / "h5" / "s1.h5", feats, coords, coords[:, :2],
                   {"wsi_mil_version": "x", "encoder": "biomedclip", "weights_sha256": "b" * 64})
    assert read_slide_provenance(tmp_path / "h5", "s1") == FeatureProvenance(
        "biomedclip", "b" * 64, str(tmp_path / "h5" / "s1.h5"))
    write_reference_features(tmp_path / "ref" / "s1" / "features.npy", feats, coords)
    assert not read_slide_provenance(tmp_path / "ref", "s1", "reference").known
    (tmp_path / "ref" / "s1" / "meta.json").write_text(json.dumps({"encoder": "plip",
                                                                    "weights_sha256": "a" * 64}))
    assert same_model(read_slide_provenance(tmp_path / "ref", "s1"), PLIP)


def test_the_learned_logit_scale_is_read_in_log_space_and_overridable():
    class Clip:
        model = torch.nn.Module()

    Clip.model.logit_scale = torch.nn.Parameter(torch.tensor(np.log(50.0)))
    assert learned_logit_scale(Clip()) == pytest.approx(50.0, rel=1e-5)

    class Plain:
        logit_scale = 30.0  # a number on the encoder is the scale itself

    assert learned_logit_scale(Plain()) == 30.0
    assert learned_logit_scale(object()) is None
    assert resolve_logit_scale(None, 42.0, "t") == 42.0
    assert resolve_logit_scale(10.0, 42.0, "t") == 10.0
    assert resolve_logit_scale(None, None, "t") == 100.0
    with pytest.raises(ConfigError, match="logit_scale"):
        resolve_logit_scale(-1.0, None, "t")
