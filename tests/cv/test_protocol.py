"""protocol=reference: the reference's settings where they are not bugs, each change reported."""
from __future__ import annotations

import pytest

from wsi_mil.cv.settings import CVSettings, apply_protocol
from wsi_mil.errors import ConfigError


def test_default_protocol_changes_nothing():
    s = CVSettings("classification", "abmil")
    assert apply_protocol(s) == (s, [])


def test_reference_protocol_fixes_tiles_dtype_auc_and_head_specific_rules():
    s, changed = apply_protocol(CVSettings("classification", "hipt_mil", protocol="reference", encoder="resnet50",
                                           feature_dtype="float16", epochs=50))
    assert (s.tile_sampling, s.n_tiles, s.feature_dtype, s.auc_classes) == ("fixed", 1000, "float32", "present")
    assert s.batch_size == 1 and s.epochs == 100
    assert any(c.startswith("batch_size=1") for c in changed) and any("epochs=100" in c for c in changed)
    t, _ = apply_protocol(CVSettings("classification", "transmil", hparams={"proj_dim": 64}, protocol="reference"))
    assert t.model == "transmil_ref" and t.hparams == {} and t.batch_size == 16 and t.epochs == 50


def test_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="reference"):
        CVSettings("classification", "abmil", protocol="paper")
