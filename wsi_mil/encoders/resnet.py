"""ImageNet ResNet-50 (torchvision layout).

- ``resnet50_trunc``: conv1 .. layer3, then adaptive average pooling -> 1024-d,
  the truncated baseline of CLAM / TRIDENT;
- ``resnet50``: the full network up to the global average pool -> 2048-d.

Default weights: ``timm/resnet50.tv_in1k`` on the Hugging Face hub, which is
torchvision's ``IMAGENET1K_V1`` in torchvision's key layout. A local torchvision
file (e.g. ``resnet50-0676ba61.pth``) or any state dict of the same layout
works as ``weights=``. Tests shrink the network with
``arch_overrides=dict(layers=[1, 1, 1, 1], width_per_group=8)`` (the output
widths, 1024 / 2048, are unchanged).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from wsi_mil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Preprocessing, finalize
from wsi_mil.encoders.registry import register_encoder
from wsi_mil.encoders.weights import (
    load_strict,
    read_arch_overrides,
    read_state_dicts,
    resolve_weights,
    unwrap_state_dict,
)
from wsi_mil.errors import ConfigError

HUB_ID = "timm/resnet50.tv_in1k"
LICENSE = "BSD-3-Clause (torchvision ImageNet weights)"
PREPROCESSING = Preprocessing(input_size=224, resize="resize", interpolation="bilinear",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD)


class ResNetEncoder(Encoder):
    """torchvision ResNet trunk; ``truncate=True`` stops after layer3."""

    def __init__(self, model: ResNet, truncate: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.truncate = truncate
        if truncate:
            model.layer4 = nn.Identity()  # unused: free its memory
        model.fc = nn.Identity()
        self.model = model

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(images))))  # (B, 64, S/4, S/4)
        x = m.layer3(m.layer2(m.layer1(x)))  # (B, 1024, S/16, S/16)
        if not self.truncate:
            x = m.layer4(x)  # (B, 2048, S/32, S/32)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C)


def convert_resnet_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """torchvision-layout checkpoint (flat or nested, ``module.``) -> trunk keys, ``fc`` dropped."""
    state = unwrap_state_dict(state)
    return {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}


def build_resnet(args: dict[str, Any]) -> ResNet:
    args = {"layers": [3, 4, 6, 3], **args}
    model = ResNet(Bottleneck, list(args.pop("layers")), **args)
    model.fc = nn.Identity()
    return model


def _make(name: str, truncate: bool, weights, device, precision, arch_overrides) -> Encoder:
    resolved = resolve_weights(name, weights, HUB_ID, ("model.safetensors", "pytorch_model.bin"), ())
    model = build_resnet(read_arch_overrides(resolved, arch_overrides))
    state = convert_resnet_state(read_state_dicts(resolved.files))
    load_strict(model, state, name, resolved.source)
    enc = ResNetEncoder(
        model, truncate, name=name, embed_dim=1024 if truncate else 2048,
        preprocessing=PREPROCESSING, pooling="avgpool(layer3)" if truncate else "avgpool(layer4)",
        license=LICENSE, hub_id=HUB_ID, precision=precision or "fp32",
        weights_sha256=resolved.sha256, weights_source=resolved.source,
    )
    return finalize(enc, device)


@register_encoder("resnet50_trunc")
def create_resnet50_trunc(weights=None, device="cpu", precision=None, arch_overrides=None,
                          **kw) -> Encoder:
    if kw:
        raise ConfigError(f"encoder 'resnet50_trunc' got unknown options {sorted(kw)}")
    return _make("resnet50_trunc", True, weights, device, precision, arch_overrides)


@register_encoder("resnet50")
def create_resnet50(weights=None, device="cpu", precision=None, arch_overrides=None,
                    **kw) -> Encoder:
    if kw:
        raise ConfigError(f"encoder 'resnet50' got unknown options {sorted(kw)}")
    return _make("resnet50", False, weights, device, precision, arch_overrides)
