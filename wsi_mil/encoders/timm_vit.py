"""timm ViT encoders: UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath, ``timm:<name>``.

Loading path (the same for hub weights, local files/folders and tiny test
models): resolve the weight file (``weights.resolve_weights``), build the timm
architecture with ``pretrained=False`` and the model's keyword arguments (as
on its model card) updated with ``arch_overrides`` / ``wsi_mil_arch.json``,
read the state dict safely and load it strictly (no silent random init).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from wsi_mil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Preprocessing, finalize
from wsi_mil.encoders.registry import register_encoder, register_prefix
from wsi_mil.encoders.weights import (
    DEFAULT_WEIGHT_FILES,
    ResolvedWeights,
    load_strict,
    read_arch_overrides,
    read_state_dicts,
    resolve_weights,
    unwrap_state_dict,
)

SWIGLU_SILU = dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=nn.SiLU)


@dataclass(frozen=True)
class TimmSpec:
    """A registered timm encoder: architecture, default weights, preprocessing, pooling."""

    name: str
    arch: str
    hub_id: str | None
    embed_dim: int
    model_args: dict[str, Any] = field(default_factory=dict)
    pooling: str = "cls"  # "cls" | "cls+mean_patch" | "default" (model's own global pool)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    license: str = ""
    precision: str = "fp32"
    resize: str = "resize"  # the card's transform: see base.Preprocessing
    resize_size: int = 0  # 0: input_size (no crop)


class TimmEncoder(Encoder):
    """A timm model; the embedding is CLS, CLS + mean patch tokens, or the model's pool."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls+mean_patch":
            tokens = self.model.forward_features(images)  # (B, T, D), T = prefix + patches
            cls = tokens[:, 0]  # (B, D)
            patches = tokens[:, self.model.num_prefix_tokens:].mean(dim=1)  # (B, D), registers skipped
            return torch.cat([cls, patches], dim=-1)  # (B, 2D)
        return self.model(images)  # (B, D): num_classes=0, global_pool token / avg


def build_timm_model(arch: str, model_args: dict[str, Any]) -> nn.Module:
    args = dict(model_args)
    arch = args.pop("arch", arch)
    args["num_classes"] = 0
    return timm.create_model(arch, pretrained=False, **args)


def convert_timm_state(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """A released timm checkpoint (flat, or under ``state_dict`` / ``model``; ``module.``
    prefixes) -> ``model``'s keys; classification heads the model lacks are dropped."""
    state = unwrap_state_dict(state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    return {k: v for k, v in state.items()
            if not (k.startswith(("head.", "fc_norm.")) and k not in expected)}


def load_timm_weights(model: nn.Module, resolved: ResolvedWeights, name: str) -> None:
    state = convert_timm_state(read_state_dicts(resolved.files), model)
    load_strict(model, state, name, resolved.source)


def make_timm_encoder(spec: TimmSpec, weights, device, precision, arch_overrides) -> Encoder:
    resolved = resolve_weights(spec.name, weights, spec.hub_id, DEFAULT_WEIGHT_FILES, ())
    args = {**spec.model_args, **read_arch_overrides(resolved, arch_overrides)}
    model = build_timm_model(spec.arch, args)
    load_timm_weights(model, resolved, spec.name)
    embed_dim = model.num_features * (2 if spec.pooling == "cls+mean_patch" else 1)
    input_size = int(args.get("img_size", 224))
    enc = TimmEncoder(
        model, name=spec.name, embed_dim=embed_dim,
        preprocessing=Preprocessing(input_size=input_size, resize=spec.resize,
                                    interpolation=spec.interpolation, mean=spec.mean, std=spec.std,
                                    resize_size=spec.resize_size if spec.resize_size > input_size
                                    else 0),
        pooling=spec.pooling, license=spec.license, hub_id=spec.hub_id,
        precision=precision, weights_sha256=resolved.sha256,
        weights_source=resolved.source, default_precision=spec.precision,
    )
    return finalize(enc, device)


SPECS: dict[str, TimmSpec] = {
    s.name: s
    for s in (
        TimmSpec(
            name="uni", arch="vit_large_patch16_224", hub_id="MahmoodLab/UNI", embed_dim=1024,
            model_args=dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
            license="CC-BY-NC-ND-4.0, gated (MahmoodLab/UNI): academic non-commercial use",
            resize="center_crop",  # card: Resize(224) (short side) -> ToTensor -> Normalize
        ),
        TimmSpec(
            name="uni2_h", arch="vit_giant_patch14_224", hub_id="MahmoodLab/UNI2-h", embed_dim=1536,
            model_args=dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                            embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                            reg_tokens=8, dynamic_img_size=True, **SWIGLU_SILU),
            license="CC-BY-NC-ND-4.0, gated (MahmoodLab/UNI2-h): academic non-commercial use",
            precision="bf16", resize="center_crop",  # timm transform, crop_pct 1.0
        ),
        TimmSpec(
            name="virchow2", arch="vit_huge_patch14_224", hub_id="paige-ai/Virchow2",
            embed_dim=2560, pooling="cls+mean_patch",
            model_args=dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, reg_tokens=4,
                            global_pool="", dynamic_img_size=True, **SWIGLU_SILU),
            license="CC-BY-NC-ND-4.0, gated (paige-ai/Virchow2): non-commercial use",
            precision="fp16", resize="center_crop",  # timm transform, crop_pct 1.0
        ),
        TimmSpec(
            name="h_optimus_0", arch="vit_giant_patch14_reg4_dinov2",
            hub_id="bioptimus/H-optimus-0", embed_dim=1536,
            model_args=dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
            mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
            license="Apache-2.0 (bioptimus/H-optimus-0), gated: accept the terms on the hub",
            precision="fp16",
        ),
        TimmSpec(
            name="gigapath", arch="vit_giant_patch14_dinov2", hub_id="prov-gigapath/prov-gigapath",
            embed_dim=1536,
            model_args=dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
                            num_heads=24, init_values=1e-5, mlp_ratio=5.33334),
            # model card: Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize
            resize="center_crop", resize_size=256,
            license="Apache-2.0 with research-only terms (prov-gigapath), gated",
        ),
    )
}


def _register(spec: TimmSpec) -> None:
    @register_encoder(spec.name)
    def factory(weights=None, device="cpu", precision=None, arch_overrides=None, **kw) -> Encoder:
        if kw:
            from wsi_mil.errors import ConfigError

            raise ConfigError(f"encoder {spec.name!r} got unknown options {sorted(kw)}")
        return make_timm_encoder(spec, weights, device, precision, arch_overrides)

    factory.__doc__ = f"{spec.name}: timm {spec.arch}, {spec.embed_dim}-d ({spec.pooling})."


for _spec in SPECS.values():
    _register(_spec)


def timm_preprocessing(data_cfg: dict[str, Any]) -> Preprocessing:
    """timm's eval transform (``create_transform(**resolve_data_config(...))``) as a Preprocessing.

    ``crop_pct`` / ``crop_mode``: the tile is resized to ``floor(size / crop_pct)``
    (short side for ``"center"``, both sides for ``"squash"``) then centre-cropped to
    ``size``; ``"border"`` (resize keeping the ratio, pad) is taken as ``"center"``
    (the same for square tiles).
    """
    size = int(data_cfg["input_size"][-1])
    crop_pct = float(data_cfg.get("crop_pct") or 1.0)
    crop_mode = data_cfg.get("crop_mode") or "center"
    scale = math.floor(size / crop_pct)
    return Preprocessing(input_size=size, resize="resize" if crop_mode == "squash" else "center_crop",
                         interpolation=data_cfg.get("interpolation", "bicubic"),
                         mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]),
                         resize_size=scale if scale > size else 0)


@register_prefix("timm")
def create_timm_generic(model_id: str, weights=None, device="cpu", precision=None,
                        arch_overrides=None, pooling: str = "default", **kw) -> Encoder:
    """``timm:<name[.tag]>`` or ``timm:hf-hub:<org/repo>``: any timm model, pooled by timm.

    Weights default to the model's timm hub id; a ``config.json`` in timm's hub
    format (``architecture``, ``model_args``, ``pretrained_cfg``) next to the
    weights sets the architecture for ``hf-hub:`` ids.
    """
    name = f"timm:{model_id}"
    if model_id.startswith("hf-hub:"):
        hub_id = model_id.removeprefix("hf-hub:")
        resolved = resolve_weights(name, weights, hub_id, DEFAULT_WEIGHT_FILES, ("config.json",))
        cfg_file = resolved.folder / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        arch = cfg.get("architecture", "")
        model_args = dict(cfg.get("model_args", {}))
        pcfg = cfg.get("pretrained_cfg", {})
    else:
        arch = model_id
        found = timm.models.get_pretrained_cfg(model_id)
        pcfg = found.to_dict() if found is not None else {}
        hub_id = pcfg.get("hf_hub_id")
        resolved = resolve_weights(name, weights, hub_id, DEFAULT_WEIGHT_FILES, ())
        model_args = {}
    model_args.update(read_arch_overrides(resolved, arch_overrides))
    if kw:
        model_args.update(kw)
    model = build_timm_model(arch, model_args)
    load_timm_weights(model, resolved, name)
    prep = timm_preprocessing(timm.data.resolve_data_config(pcfg, model=model))
    enc = TimmEncoder(model, name=name, embed_dim=model.num_features, preprocessing=prep,
                      pooling=pooling, license=str(pcfg.get("license", "see the model card")),
                      hub_id=hub_id, precision=precision or "fp32",
                      weights_sha256=resolved.sha256, weights_source=resolved.source)
    return finalize(enc, device)
