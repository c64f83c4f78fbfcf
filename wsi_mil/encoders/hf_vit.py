"""transformers encoders: Phikon (ViTModel), Phikon-v2 (Dinov2Model), ``hf:<repo>``.

Folder weights (hub snapshot or ``save_pretrained`` output with ``config.json``)
load with ``from_pretrained(folder)``; missing keys raise instead of being
randomly initialised. The embedding is the CLS token of the last hidden state
(after the final layer norm).

``phikon`` also accepts the reference's iBOT teacher checkpoint
(``ibot_vit_base_pancan.pth``, a single file): DINO/iBOT ViT keys, possibly
nested under ``teacher`` / ``state_dict`` and prefixed ``module.`` /
``backbone.``, are mapped onto a timm ViT-B/16 (same key layout as the DINO
ViT, LayerNorm eps 1e-6); its CLS output is the same quantity.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Preprocessing, finalize
from wsi_mil.encoders.registry import register_encoder, register_prefix
from wsi_mil.encoders.timm_vit import TimmEncoder, build_timm_model
from wsi_mil.encoders.weights import (
    ResolvedWeights,
    load_strict,
    read_arch_overrides,
    read_state_dicts,
    resolve_weights,
)
from wsi_mil.errors import ConfigError, FileFormatError

HF_FILES = ("model.safetensors", "pytorch_model.bin")
HF_EXTRA = ("config.json", "preprocessor_config.json")
PHIKON_LICENSE = "Owkin non-commercial licence (owkin/phikon)"
PHIKON_V2_LICENSE = "Owkin non-commercial licence (owkin/phikon-v2)"
IBOT_ARCH = "vit_base_patch16_224"
IBOT_ARGS: dict[str, Any] = dict(img_size=224, patch_size=16, embed_dim=768, depth=12,
                                 num_heads=12, qkv_bias=True, global_pool="token")
_PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "area"}  # 1 lanczos ~ bicubic


class HFEncoder(Encoder):
    """A transformers vision model; the embedding is CLS of ``last_hidden_state``."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=images)
        hidden = getattr(out, "last_hidden_state", None)
        if self.pooling == "pooler" or hidden is None or hidden.ndim != 3:
            return out.pooler_output.flatten(1)  # (B, D)
        return hidden[:, 0]  # (B, T, D) -> (B, D) CLS


# image processors whose integer ``size`` means the shortest edge (transformers'
# get_size_dict(default_to_square=False)); the others read it as height = width
_SHORTEST_EDGE_PROCESSORS = ("CLIPImageProcessor", "BitImageProcessor", "ChineseCLIPImageProcessor",
                             "ConvNextImageProcessor", "MobileViTImageProcessor")


def preprocessing_from_hf_config(cfg: dict[str, Any], default: Preprocessing) -> Preprocessing:
    """A Hugging Face ``preprocessor_config.json`` with transformers' own semantics.

    ``do_resize`` + ``size``: ``{"shortest_edge": S}`` keeps the aspect ratio (short side
    S), ``{"height": H, "width": W}`` squashes; ``do_center_crop`` + ``crop_size`` then
    crops the centre; ``resample`` is a PIL code (2 bilinear, 3 bicubic, ...);
    ``do_normalize`` / ``image_mean`` / ``image_std`` normalise (``rescale_factor``
    1/255). Without ``do_resize`` the tile is only cropped (if ``do_center_crop``).
    """
    def _size(value: Any, square: bool) -> dict[str, int]:
        if value is None:
            return {}
        if isinstance(value, int):
            return {"height": value, "width": value} if square else {"shortest_edge": value}
        return dict(value)

    kind = str(cfg.get("image_processor_type", "")).removesuffix("Fast")
    size = _size(cfg.get("size"), square=kind not in _SHORTEST_EDGE_PROCESSORS)
    crop = _size(cfg.get("crop_size"), square=True)
    do_resize = bool(cfg.get("do_resize", True)) and bool(size)
    do_crop = bool(cfg.get("do_center_crop", False)) and bool(crop)
    if "height" in size and size.get("height") != size.get("width"):
        raise ConfigError(f"non-square processor size {size} is not supported")
    if "shortest_edge" in size:
        rule, scale = "center_crop", int(size["shortest_edge"])
    elif "height" in size:
        rule, scale = "resize", int(size["height"])
    else:
        rule, scale = "none", default.input_size
    if not do_resize:
        rule, scale = ("crop", int(crop["height"])) if do_crop else ("none", scale)
    input_size = int(crop["height"]) if do_crop else scale
    if do_crop and scale < input_size:
        raise ConfigError(f"processor crop {crop} larger than its resize {size}")
    interpolation = _PIL_RESAMPLE.get(cfg.get("resample"), default.interpolation)
    if not cfg.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = tuple(cfg.get("image_mean", default.mean))
        std = tuple(cfg.get("image_std", default.std))
    return Preprocessing(input_size=input_size, resize=rule, interpolation=interpolation,
                         mean=mean, std=std, resize_size=scale if scale != input_size else 0)


def read_preprocessing(folder: Path, default: Preprocessing) -> Preprocessing:
    """Preprocessing from a ``preprocessor_config.json`` (transformers' semantics), else ``default``."""
    cfg_file = folder / "preprocessor_config.json"
    if not cfg_file.is_file():
        return default
    return preprocessing_from_hf_config(json.loads(cfg_file.read_text()), default)


def load_hf_model(model_cls, folder: Path, name: str, allow_missing_pooler: bool = True,
                  **kwargs: Any) -> nn.Module:
    """``model_cls.from_pretrained(folder)``; missing weights raise (pooler optional)."""
    if not (folder / "config.json").is_file():
        raise FileFormatError(f"no config.json in {folder} for encoder {name!r}: not a "
                              "transformers (save_pretrained) folder")
    model, info = model_cls.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", [])
               if not (allow_missing_pooler and "pooler" in k)]
    if missing:
        raise FileFormatError(f"weights in {folder} do not fit encoder {name!r}: missing keys "
                              f"{sorted(missing)[:8]} ({len(missing)})")
    return model.float()


def convert_ibot_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """iBOT / DINO checkpoint (teacher preferred) -> timm ViT backbone keys."""
    for key in ("teacher", "state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.", "encoder."):
            key = key.removeprefix(prefix)
        if key.startswith(("head.", "masked_embed", "fc.")):
            continue  # projection heads of the self-supervised objective
        out[key] = value
    return out


def _hf_folder_of(resolved: ResolvedWeights) -> Path | None:
    """The transformers folder of resolved weights, or None for a bare checkpoint file."""
    if (resolved.folder / "config.json").is_file() and (
        resolved.is_dir or resolved.path.name in HF_FILES
    ):
        return resolved.folder
    return None


def _make_ibot_phikon(resolved: ResolvedWeights, device, precision, arch_overrides) -> Encoder:
    args = {**IBOT_ARGS, **read_arch_overrides(resolved, arch_overrides)}
    model = build_timm_model(IBOT_ARCH, args)
    load_strict(model, convert_ibot_state_dict(read_state_dicts(resolved.files)), "phikon",
                resolved.source)
    enc = TimmEncoder(
        model, name="phikon", embed_dim=model.num_features,
        preprocessing=Preprocessing(input_size=int(args["img_size"]), interpolation="bilinear"),
        pooling="cls", license=PHIKON_LICENSE, hub_id="owkin/phikon",
        precision=precision or "fp32", weights_sha256=resolved.sha256,
        weights_source=resolved.source,
    )
    return finalize(enc, device)


@register_encoder("phikon")
def create_phikon(weights=None, device="cpu", precision=None, arch_overrides=None,
                  **kw) -> Encoder:
    """Phikon (owkin/phikon, ViT-B/16 iBOT), CLS 768-d; HF folder or iBOT teacher .pth."""
    if kw:
        raise ConfigError(f"encoder 'phikon' got unknown options {sorted(kw)}")
    from transformers import ViTModel

    resolved = resolve_weights("phikon", weights, "owkin/phikon", HF_FILES, HF_EXTRA)
    folder = _hf_folder_of(resolved)
    if folder is None:
        return _make_ibot_phikon(resolved, device, precision, arch_overrides)
    if arch_overrides:
        raise ConfigError("arch_overrides apply to the iBOT checkpoint only; a transformers "
                          "folder carries its architecture in config.json")
    model = load_hf_model(ViTModel, folder, "phikon", add_pooling_layer=False)
    prep = read_preprocessing(folder, Preprocessing(224, "resize", "bilinear"))
    enc = HFEncoder(model, name="phikon", embed_dim=model.config.hidden_size, preprocessing=prep,
                    pooling="cls", license=PHIKON_LICENSE, hub_id="owkin/phikon",
                    precision=precision or "fp32", weights_sha256=resolved.sha256,
                    weights_source=resolved.source)
    return finalize(enc, device)


@register_encoder("phikon_v2")
def create_phikon_v2(weights=None, device="cpu", precision=None, arch_overrides=None,
                     **kw) -> Encoder:
    """Phikon-v2 (owkin/phikon-v2, DINOv2 ViT-L/16), CLS 1024-d."""
    if kw or arch_overrides:
        raise ConfigError(f"encoder 'phikon_v2' got unknown options {sorted({**kw, **(arch_overrides or {})})}")
    from transformers import Dinov2Model

    resolved = resolve_weights("phikon_v2", weights, "owkin/phikon-v2", HF_FILES, HF_EXTRA)
    folder = resolved.folder
    model = load_hf_model(Dinov2Model, folder, "phikon_v2")
    prep = read_preprocessing(folder, Preprocessing(224, "resize", "bicubic"))
    enc = HFEncoder(model, name="phikon_v2", embed_dim=model.config.hidden_size,
                    preprocessing=prep, pooling="cls", license=PHIKON_V2_LICENSE,
                    hub_id="owkin/phikon-v2", precision=precision or "fp32",
                    weights_sha256=resolved.sha256, weights_source=resolved.source)
    return finalize(enc, device)


@register_prefix("hf")
def create_hf_generic(model_id: str, weights=None, device="cpu", precision=None,
                      arch_overrides=None, pooling: str = "cls", **kw) -> Encoder:
    """``hf:<org/repo or folder>``: ``AutoModel``, CLS of the last hidden state
    (``pooling="pooler"`` for ``pooler_output``)."""
    if kw or arch_overrides:
        raise ConfigError(f"hf:<repo> encoders take no options {sorted({**kw, **(arch_overrides or {})})}")
    from transformers import AutoModel

    name = f"hf:{model_id}"
    hub_id = None if Path(model_id).exists() else model_id
    resolved = resolve_weights(name, weights if weights is not None else model_id, hub_id,
                               HF_FILES, HF_EXTRA)
    model = load_hf_model(AutoModel, resolved.folder, name,
                          allow_missing_pooler=pooling != "pooler")
    prep = read_preprocessing(resolved.folder, Preprocessing(224, "resize", "bicubic",
                                                             IMAGENET_MEAN, IMAGENET_STD))
    cfg = getattr(model.config, "vision_config", model.config)
    enc = HFEncoder(model, name=name, embed_dim=int(cfg.hidden_size), preprocessing=prep,
                    pooling=pooling, license="see the model card", hub_id=hub_id,
                    precision=precision or "fp32", weights_sha256=resolved.sha256,
                    weights_source=resolved.source)
    return finalize(enc, device)
