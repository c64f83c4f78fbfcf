"""Every encoder family loads offline through the real code path from tiny saved models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.weights import ARCH_FILE
from wsi_mil.testing import tiny_models as tm

# name -> (hub id used for the hub-cache test, weights argument for it; None = default hub id)
FAMILIES = {
    "uni": ("MahmoodLab/UNI", None),
    "uni2_h": ("MahmoodLab/UNI2-h", None),
    "virchow2": ("paige-ai/Virchow2", None),
    "h_optimus_0": ("bioptimus/H-optimus-0", None),
    "gigapath": ("prov-gigapath/prov-gigapath", None),
    "ctranspath": ("someone/ctranspath-mirror", "hf-hub:someone/ctranspath-mirror"),
    "resnet50_trunc": ("timm/resnet50.tv_in1k", None),
    "resnet50": ("timm/resnet50.tv_in1k", None),
    "phikon": ("owkin/phikon", None),
    "phikon_v2": ("owkin/phikon-v2", None),
    "plip": ("vinid/plip", None),
    "biomedclip": ("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", None),
    "unimed_clip": ("someone/unimed-clip-tiny", "someone/unimed-clip-tiny"),
}
DECLARED_DIM = {"resnet50_trunc": 1024, "resnet50": 2048, "unimed_clip": 512}
EXTRA = {  # weights formats beyond the registered savers
    "phikon_ibot": ("phikon", tm.save_tiny_ibot),
    "timm_generic": ("timm:vit_small_patch16_224", tm.save_tiny_timm_generic),
    "open_clip_builtin": ("open_clip:ViT-B-16", tm.save_tiny_open_clip_builtin),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("tiny")
    out = {name: tm.save_tiny_encoder(name, root / name) for name in FAMILIES}
    for key, (_, saver) in EXTRA.items():
        out[key] = saver(root / key)
    return out


def _check(enc, tiles, expected_dim=None):
    feats = enc(enc.preprocess(tiles))
    assert feats.shape == (tiles.shape[0], enc.embed_dim)
    assert feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    if expected_dim is not None:
        assert enc.embed_dim == expected_dim
    assert enc.weights_sha256 and len(enc.weights_sha256) == 64
    return feats


@pytest.mark.parametrize("name", sorted(FAMILIES) + sorted(EXTRA))
def test_family_loads_from_the_saved_weights_path(saved, name, tiles):
    info = saved[name]
    enc = create_encoder(**info)
    _check(enc, tiles, DECLARED_DIM.get(name))
    assert enc.weights_source.startswith("local:")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_loads_from_a_file_and_from_its_folder(saved, name, tiles):
    weights = Path(saved[name]["weights"])
    folder = weights if weights.is_dir() else weights.parent
    file = weights if weights.is_file() else next(
        f for f in sorted(folder.iterdir())
        if f.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    a = _check(create_encoder(name, weights=file), tiles, DECLARED_DIM.get(name))
    b = _check(create_encoder(name, weights=folder), tiles, DECLARED_DIM.get(name))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_loads_from_a_hand_built_hub_cache_offline(saved, name, tiles, tmp_path,
                                                          monkeypatch):
    hub_id, weights_arg = FAMILIES[name]
    weights = Path(saved[name]["weights"])
    folder = weights if weights.is_dir() else weights.parent
    if name == "unimed_clip":  # a hub repo holds an open_clip folder layout
        folder = Path(tm.save_tiny_open_clip(tmp_path / "unimed_folder", name="unimed_clip")["weights"])
    cache = tmp_path / "hub"
    snapshot = tm.save_hub_cache(cache, hub_id, folder)
    assert (cache / f"models--{hub_id.replace('/', '--')}" / "refs" / "main").is_file()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = create_encoder(name, weights=weights_arg)
    _check(enc, tiles)
    assert enc.weights_source == f"hub:{hub_id}"
    if name != "unimed_clip":
        ref = create_encoder(name, weights=folder)
        assert enc.weights_sha256 == ref.weights_sha256
        torch.testing.assert_close(enc(enc.preprocess(tiles)), ref(ref.preprocess(tiles)))
    assert snapshot.is_dir()


def test_hub_cache_is_also_found_through_hf_home(saved, tiles, tmp_path, monkeypatch):
    weights = Path(saved["uni"]["weights"])
    tm.save_hub_cache(tmp_path / "home" / "hub", "MahmoodLab/UNI", weights.parent)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    _check(create_encoder("uni"), tiles)


def test_the_same_weights_give_identical_features_across_loads(saved, tiles):
    a = create_encoder(**saved["virchow2"])
    b = create_encoder(**saved["virchow2"])
    x = a.preprocess(tiles)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)


def test_virchow2_concatenates_cls_and_mean_of_patch_tokens_without_registers(saved, tiles):
    enc = create_encoder(**saved["virchow2"])
    x = enc.preprocess(tiles)
    tokens = enc.model.forward_features(x)  # (B, 1 + 4 + N, D)
    assert enc.model.num_prefix_tokens == 5
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    torch.testing.assert_close(enc(x), expected)
    assert enc.embed_dim == 2 * tokens.shape[-1]


def test_ibot_teacher_checkpoint_maps_exactly_onto_the_vit(saved, tiles):
    enc = create_encoder(**saved["phikon_ibot"])
    ref = tm.tiny_ibot_vit()
    x = enc.preprocess(tiles)
    torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)  # teacher, not the student


def test_arch_overrides_argument_equals_the_sidecar_file(saved, tiles, tmp_path):
    weights = Path(saved["gigapath"]["weights"])
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / weights.name).write_bytes(weights.read_bytes())
    assert not (alone / ARCH_FILE).exists()
    enc = create_encoder("gigapath", weights=alone / weights.name, arch_overrides=tm.TINY_VIT)
    ref = create_encoder(**saved["gigapath"])
    x = enc.preprocess(tiles)
    torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cpu_still_returns_finite_fp32(saved, tiles, precision):
    from wsi_mil.encoders.base import cpu_native_precisions

    enc = create_encoder(**saved["uni"], precision=precision)
    assert enc.requested_precision == precision
    # explicit lower precision runs on CPU only where the CPU computes it natively
    assert enc.precision == (precision if precision in cpu_native_precisions() else "fp32")
    assert enc.precision_used == enc.precision
    feats = enc(enc.preprocess(tiles))
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_describe_lists_what_feature_files_record(saved):
    info = create_encoder(**saved["uni"]).describe()
    for key in ("encoder", "embed_dim", "weights_sha256", "precision", "mean", "std",
                "input_size", "pooling", "license"):
        assert key in info
    assert info["encoder"] == "uni"


def test_precision_defaults_to_fp32_and_none_picks_the_model_card_recommendation(saved):
    assert create_encoder(**saved["virchow2"]).precision == "fp32"
    enc = create_encoder(**saved["virchow2"], precision=None)
    assert enc.default_precision == "fp16" and enc.requested_precision is None
    assert enc.precision == "fp32"  # on CPU the card's fp16 is never a default
    assert enc.precision_on("cuda") == "fp16"  # on CUDA it is
    assert enc.describe()["precision"] == "fp32"


def test_timm_weights_load_from_a_pytorch_model_bin_file(tmp_path, tiles):
    info = tm.save_tiny_timm(tmp_path, "h_optimus_0", fmt="bin")
    assert info["weights"].endswith("pytorch_model.bin")
    enc = create_encoder(**info)
    _check(enc, tiles)
    assert enc.preprocessing.mean == (0.707223, 0.578729, 0.703617)
