"""Vision-language encoders with an image and a text side.

- ``plip`` (vinid/plip): a transformers ``CLIPModel`` folder;
- ``biomedclip`` (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224): open_clip,
  ViT-B/16 + PubMedBERT text tower;
- ``unimed_clip``: open_clip ViT-B/16 (quick GELU) image tower + BiomedBERT text tower,
  from the released training checkpoint (``unimed_clip_vit_b16.pt``:
  ``{"state_dict": {"module.…"}, ...}``, text tower named ``text_encoder``; renamed
  to open_clip's ``text`` on load), a folder holding it, or a folder / hub repo with an
  ``open_clip_config.json``;
- ``open_clip:<model name>`` or ``open_clip:hf-hub:<org/repo>``: any open_clip model.

open_clip loading: the model config comes from ``open_clip_config.json`` in the
weights folder (hub snapshot or local folder), else the built-in config; the
model is built with ``pretrained=False`` towers, then the checkpoint is read safely
(``weights_only``), unwrapped (``state_dict``, ``module.``), renamed where the
released layout differs from open_clip's, and loaded strictly
(:class:`~wsi_mil.encoders.weights.CheckpointLayoutError` lists mismatches).
``vision_cfg.timm_model_kwargs`` (a wsi_mil extension, for tiny test towers) is
passed to ``timm.create_model`` of a timm image tower. ``forward`` returns the image embedding in the
joint space (projected, not normalised); ``encode_text(prompts)`` returns
(P, D_joint) text embeddings in the same space (not normalised).
"""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Encoder,
    Preprocessing,
    finalize,
)
from wsi_mil.encoders.hf_vit import load_hf_model, read_preprocessing
from wsi_mil.encoders.registry import register_encoder, register_prefix
from wsi_mil.encoders.weights import (
    ResolvedWeights,
    hub_cache_dir,
    load_strict,
    read_arch_overrides,
    read_state_dicts,
    resolve_weights,
    strip_prefixes,
    unwrap_state_dict,
)
from wsi_mil.errors import ConfigError, FileFormatError

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                   "open_clip_pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "special_tokens_map.json")
OPEN_CLIP_EXTRA = ("open_clip_config.json",) + TOKENIZER_FILES
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
# UniMed-CLIP: ViT-B/16 (quick GELU) + BiomedBERT with an MLP projection to 512.
UNIMED_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
    "text_cfg": {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT,
                 "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                 "context_length": 256},
}


class OpenClipEncoder(Encoder):
    """open_clip model: image embedding and text embedding in the joint space."""

    has_text = True

    def __init__(self, model: nn.Module, tokenizer: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model
        self.tokenizer = tokenizer

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)  # (B, D_joint)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(prompts)).to(device)  # (P, L)
        with self.autocast(device):
            return self.model.encode_text(tokens).float()  # (P, D_joint)


class HFClipEncoder(Encoder):
    """transformers ``CLIPModel``: projected image / text features."""

    has_text = True

    def __init__(self, model: nn.Module, tokenizer: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model
        self.tokenizer = tokenizer

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=images))  # (B, D_joint)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True,
                                max_length=max_len, return_tensors="pt").to(device)
        with self.autocast(device):
            out = self.model.get_text_features(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"])
        return self._tensor(out).float()  # (P, D_joint)


# --- open_clip ----------------------------------------------------------------------
def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextmanager
def _timm_kwargs(extra: dict[str, Any]):
    """Pass ``extra`` to open_clip's ``timm.create_model`` (open_clip has no such option)."""
    if not extra:
        yield
        return
    import open_clip.timm_model as otm

    create = otm.timm.create_model
    otm.timm.create_model = lambda *a, **kw: create(*a, **{**kw, **extra})
    try:
        yield
    finally:
        otm.timm.create_model = create


def build_open_clip(model_cfg: dict[str, Any]) -> nn.Module:
    """An open_clip CLIP / CustomTextCLIP from a config dict, towers not pretrained."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    custom = bool(cfg.pop("custom_text", False))
    text_cfg, vision_cfg = cfg.setdefault("text_cfg", {}), cfg.setdefault("vision_cfg", {})
    timm_extra = vision_cfg.pop("timm_model_kwargs", None) or {}
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
        custom = True
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    with _timm_kwargs(timm_extra):
        return (CustomTextCLIP if custom else CLIP)(**cfg)


def convert_open_clip_state(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """A released open_clip-style checkpoint -> the keys of ``model`` (an open_clip model).

    - ``{"state_dict": ...}`` / ``{"model": ...}`` training checkpoints are unwrapped and
      the DDP ``module.`` prefix dropped;
    - UniMed-CLIP's ``CLIP`` names its Hugging Face text tower ``text_encoder``; open_clip's
      ``CustomTextCLIP`` calls it ``text``;
    - ``*.embeddings.position_ids`` (a persistent buffer in transformers < 4.31) is dropped
      when the model no longer has it.
    """
    state = strip_prefixes(unwrap_state_dict(state, ("state_dict", "model")), ("module.",))
    expected = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.startswith("text_encoder.") and not any(k.startswith("text_encoder.") for k in expected):
            key = "text." + key.removeprefix("text_encoder.")
        if key.endswith("embeddings.position_ids") and key not in expected:
            continue
        out[key] = value
    return out


def build_open_clip_tokenizer(text_cfg: dict[str, Any], folder: Path | None):
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    context_length = int(text_cfg.get("context_length", 77))
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return SimpleTokenizer(context_length=context_length)
    has_local = folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES)
    source = str(folder) if has_local else hf_name
    return HFTokenizer(source, context_length=context_length, cache_dir=hub_cache_dir(),
                       **text_cfg.get("tokenizer_kwargs", {}))


def load_open_clip_checkpoint(model: nn.Module, resolved: ResolvedWeights, name: str) -> None:
    """Read (weights_only), convert (:func:`convert_open_clip_state`) and load strictly."""
    state = convert_open_clip_state(read_state_dicts(resolved.files), model)
    load_strict(model, state, name, resolved.source)


def make_open_clip_encoder(
    name: str, resolved: ResolvedWeights, default_cfg: dict[str, Any] | None,
    mean: tuple, std: tuple, license: str, hub_id: str | None, device, precision,
    arch_overrides: dict | None,
) -> Encoder:
    cfg_file = resolved.folder / "open_clip_config.json"
    preprocess_cfg: dict[str, Any] = {}
    if cfg_file.is_file():
        cfg_json = json.loads(cfg_file.read_text())
        model_cfg, preprocess_cfg = cfg_json["model_cfg"], cfg_json.get("preprocess_cfg", {})
    elif default_cfg is not None:
        model_cfg = default_cfg
    else:
        raise FileFormatError(f"no open_clip_config.json in {resolved.folder} and no built-in "
                              f"config for encoder {name!r}")
    model_cfg = _deep_merge(model_cfg, read_arch_overrides(resolved, arch_overrides))
    model = build_open_clip(model_cfg)
    load_open_clip_checkpoint(model, resolved, name)
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    prep = Preprocessing(
        input_size=int(image_size if isinstance(image_size, int) else image_size[0]),
        resize="resize", interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        mean=tuple(preprocess_cfg.get("mean", mean)), std=tuple(preprocess_cfg.get("std", std)),
    )
    tokenizer = build_open_clip_tokenizer(model_cfg.get("text_cfg", {}),
                                          resolved.folder if cfg_file.is_file() else None)
    enc = OpenClipEncoder(model, tokenizer, name=name, embed_dim=int(model_cfg["embed_dim"]),
                          preprocessing=prep, pooling="image projection (joint space)",
                          license=license, hub_id=hub_id, precision=precision or "fp32",
                          weights_sha256=resolved.sha256, weights_source=resolved.source)
    return finalize(enc, device)


@register_encoder("biomedclip")
def create_biomedclip(weights=None, device="cpu", precision=None, arch_overrides=None,
                      **kw) -> Encoder:
    """BiomedCLIP (open_clip ViT-B/16 + PubMedBERT), 512-d joint space."""
    if kw:
        raise ConfigError(f"encoder 'biomedclip' got unknown options {sorted(kw)}")
    hub_id = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    resolved = resolve_weights("biomedclip", weights, hub_id, OPEN_CLIP_FILES, OPEN_CLIP_EXTRA)
    return make_open_clip_encoder("biomedclip", resolved, None, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                  "MIT (microsoft/BiomedCLIP)", hub_id, device, precision,
                                  arch_overrides)


@register_encoder("unimed_clip")
def create_unimed_clip(weights=None, device="cpu", precision=None, arch_overrides=None,
                       **kw) -> Encoder:
    """UniMed-CLIP (open_clip ViT-B/16 + BiomedBERT), 512-d joint space; local weights."""
    if kw:
        raise ConfigError(f"encoder 'unimed_clip' got unknown options {sorted(kw)}")
    resolved = resolve_weights("unimed_clip", weights, None, OPEN_CLIP_FILES, OPEN_CLIP_EXTRA)
    return make_open_clip_encoder("unimed_clip", resolved, UNIMED_CLIP_CFG, OPENAI_CLIP_MEAN,
                                  OPENAI_CLIP_STD, "CC-BY-NC-4.0 (UniMed-CLIP)", None, device,
                                  precision, arch_overrides)


@register_prefix("open_clip")
def create_open_clip_generic(model_id: str, weights=None, device="cpu", precision=None,
                             arch_overrides=None, **kw) -> Encoder:
    """``open_clip:<model name>`` (built-in config, weights= a checkpoint file) or
    ``open_clip:hf-hub:<org/repo>`` (config and weights from the repo)."""
    if kw:
        raise ConfigError(f"open_clip encoders got unknown options {sorted(kw)}")
    import open_clip

    name = f"open_clip:{model_id}"
    if model_id.startswith("hf-hub:"):
        hub_id, default_cfg = model_id.removeprefix("hf-hub:"), None
    else:
        hub_id, default_cfg = None, open_clip.get_model_config(model_id)
        if default_cfg is None:
            raise ConfigError(f"unknown open_clip model {model_id!r}; available: "
                              f"{', '.join(open_clip.list_models())}")
    resolved = resolve_weights(name, weights, hub_id, OPEN_CLIP_FILES, OPEN_CLIP_EXTRA)
    return make_open_clip_encoder(name, resolved, default_cfg, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                  "see the model card", hub_id, device, precision, arch_overrides)


# --- transformers CLIP ----------------------------------------------------------------
@register_encoder("plip")
def create_plip(weights=None, device="cpu", precision=None, arch_overrides=None, **kw) -> Encoder:
    """PLIP (vinid/plip, transformers CLIPModel ViT-B/32), 512-d joint space."""
    if kw or arch_overrides:
        raise ConfigError(f"encoder 'plip' got unknown options {sorted({**kw, **(arch_overrides or {})})}")
    from transformers import AutoTokenizer, CLIPModel

    hub_id = "vinid/plip"
    resolved = resolve_weights("plip", weights, hub_id, ("model.safetensors", "pytorch_model.bin"),
                               ("config.json", "preprocessor_config.json") + TOKENIZER_FILES)
    folder = resolved.folder
    model = load_hf_model(CLIPModel, folder, "plip")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prep = read_preprocessing(folder, Preprocessing(224, "resize", "bicubic", OPENAI_CLIP_MEAN,
                                                    OPENAI_CLIP_STD))
    enc = HFClipEncoder(model, tokenizer, name="plip", embed_dim=int(model.config.projection_dim),
                        preprocessing=prep, pooling="image projection (joint space)",
                        license="see vinid/plip (research use)", hub_id=hub_id,
                        precision=precision or "fp32", weights_sha256=resolved.sha256,
                        weights_source=resolved.source)
    return finalize(enc, device)
