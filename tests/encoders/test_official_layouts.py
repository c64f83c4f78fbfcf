"""Every weighted encoder loads a checkpoint in its OFFICIAL layout.

The layouts (key names, shapes, dtypes, nesting, file name) are checked-in
manifests read from the official model classes by
``dev_tools/make_encoder_manifests.py`` (timm / transformers / torchvision /
open_clip classes with the model cards' arguments; the UniMed-CLIP, MUSK and
CONCH repositories' own code) — never from wsi_mil's builders. Tests:

- a random checkpoint with exactly the manifest's tiny key names and nesting
  loads through ``create_encoder`` (the real code path) and runs;
- the tiny names are the full-size names of the first blocks (so the tiny
  checkpoint exercises the official names, not scaled-down look-alikes);
- at full size, wsi_mil's architecture built on the ``meta`` device has exactly
  the official keys and shapes after the loader's conversion;
- a checkpoint whose keys match nothing raises ``CheckpointLayoutError`` listing
  the first mismatches.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.registry import FAMILY_OF
from wsi_mil.encoders.weights import CheckpointLayoutError, check_layout
from wsi_mil.errors import FileFormatError
from wsi_mil.testing import tiny_models as tm

# *_joint names load the same weights as their base encoder (another embedding)
WEIGHTED = sorted(n for n in FAMILY_OF if n != "histo_stats" and not n.endswith("_joint"))
MANIFESTS = tm.manifest_names()  # + other released formats of an encoder (phikon_ibot)
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


def test_every_weighted_encoder_has_an_official_layout_manifest():
    missing = sorted(set(WEIGHTED) - set(tm.manifest_names()))
    assert not missing, f"no official-layout manifest for {missing}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_a_checkpoint_in_the_official_layout_loads_through_the_real_code_path(name, tmp_path,
                                                                              tiles):
    info = tm.save_official_tiny(name, tmp_path / name)
    enc = create_encoder(**info)
    feats = enc(enc.preprocess(tiles))
    assert feats.shape == (2, enc.embed_dim) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert enc.weights_source.startswith("local:")


@pytest.mark.parametrize("name", MANIFESTS)
def test_tiny_layout_names_are_the_official_names_of_the_first_blocks(name):
    manifest = tm.load_manifest(name)
    patterns = [re.compile(p) for p in manifest["depth_patterns"]]
    depth = manifest["tiny_depth"]

    def kept(key: str) -> bool:
        return all(int(m.group(1)) < depth for p in patterns for m in p.finditer("." + key))

    full = {k for k in manifest["keys"] if kept(k)}
    tiny = set(manifest["tiny"]["keys"])
    assert tiny == full, (sorted(tiny - full)[:5], sorted(full - tiny)[:5])
    assert manifest["n_keys"] == len(manifest["keys"])


# --- full size, on the meta device -------------------------------------------------------
def _meta(fn):
    with torch.device("meta"):
        return fn()


def _bert_base(tmp_path) -> str:
    from transformers import BertConfig

    BertConfig(**BERT_BASE).save_pretrained(str(tmp_path / "bert_base"))
    return str(tmp_path / "bert_base")


def _full_timm(name, tmp_path):
    from wsi_mil.encoders.timm_vit import SPECS, build_timm_model, convert_timm_state

    spec = SPECS[name]
    model = _meta(lambda: build_timm_model(spec.arch, spec.model_args))
    return model, lambda state: convert_timm_state(state, model)


def _full_resnet(name, tmp_path):
    from wsi_mil.encoders.resnet import build_resnet, convert_resnet_state

    model = _meta(lambda: build_resnet({}))
    if name == "resnet50_trunc":
        model.layer4 = torch.nn.Identity()
        return model, lambda s: {k: v for k, v in convert_resnet_state(s).items()
                                 if not k.startswith("layer4.")}
    return model, convert_resnet_state


def _full_ctranspath(name, tmp_path):
    from wsi_mil.encoders.ctranspath import build_ctranspath, convert_ctranspath_state_dict

    return build_ctranspath(), convert_ctranspath_state_dict  # timm's Swin init needs real tensors


def _full_open_clip(name, tmp_path):
    from wsi_mil.encoders.clip import (
        UNIMED_CLIP_CFG,
        _deep_merge,
        build_open_clip,
        convert_open_clip_state,
    )

    bert = _bert_base(tmp_path)
    if name == "unimed_clip":
        cfg = _deep_merge(UNIMED_CLIP_CFG, {"text_cfg": {"hf_model_name": bert}})
    else:  # the hub open_clip_config.json of BiomedCLIP
        cfg = {"embed_dim": 512,
               "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_pool": "",
                              "timm_proj": "linear", "image_size": 224},
               "text_cfg": {"hf_model_name": bert, "hf_tokenizer_name": bert,
                            "hf_proj_type": "mlp", "context_length": 256,
                            "hf_pooler_type": "cls_last_hidden_state_pooler"}}
    model = _meta(lambda: build_open_clip(cfg))
    return model, lambda state: convert_open_clip_state(state, model)


def _full_musk(name, tmp_path):
    from wsi_mil.encoders.musk import build_musk, convert_musk_state

    return _meta(build_musk), convert_musk_state


def _full_conch(name, tmp_path):
    from wsi_mil.encoders.conch import build_conch, convert_conch_state

    return _meta(build_conch), convert_conch_state


FULL_BUILDERS = {
    **{n: _full_timm for n in ("uni", "uni2_h", "virchow2", "h_optimus_0", "gigapath")},
    "resnet50": _full_resnet, "resnet50_trunc": _full_resnet, "ctranspath": _full_ctranspath,
    "unimed_clip": _full_open_clip, "biomedclip": _full_open_clip,
    "musk": _full_musk, "conch": _full_conch,
}


@pytest.mark.parametrize("name", sorted(FULL_BUILDERS))
def test_full_size_architecture_has_exactly_the_official_keys_and_shapes(name, tmp_path):
    manifest = tm.load_manifest(name)
    model, convert = FULL_BUILDERS[name](name, tmp_path)
    official = tm.nest_official(manifest, tm.random_state(manifest["keys"], device="meta"))
    check_layout(model, convert(official), name, "official manifest")  # raises on any mismatch


# --- named error ---------------------------------------------------------------------------
def test_a_checkpoint_whose_keys_match_nothing_raises_a_named_error_listing_them(tmp_path):
    manifest = tm.load_manifest("uni")
    state = {f"backbone.trunk.{k}": v for k, v in tm.random_state(manifest["tiny"]["keys"]).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointLayoutError) as err:
        create_encoder("uni", weights=tmp_path / "pytorch_model.bin",
                       arch_overrides=manifest["tiny"]["wsi_mil_arch"])
    msg = str(err.value)
    assert isinstance(err.value, FileFormatError)
    assert "None of the" in msg and "'uni'" in msg
    assert "backbone.trunk.cls_token" in msg or "backbone.trunk.pos_embed" in msg
    assert "missing keys ['cls_token'" in msg or "missing keys ['pos_embed'" in msg


def test_a_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    manifest = tm.load_manifest("uni")
    info = tm.save_official_tiny("uni", tmp_path)
    with pytest.raises(CheckpointLayoutError, match=r"shape mismatches .*checkpoint \(1, 1, 32\)"):
        create_encoder("uni", weights=info["weights"],
                       arch_overrides={**manifest["tiny"]["wsi_mil_arch"], "embed_dim": 48})


# --- UniMed-CLIP: the released checkpoint layout ---------------------------------------------
def test_unimed_clip_release_loads_its_text_encoder_into_the_text_tower(tmp_path):
    info = tm.save_official_tiny("unimed_clip", tmp_path)
    saved = torch.load(info["weights"], weights_only=True)
    assert set(saved) >= {"state_dict", "epoch"}
    state = saved["state_dict"]
    assert all(k.startswith("module.") for k in state)
    assert any(k.startswith("module.text_encoder.") for k in state)
    enc = create_encoder(**info)
    loaded = enc.model.state_dict()
    key = "text_encoder.transformer.embeddings.word_embeddings.weight"
    torch.testing.assert_close(loaded["text." + key.removeprefix("text_encoder.")],
                               state["module." + key], rtol=0, atol=0)
    torch.testing.assert_close(loaded["visual.proj"], state["module.visual.proj"], rtol=0, atol=0)
    text = enc.encode_text(["tumor", "normal mucosa"])
    assert text.shape == (2, enc.embed_dim) and torch.isfinite(text).all()


def test_manifests_are_plain_json_with_the_documented_fields():
    for name in tm.manifest_names():
        manifest = json.loads((tm.MANIFEST_DIR / f"{name}.json").read_text())
        for field in ("encoder", "official", "file", "nesting", "keys", "tiny", "depth_patterns"):
            assert field in manifest, (name, field)
        assert manifest["encoder"] == name
        assert manifest.get("encoder_name", name) in FAMILY_OF


@pytest.mark.parametrize("name, official_key, loaded_key", [
    ("phikon", "encoder.layer.1.attention.attention.query.weight", "layers.1.attention.q_proj.weight"),
    ("phikon_v2", "encoder.layer.1.attention.output.dense.bias", "encoder.layer.1.attention.o_proj.bias"),
    ("plip", "vision_model.encoder.layers.1.mlp.fc2.weight", "vision_model.encoder.layers.1.mlp.fc2.weight"),
])
def test_transformers_folders_in_the_hub_names_load_their_values(name, official_key, loaded_key,
                                                                 tmp_path):
    """The hub files hold transformers-4 names; transformers 5 renames them on load."""
    from safetensors.torch import load_file

    info = tm.save_official_tiny(name, tmp_path)
    manifest = tm.load_manifest(name)
    path = tmp_path / manifest["file"]
    saved = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path)
    enc = create_encoder(**info)
    torch.testing.assert_close(enc.model.state_dict()[loaded_key], saved[official_key],
                               rtol=0, atol=0)


def test_phikon_ibot_training_checkpoint_reads_the_teacher(tmp_path, tiles):
    """iBOT's checkpoint.pth: {'student', 'teacher', 'args': Namespace, ...}; the teacher's
    backbone is the model (its projection heads are dropped)."""
    info = tm.save_official_tiny("phikon_ibot", tmp_path)
    saved = torch.load(info["weights"], weights_only=False)
    assert {"teacher", "args", "epoch"} <= set(saved)
    enc = create_encoder(**info)
    torch.testing.assert_close(enc.model.state_dict()["blocks.1.attn.qkv.weight"],
                               saved["teacher"]["backbone.blocks.1.attn.qkv.weight"], rtol=0, atol=0)
