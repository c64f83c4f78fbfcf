"""Write the official checkpoint layouts of the weighted encoders as JSON manifests.

Each manifest (``wsi_mil/testing/manifests/<encoder>.json``) records, for one
encoder, the key names, shapes and dtypes of the released checkpoint, how the
file nests them (``{"state_dict": {"module.…"}}``, a flat file, a
``save_pretrained`` folder) and the same layout at a tiny size. Both are read
from the OFFICIAL model class, never from wsi_mil's builders:

- timm encoders: ``timm.create_model(<arch>, **<model card kwargs>)`` (the kwargs
  are copied here from the model cards / hub ``config.json``, independently of
  ``wsi_mil.encoders.timm_vit``);
- transformers encoders: the model class and the hub ``config.json`` values;
- BiomedCLIP: open_clip ``CustomTextCLIP`` with the hub ``open_clip_config.json``;
- ResNet-50: ``torchvision.models.resnet.ResNet``;
- CTransPath: timm 0.5.4's Swin-T with TransPath's ``ConvStem`` (``--timm054``:
  a folder holding timm 0.5.4, e.g. ``pip install --no-deps --target DIR timm==0.5.4``);
- UniMed-CLIP: the ``open_clip`` fork in its repository (``--unimed-src``:
  ``UniMed-CLIP/src``), whose ``CLIP`` holds the text tower as ``text_encoder``;
- MUSK: ``musk.modeling.musk_large_patch16_384`` (``--musk-src``: the repository
  root; fairscale, only imported for activation checkpointing, is stubbed);
- CONCH: ``conch.open_clip_custom`` CoCa with ``conch_ViT-B-16.json``
  (``--conch-src``: a folder holding the ``conch`` package);
- Phikon's iBOT teacher checkpoint (manifest ``phikon_ibot``): ``bytedance/ibot``'s
  ``main_ibot.py`` teacher (``--ibot-src``: the repository root).

The tiny layout is the same class built with small widths/depths (``tiny_kwargs``)
so key NAMES are identical to the official ones for the first ``tiny_depth``
blocks; tests build a random checkpoint with exactly those names and nesting and
load it through the real loading code (``tests/encoders/test_official_layouts.py``).

Large models are built on the ``meta`` device (no memory); timm 0.5.4's Swin
calls ``.item()`` at init, so it is built on the CPU.

Usage::

    python dev_tools/make_encoder_manifests.py [names...] --timm054 DIR \
        --unimed-src DIR --musk-src DIR --conch-src DIR --ibot-src DIR
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "wsi_mil" / "testing" / "manifests"

BIOMEDBERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072,
                       max_position_embeddings=512, type_vocab_size=2)
TINY_BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)


def _layout(state) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()}


def _meta(fn):
    import torch

    try:
        with torch.device("meta"):
            return fn()
    except RuntimeError:  # some inits call .item(): build on the CPU
        return fn()


# --- builders: name -> (full state, tiny state, info) ---------------------------------
def _timm(arch: str, kwargs: dict, tiny_extra: dict | None = None):
    import timm

    def build(kw):
        return _meta(lambda: timm.create_model(arch, pretrained=False, **kw)).state_dict()

    tiny_kwargs = {**kwargs, **TINY_VIT, **(tiny_extra or {})}
    info = dict(official=f"timm.create_model({arch!r}, pretrained=False, **{kwargs!r}) "
                         f"(timm {timm.__version__})",
                tiny_kwargs=TINY_VIT, wsi_mil_arch=TINY_VIT)
    return build(kwargs), build(tiny_kwargs), info


def _swiglu():
    import timm
    import torch

    return dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)


def uni():
    full, tiny, info = _timm("vit_large_patch16_224", dict(
        img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True))
    return full, tiny, dict(info, file="pytorch_model.bin", hub="MahmoodLab/UNI",
                            card="timm.create_model('vit_large_patch16_224', img_size=224, "
                                 "patch_size=16, init_values=1e-5, num_classes=0, "
                                 "dynamic_img_size=True)")


def uni2_h():
    kw = dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
              embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
              reg_tokens=8, dynamic_img_size=True)
    full, tiny, info = _timm("vit_giant_patch14_224", {**kw, **_swiglu()})
    info["official"] = info["official"].replace("<class 'timm.layers.mlp.SwiGLUPacked'>", "SwiGLUPacked")
    return full, tiny, dict(info, file="pytorch_model.bin", hub="MahmoodLab/UNI2-h")


def virchow2():
    kw = dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
              global_pool="", dynamic_img_size=True)
    full, tiny, info = _timm("vit_huge_patch14_224", {**kw, **_swiglu()})
    return full, tiny, dict(info, file="pytorch_model.bin", hub="paige-ai/Virchow2")


def h_optimus_0():
    kw = dict(img_size=224, num_classes=0, global_pool="token", init_values=1e-5,
              dynamic_img_size=False)
    full, tiny, info = _timm("vit_giant_patch14_reg4_dinov2", kw)
    return full, tiny, dict(info, file="pytorch_model.bin", hub="bioptimus/H-optimus-0")


def gigapath():
    kw = dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
              init_values=1e-5, mlp_ratio=5.33334, num_classes=0)
    full, tiny, info = _timm("vit_giant_patch14_dinov2", kw)
    return full, tiny, dict(info, file="pytorch_model.bin", hub="prov-gigapath/prov-gigapath")


def _resnet(name):
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    full = _meta(lambda: torchvision.models.resnet50()).state_dict()
    tiny = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8).state_dict()
    return full, tiny, dict(
        official=f"torchvision.models.resnet50() (torchvision {torchvision.__version__}); "
                 "hub timm/resnet50.tv_in1k holds torchvision's IMAGENET1K_V1 in this layout",
        file="model.safetensors", hub="timm/resnet50.tv_in1k",
        tiny_kwargs=dict(layers=[1, 1, 1, 1], width_per_group=8),
        wsi_mil_arch=dict(layers=[1, 1, 1, 1], width_per_group=8),
        depth_patterns=[r"^\.layer\d\.(\d+)\."], tiny_depth=1)


def resnet50():
    return _resnet("resnet50")


def resnet50_trunc():
    return _resnet("resnet50_trunc")


def ctranspath():
    """timm 0.5.4 (needs --timm054 on PYTHONPATH) + TransPath's ConvStem (ctran.py)."""
    import timm
    import torch
    from torch import nn

    assert timm.__version__ == "0.5.4", timm.__version__

    class ConvStem(nn.Module):  # TransPath ctran.py
        def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=768, norm_layer=None,
                     flatten=True):
            super().__init__()
            stem = []
            input_dim, output_dim = 3, embed_dim // 8
            for _ in range(2):
                stem.append(nn.Conv2d(input_dim, output_dim, kernel_size=3, stride=2, padding=1,
                                      bias=False))
                stem.append(nn.BatchNorm2d(output_dim))
                stem.append(nn.ReLU(inplace=True))
                input_dim = output_dim
                output_dim *= 2
            stem.append(nn.Conv2d(input_dim, embed_dim, kernel_size=1))
            self.proj = nn.Sequential(*stem)
            self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def build(**kw):
        torch.manual_seed(0)
        from timm.models.swin_transformer import SwinTransformer

        args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
                    num_heads=(3, 6, 12, 24))  # = swin_tiny_patch4_window7_224 in timm 0.5.4
        model = SwinTransformer(**{**args, **kw})
        # the authors' timm fork passes embed_layer=ConvStem where timm builds PatchEmbed
        model.patch_embed = ConvStem(embed_dim=model.embed_dim, norm_layer=nn.LayerNorm)
        return {"model": model.state_dict()}["model"]

    tiny_kw = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
    return build(), build(**tiny_kw), dict(
        official="timm 0.5.4 swin_tiny_patch4_window7_224 with TransPath's ConvStem as "
                 "patch_embed (the authors' timm fork: embed_layer=ConvStem), "
                 "saved as {'model': state_dict}",
        file="ctranspath.pth", nesting=["model"], hub=None,
        tiny_kwargs=dict(tiny_kw), wsi_mil_arch=dict(embed_dim=16, depths=[2, 2, 2, 2],
                                                     num_heads=[1, 1, 2, 2]),
        depth_patterns=[r"\.blocks\.(\d+)\."], tiny_depth=2)


# transformers 5 renamed ViT / DINOv2 weights and converts transformers-4 files on load
# (transformers.conversion_mapping); the hub files (owkin/phikon 2023, owkin/phikon-v2 2024)
# hold the transformers-4 names, so the manifests invert those renames.
_V4_NAMES = {
    "ViTModel": [(r"^layers\.(\d+)\.attention\.([qkv])_proj\.", None),
                 (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
                 (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
                 (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
                 (r"^layers\.(\d+)\.", r"encoder.layer.\1.")],
    "Dinov2Model": [(r"\.attention\.([qkv])_proj\.", None),
                    (r"\.attention\.o_proj\.", ".attention.output.dense.")],
}
_QKV = {"q": "query", "k": "key", "v": "value"}


def to_transformers4_names(model_cls_name: str, state: dict) -> dict:
    import re

    rules = _V4_NAMES.get(model_cls_name, [])
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            if repl is None:  # q/k/v projections
                if model_cls_name == "ViTModel":
                    key, n = re.subn(pattern, lambda m: f"encoder.layer.{m.group(1)}.attention."
                                     f"attention.{_QKV[m.group(2)]}.", key)
                else:
                    key, n = re.subn(pattern, lambda m: f".attention.attention.{_QKV[m.group(1)]}.", key)
            else:
                key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def _hf(model_cls_name, cfg_cls_name, full_cfg, tiny_cfg, **model_kw):
    import transformers

    cfg_cls = getattr(transformers, cfg_cls_name)
    model_cls = getattr(transformers, model_cls_name)
    full = _meta(lambda: model_cls(cfg_cls(**full_cfg), **model_kw)).state_dict()
    tiny_config = cfg_cls(**tiny_cfg)
    tiny = model_cls(tiny_config, **model_kw).state_dict()
    full = to_transformers4_names(model_cls_name, full)
    tiny = to_transformers4_names(model_cls_name, tiny)
    config_json = tiny_config.to_dict()
    config_json["architectures"] = [model_cls_name]
    return full, tiny, dict(
        official=f"transformers.{model_cls_name}({cfg_cls_name}(**{full_cfg!r}), **{model_kw!r}) "
                 f"(transformers {transformers.__version__}), keys renamed to the "
                 "transformers-4 names the hub files hold (inverse of transformers 5's "
                 "conversion_mapping)" if model_cls_name in _V4_NAMES else
                 f"transformers.{model_cls_name}({cfg_cls_name}(**{full_cfg!r}), **{model_kw!r}) "
                 f"(transformers {transformers.__version__})",
        file="model.safetensors", files={"config.json": json.loads(json.dumps(config_json,
                                                                              default=str))},
        tiny_kwargs=tiny_cfg)


def phikon():
    full_cfg = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, image_size=224, patch_size=16, qkv_bias=True)
    tiny_cfg = dict(full_cfg, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)
    full, tiny, info = _hf("ViTModel", "ViTConfig", full_cfg, tiny_cfg, add_pooling_layer=False)
    return full, tiny, dict(info, hub="owkin/phikon", depth_patterns=[r"\.layer\.(\d+)\."],
                            tiny_depth=2)


def phikon_v2():
    full_cfg = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                    image_size=224, patch_size=16, layerscale_value=1e-5)
    tiny_cfg = dict(full_cfg, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    full, tiny, info = _hf("Dinov2Model", "Dinov2Config", full_cfg, tiny_cfg)
    return full, tiny, dict(info, hub="owkin/phikon-v2", depth_patterns=[r"\.layer\.(\d+)\."],
                            tiny_depth=2)


def plip():
    import torch

    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=224, patch_size=32)
    tiny_text = dict(text, vocab_size=600, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=2, bos_token_id=512,
                     eos_token_id=513, pad_token_id=513)
    tiny_vision = dict(vision, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2)
    full, tiny, info = _hf("CLIPModel", "CLIPConfig",
                           dict(text_config=text, vision_config=vision, projection_dim=512),
                           dict(text_config=tiny_text, vision_config=tiny_vision,
                                projection_dim=24))
    # vinid/plip was saved by transformers 4.2x: position_ids were persistent buffers then
    for state, t, v in ((full, text, vision), (tiny, tiny_text, tiny_vision)):
        state["text_model.embeddings.position_ids"] = torch.zeros(1, t["max_position_embeddings"],
                                                                  dtype=torch.long)
        n_pos = (v["image_size"] // v["patch_size"]) ** 2 + 1
        state["vision_model.embeddings.position_ids"] = torch.zeros(1, n_pos, dtype=torch.long)
    info["official"] += ("; plus text/vision embeddings.position_ids (persistent buffers in the "
                         "transformers 4.2x that saved vinid/plip's pytorch_model.bin)")
    return full, tiny, dict(info, file="pytorch_model.bin", hub="vinid/plip",
                            depth_patterns=[r"\.layers\.(\d+)\."], tiny_depth=2)


def _bert_folder(root: Path, cfg: dict) -> Path:
    from transformers import BertConfig

    root.mkdir(parents=True, exist_ok=True)
    BertConfig(**cfg).save_pretrained(str(root))
    return root


def biomedclip():
    """open_clip CustomTextCLIP with the hub open_clip_config.json (hf text tower config local)."""
    import tempfile

    import open_clip
    import torch
    from open_clip.model import CustomTextCLIP

    tmp = Path(tempfile.mkdtemp())
    vision = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
              "timm_pool": "", "timm_proj": "linear", "image_size": 224}
    text = {"hf_model_name": str(_bert_folder(tmp / "full", BIOMEDBERT_BASE)),
            "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256, "hf_model_pretrained": False}
    full = _meta(lambda: CustomTextCLIP(embed_dim=512, vision_cfg=vision, text_cfg=text)).state_dict()
    tiny_text = dict(text, hf_model_name=str(_bert_folder(tmp / "tiny", TINY_BERT)), context_length=32)
    create = open_clip.timm_model.timm.create_model  # open_clip has no timm kwargs: inject them
    open_clip.timm_model.timm.create_model = lambda *a, **kw: create(*a, **{**kw, **TINY_VIT})
    try:
        tiny_model = CustomTextCLIP(embed_dim=24, vision_cfg=vision, text_cfg=tiny_text)
    finally:
        open_clip.timm_model.timm.create_model = create
    tiny = tiny_model.state_dict()
    # the released checkpoint (transformers 4.2x) holds the BERT position_ids buffer
    full["text.transformer.embeddings.position_ids"] = torch.zeros(1, 512, dtype=torch.long)
    tiny["text.transformer.embeddings.position_ids"] = torch.zeros(1, 64, dtype=torch.long)
    return full, tiny, dict(
        official=f"open_clip.model.CustomTextCLIP(embed_dim=512, vision_cfg={vision!r}, text_cfg="
                 "<BiomedBERT-base config>) from the hub open_clip_config.json "
                 f"(open_clip {open_clip.__version__}); plus text.transformer.embeddings."
                 "position_ids (persistent in the transformers that saved the checkpoint)",
        file="open_clip_pytorch_model.bin", hub="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        tiny_kwargs=dict(embed_dim=24, vision=TINY_VIT, text=TINY_BERT),
        wsi_mil_arch={"embed_dim": 24, "vision_cfg": {"timm_model_kwargs": TINY_VIT},
                      "text_cfg": {"context_length": 32}},
        depth_patterns=[r"\.blocks\.(\d+)\.", r"\.layer\.(\d+)\."], tiny_depth=2)


def unimed_clip():
    """The UniMed-CLIP repository's open_clip fork (needs --unimed-src first on sys.path)."""
    import tempfile

    import open_clip
    import transformers

    assert "UniMed" in open_clip.__file__ or "unimed" in open_clip.__file__.lower(), open_clip.__file__
    transformers.AutoModel.from_pretrained = (  # pretrained=True is hard-coded: no download
        lambda name, **kw: transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(name), **kw))
    from open_clip.model import CLIP

    tmp = Path(tempfile.mkdtemp())
    cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" /
                      "ViT-B-16-quickgelu.json").read_text())
    full = _meta(lambda: CLIP(**cfg, text_encoder_name=str(_bert_folder(tmp / "full", BIOMEDBERT_BASE))))
    tiny_cfg = dict(cfg, embed_dim=24, vision_cfg=dict(cfg["vision_cfg"], layers=2, width=32,
                                                       head_width=16))
    tiny = CLIP(**tiny_cfg, text_encoder_name=str(_bert_folder(tmp / "tiny", TINY_BERT)))

    def as_released(model):  # DDP training checkpoint: {"state_dict": {"module.…"}}
        return {f"module.{k}": v for k, v in model.state_dict().items()}

    return as_released(full), as_released(tiny), dict(
        official="UniMed-CLIP src/open_clip (fork) model.CLIP(**ViT-B-16-quickgelu.json, "
                 "text_encoder_name=microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract); "
                 "training checkpoint of a DDP model: {'state_dict': {'module.…'}, 'epoch', ...}",
        file="unimed_clip_vit_b16.pt", nesting=["state_dict"], hub=None,
        extra_top_level={"epoch": 10, "name": "unimed_clip_vit_b16"},
        tiny_kwargs=dict(embed_dim=24, vision_cfg=dict(layers=2, width=32, head_width=16),
                         text=TINY_BERT),
        wsi_mil_arch={"embed_dim": 24, "vision_cfg": {"layers": 2, "width": 32, "head_width": 16},
                      "text_cfg": {"hf_model_name": "<TINY_BERT_FOLDER>",
                                   "hf_tokenizer_name": "<TINY_BERT_FOLDER>",
                                   "context_length": 32}},
        depth_patterns=[r"\.resblocks\.(\d+)\.", r"\.layer\.(\d+)\."], tiny_depth=2)


def _stub_fairscale():
    fairscale = types.ModuleType("fairscale")
    nn_mod = types.ModuleType("fairscale.nn")
    nn_mod.checkpoint_wrapper = lambda m, *a, **k: m
    nn_mod.wrap = lambda m, *a, **k: m
    fairscale.nn = nn_mod
    sys.modules.setdefault("fairscale", fairscale)
    sys.modules.setdefault("fairscale.nn", nn_mod)


MUSK_TINY = dict(img_size=32, patch_size=16, vocab_size=300, encoder_embed_dim=32,
                 encoder_attention_heads=2, encoder_ffn_embed_dim=64, encoder_layers=2,
                 max_source_positions=32)


def musk():
    """lilab-stanford/MUSK musk.modeling (needs --musk-src on sys.path)."""
    _stub_fairscale()
    from musk import modeling
    from musk.torchscale.architecture.config import EncoderConfig

    full = _meta(lambda: modeling.musk_large_patch16_384()).state_dict()

    def tiny_model():
        args = EncoderConfig(multiway=True, layernorm_embedding=False, normalize_output=True,
                             no_output_layer=True, drop_path_rate=0, **MUSK_TINY)
        return modeling.MUSK(args)

    return full, tiny_model().state_dict(), dict(
        official="musk.modeling.musk_large_patch16_384() (lilab-stanford/MUSK: BEiT-3 "
                 "multiway ViT-L/16 at 384 px, vocab 64010); hub xiangjx/musk model.safetensors, "
                 "flat keys (model_key 'model|module' absent -> the file itself)",
        file="model.safetensors", hub="xiangjx/musk", tiny_kwargs=MUSK_TINY,
        wsi_mil_arch=dict(img_size=32, patch_size=16, vocab_size=300, embed_dim=32, num_heads=2,
                          ffn_dim=64, depth=2, max_text_positions=32),
        depth_patterns=[r"\.layers\.(\d+)\."], tiny_depth=2)


CONCH_TINY = {
    "embed_dim": 16, "embed_dim_caption": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "layers": 2, "width": 32, "num_heads": 2,
                   "attentional_pool_caption": True, "attentional_pool_contrast": True,
                   "attn_pooler_heads": 2, "n_queries_contrast": 1, "n_queries_caption": 4,
                   "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2,
                       "layers": 2},
}


def conch():
    """MahmoodLab CONCH conch.open_clip_custom CoCa (needs --conch-src on sys.path)."""
    from conch.open_clip_custom import coca_model

    cfg = json.loads((Path(coca_model.__file__).parent / "model_configs" /
                      "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text", None)
    full = _meta(lambda: coca_model.CoCa(**cfg)).state_dict()
    tiny = coca_model.CoCa(**CONCH_TINY).state_dict()
    return full, tiny, dict(
        official="conch.open_clip_custom.coca_model.CoCa(**conch_ViT-B-16.json) (timm ViT-B/16 "
                 "trunk at 448 px, attentional poolers, text and multimodal decoder towers); "
                 "hub MahmoodLab/conch pytorch_model.bin, flat keys",
        file="pytorch_model.bin", hub="MahmoodLab/conch", tiny_kwargs=CONCH_TINY,
        wsi_mil_arch=CONCH_TINY,
        depth_patterns=[r"\.blocks\.(\d+)\.", r"\.resblocks\.(\d+)\.", r"\.cross_attn\.(\d+)\."],
        tiny_depth=2)


def phikon_ibot():
    """Phikon's iBOT teacher checkpoint: bytedance/ibot main_ibot.py (needs --ibot-src)."""
    import models  # ibot/models
    import torch
    import utils  # ibot/utils.py
    from models.head import iBOTHead

    def teacher(**vit):
        args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                    qkv_bias=True, return_all_tokens=True)  # = models.vit_base(patch_size=16)
        backbone = models.VisionTransformer(**{**args, **vit},
                                            norm_layer=__import__("functools").partial(
                                                torch.nn.LayerNorm, eps=1e-6))
        # main_ibot.py defaults: out_dim 8192, patch_out_dim 8192, norm None, act gelu,
        # shared_head_teacher True
        head = iBOTHead(backbone.embed_dim, 8192 if not vit else 64, patch_out_dim=8192 if not vit else 64,
                        norm=None, act="gelu", shared_head=True)
        return utils.MultiCropWrapper(backbone, head)

    full = _meta(teacher).state_dict()
    tiny = teacher(embed_dim=32, depth=2, num_heads=2).state_dict()
    return full, tiny, dict(
        official="bytedance/ibot main_ibot.py teacher: MultiCropWrapper(vit_base(patch_size=16, "
                 "return_all_tokens=True), iBOTHead(768, 8192, patch_out_dim=8192, "
                 "shared_head=True)); checkpoint {'student', 'teacher', 'optimizer', 'epoch', "
                 "'args' (argparse.Namespace), 'ibot_loss'}; the teacher is read",
        encoder_name="phikon", file="ibot_vit_base_pancan.pth", nesting=["teacher"], hub=None,
        extra_top_level={"epoch": 100, "args": {"__namespace__": {"arch": "vit_base",
                                                                 "patch_size": 16}}},
        tiny_kwargs=dict(embed_dim=32, depth=2, num_heads=2, out_dim=64),
        wsi_mil_arch=dict(embed_dim=32, depth=2, num_heads=2),
        depth_patterns=[r"\.blocks\.(\d+)\."], tiny_depth=2)


BUILDERS = {f.__name__: f for f in (uni, uni2_h, virchow2, h_optimus_0, gigapath, resnet50,
                                     resnet50_trunc, ctranspath, phikon, phikon_v2, plip,
                                     biomedclip, unimed_clip, musk, conch, phikon_ibot)}
PATH_OF = {"ctranspath": "timm054", "unimed_clip": "unimed_src", "musk": "musk_src",
           "conch": "conch_src", "phikon_ibot": "ibot_src"}


def write_one(name: str) -> Path:
    full, tiny, info = BUILDERS[name]()
    info = dict(info)
    manifest = {
        "encoder": name,
        "encoder_name": info.pop("encoder_name", name),
        "official": info.pop("official"),
        "hub": info.pop("hub", None),
        "file": info.pop("file"),
        "nesting": info.pop("nesting", []),
        "extra_top_level": info.pop("extra_top_level", {}),
        "depth_patterns": info.pop("depth_patterns", [r"\.blocks\.(\d+)\."]),
        "tiny_depth": info.pop("tiny_depth", 2),
        "n_keys": len(full),
        "keys": _layout(full),
        "tiny": {
            "how": "the official class built with tiny_kwargs (key names identical for the "
                   "first tiny_depth blocks; widths scaled down)",
            "tiny_kwargs": info.pop("tiny_kwargs", {}),
            "wsi_mil_arch": info.pop("wsi_mil_arch", None),
            "files": info.pop("files", {}),
            "keys": _layout(tiny),
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=0, sort_keys=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(BUILDERS))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    for opt in PATH_OF.values():
        parser.add_argument(f"--{opt.replace('_', '-')}", default=None)
    args = parser.parse_args()
    if args.one:
        print(write_one(args.names[0]))
        return
    for name in args.names:
        env = dict(os.environ)
        extra = getattr(args, PATH_OF[name]) if name in PATH_OF else None
        if name in PATH_OF and not extra:
            print(f"{name}: skipped (pass --{PATH_OF[name].replace('_', '-')})")
            continue
        if extra:
            env["PYTHONPATH"] = os.pathsep.join([extra, env.get("PYTHONPATH", "")])
        if subprocess.run([sys.executable, __file__, name, "--one"], env=env).returncode:
            print(f"{name}: FAILED")


if __name__ == "__main__":
    main()
