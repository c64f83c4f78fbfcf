"""Registry contract: names, unknown names, missing weights."""
from __future__ import annotations

import pytest

from wsi_mil.encoders import create_encoder, list_encoders
from wsi_mil.errors import ConfigError, FileFormatError, RegistryError, WeightsNotFoundError
from wsi_mil.testing import tiny_models as tm

REQUIRED = ["phikon", "phikon_v2", "uni", "uni2_h", "virchow2", "h_optimus_0", "gigapath",
            "ctranspath", "resnet50", "resnet50_trunc", "plip", "biomedclip", "unimed_clip", "musk", "conch",
            "histo_stats", "timm:<name>", "hf:<repo>", "open_clip:<name>"]


def test_list_encoders_contains_every_required_name():
    names = list_encoders()
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))


def test_unknown_name_raises_registry_error_listing_the_choices():
    with pytest.raises(RegistryError) as err:
        create_encoder("unii")
    assert "'unii'" in str(err.value) and "uni2_h" in str(err.value) and "histo_stats" in str(err.value)


def test_unknown_prefix_raises_registry_error():
    with pytest.raises(RegistryError, match="timm:<name>"):
        create_encoder("keras:resnet")


def test_bad_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="fp32"):
        create_encoder("histo_stats", precision="int8")


@pytest.mark.parametrize("name, hub_id", [("uni", "MahmoodLab/UNI"), ("phikon", "owkin/phikon"),
                                          ("biomedclip", "microsoft/BiomedCLIP"),
                                          ("plip", "vinid/plip")])
def test_missing_weights_offline_name_the_model_the_hub_id_and_how_to_supply_them(name, hub_id):
    with pytest.raises(WeightsNotFoundError) as err:
        create_encoder(name)
    msg = str(err.value)
    for part in (repr(name), hub_id, "weights=", "huggingface-cli login", "HF_TOKEN",
                 "HF_HUB_OFFLINE"):
        assert part in msg, part


def test_model_without_a_hub_copy_asks_for_a_local_file():
    with pytest.raises(WeightsNotFoundError, match="weights=/path"):
        create_encoder("ctranspath")


def test_nonexistent_weights_path_is_reported_with_the_path(tmp_path):
    bad = tmp_path / "nope" / "uni.bin"
    with pytest.raises(WeightsNotFoundError, match="nope"):
        create_encoder("uni", weights=bad)


def test_empty_weights_folder_is_reported(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no weight file"):
        create_encoder("uni", weights=tmp_path)


def test_gated_repo_error_becomes_weights_not_found(monkeypatch):
    from unittest.mock import Mock

    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(**kwargs):
        raise GatedRepoError("403 gated", response=Mock(headers={}, status_code=403))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(WeightsNotFoundError, match="gated") as err:
        create_encoder("virchow2")
    assert "paige-ai/Virchow2" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_weights_of_another_architecture_fail_loudly(tmp_path):
    info = tm.save_tiny_timm(tmp_path, "virchow2")
    with pytest.raises(FileFormatError, match="do not fit encoder 'uni'"):
        create_encoder("uni", weights=info["weights"])


def test_pickled_objects_are_refused(tmp_path):
    import torch

    path = tmp_path / "evil.pth"
    torch.save({"model": ConfigError("x")}, path)
    with pytest.raises(FileFormatError, match="weights_only=True"):
        create_encoder("ctranspath", weights=path)


def test_unknown_option_is_a_config_error(tmp_path):
    info = tm.save_tiny_timm(tmp_path, "uni")
    with pytest.raises(ConfigError, match="unknown options"):
        create_encoder(**info, colour="blue")


def test_a_missing_relative_checkpoint_path_is_not_mistaken_for_a_hub_id():
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_encoder("uni", weights="weights/uni.bin")


def test_the_static_name_table_matches_what_the_family_modules_register():
    from wsi_mil.encoders.registry import (
        ENCODERS,
        FAMILY_OF,
        PREFIX_OF,
        PREFIXES,
        import_all_families,
    )

    import_all_families()
    assert set(ENCODERS.list()) == set(FAMILY_OF)
    assert set(PREFIXES.list()) == set(PREFIX_OF)
