"""CTransPath: timm Swin-T (``swin_tiny_patch4_window7_224``) with a convolutional stem.

The published ``ctranspath.pth`` (Wang et al., TransPath) is ``{'model':
state_dict}`` saved with the authors' timm 0.5.4 fork. :func:`convert_ctranspath_state_dict`
maps it to timm >= 0.9:

- ``layers.N.downsample.*`` -> ``layers.(N+1).downsample.*`` (timm now merges patches
  at the start of a stage, the original at the end); the 4-way patch concatenation
  order is the same in both, so the weights carry over unchanged;
- ``*.relative_position_index`` and ``*.attn_mask`` buffers are dropped (timm
  recomputes them, non-persistent);
- the ImageNet ``head.*`` is dropped (the embedding is the mean-pooled final norm, 768-d).

No official hub copy exists: pass ``weights=/path/to/ctranspath.pth`` (or a
folder holding it).
"""
from __future__ import annotations

import re
from typing import Any

import timm
import torch
from torch import nn

from wsi_mil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Preprocessing, finalize
from wsi_mil.encoders.registry import register_encoder
from wsi_mil.encoders.timm_vit import TimmEncoder
from wsi_mil.encoders.weights import (
    load_strict,
    read_arch_overrides,
    read_state_dicts,
    resolve_weights,
    unwrap_state_dict,
)
from wsi_mil.errors import ConfigError

ARCH = "swin_tiny_patch4_window7_224"
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


class ConvStem(nn.Module):
    """TransPath's patch embedding: two stride-2 3x3 convs (BN, ReLU), a 1x1 conv, a norm.

    The ``proj`` Sequential keeps the original layout (indices 0, 1, 3, 4, 6 hold
    weights) so checkpoint keys match. Output is NHWC, as timm's Swin expects.
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None,
                 output_fmt="NHWC", strict_img_size=True, **_: Any) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise ConfigError(f"ConvStem needs patch_size 4 and embed_dim % 8 == 0, got "
                              f"{patch_size}, {embed_dim}")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _i in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/4, W/4)
        x = x.permute(0, 2, 3, 1)  # (B, H/4, W/4, D)
        return self.norm(x)


def convert_ctranspath_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Published CTransPath (timm 0.5.4 layout) -> timm >= 0.9 Swin keys, head removed.

    Idempotent: a state dict already in the new layout (no ``layers.0.downsample``)
    only loses its buffers and head.
    """
    state = unwrap_state_dict(state, ("model", "state_dict"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    old_layout = any(k.startswith("layers.0.downsample.") for k in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask")) or key.startswith("head."):
            continue
        if old_layout:
            key = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        out[key] = value
    return out


def build_ctranspath(arch_overrides: dict[str, Any] | None = None) -> nn.Module:
    args = dict(arch_overrides or {})
    return timm.create_model(ARCH, pretrained=False, num_classes=0, embed_layer=ConvStem, **args)


@register_encoder("ctranspath")
def create_ctranspath(weights=None, device="cpu", precision=None, arch_overrides=None,
                      **kw) -> Encoder:
    """CTransPath, 768-d (mean of the final Swin tokens), from the published ``ctranspath.pth``."""
    if kw:
        raise ConfigError(f"encoder 'ctranspath' got unknown options {sorted(kw)}")
    resolved = resolve_weights("ctranspath", weights, None,
                               ("ctranspath.pth", "model.safetensors", "pytorch_model.bin"), ())
    args = read_arch_overrides(resolved, arch_overrides)
    model = build_ctranspath(args)
    state = convert_ctranspath_state_dict(read_state_dicts(resolved.files))
    load_strict(model, state, "ctranspath", resolved.source)
    enc = TimmEncoder(
        model, name="ctranspath", embed_dim=model.num_features,
        preprocessing=Preprocessing(input_size=int(args.get("img_size", 224)), resize="resize",
                                    interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
        pooling="mean", license="GPL-3.0 (TransPath code); weights: research use, see TransPath",
        hub_id=None, precision=precision or "fp32", weights_sha256=resolved.sha256,
        weights_source=resolved.source,
    )
    return finalize(enc, device)
