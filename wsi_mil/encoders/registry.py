"""Encoder registry and factory: ``create_encoder``, ``list_encoders``.

Every factory has the signature::

    factory(weights=None, device="cpu", precision=<default>, arch_overrides=None, **kw) -> Encoder

Generic families are reached with a prefix: ``timm:<timm model name>``,
``hf:<hub id or folder>``, ``open_clip:<open_clip model name>``; their
factory also receives ``model_id=<the part after the colon>``.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from wsi_mil.encoders.base import Encoder, check_precision
from wsi_mil.errors import RegistryError
from wsi_mil.registry import Registry

ENCODERS: Registry[Encoder] = Registry("encoder")
PREFIXES: Registry[Encoder] = Registry("encoder prefix")

# Where each name is registered: a family module is imported only when one of
# its encoders is created (timm / transformers / open_clip imports take seconds).
FAMILY_OF: dict[str, str] = {
    "histo_stats": "histo_stats",
    "phikon": "hf_vit", "phikon_v2": "hf_vit",
    "uni": "timm_vit", "uni2_h": "timm_vit", "virchow2": "timm_vit",
    "h_optimus_0": "timm_vit", "gigapath": "timm_vit",
    "ctranspath": "ctranspath",
    "resnet50": "resnet", "resnet50_trunc": "resnet",
    "plip": "clip", "biomedclip": "clip", "unimed_clip": "clip",
    "musk": "musk", "musk_joint": "musk", "conch": "conch", "conch_joint": "conch",
}
PREFIX_OF: dict[str, str] = {"timm": "timm_vit", "hf": "hf_vit", "open_clip": "clip"}
GENERIC_FORMS: dict[str, str] = {"timm": "timm:<name>", "hf": "hf:<repo>",
                                 "open_clip": "open_clip:<name>"}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: register an encoder factory under ``name`` (duplicates raise)."""
    return ENCODERS.register(name)


def register_prefix(prefix: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: register the factory of ``<prefix>:<model_id>`` names."""
    return PREFIXES.register(prefix)


def import_family(module: str) -> None:
    importlib.import_module(f"wsi_mil.encoders.{module}")


def import_all_families() -> None:
    for module in sorted(set(FAMILY_OF.values()) | set(PREFIX_OF.values())):
        import_family(module)


def list_encoders() -> list[str]:
    """Registered names, then the generic ``<prefix>:<...>`` forms (imports nothing heavy)."""
    names = sorted(set(FAMILY_OF) | set(ENCODERS.list()))
    prefixes = sorted(set(PREFIX_OF) | set(PREFIXES.list()))
    return names + [GENERIC_FORMS.get(p, f"{p}:<id>") for p in prefixes]


def create_encoder(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = "fp32",
    arch_overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build encoder ``name`` with ``weights`` (None = its default hub id), frozen, on ``device``.

    ``precision``: "fp32" | "fp16" | "bf16"; None = the model card's recommendation
    (``encoder.default_precision``: fp16 for virchow2 / h_optimus_0, bf16 for uni2_h,
    else fp32).
    ``arch_overrides``: architecture keyword arguments merged into the family's
    defaults (tiny test models, custom checkpoints), also read from a
    ``wsi_mil_arch.json`` next to the weights; the loading code path is the
    same as for real weights.
    """
    if precision is not None:
        check_precision(precision)
    if name in FAMILY_OF:
        import_family(FAMILY_OF[name])
    if name in ENCODERS:
        factory = ENCODERS.get(name)
    elif ":" in name:
        prefix, model_id = name.split(":", 1)
        if prefix in PREFIX_OF:
            import_family(PREFIX_OF[prefix])
        if prefix not in PREFIXES:
            raise RegistryError(
                f"unknown encoder prefix {prefix!r} in {name!r}; available: "
                f"{', '.join(list_encoders())}"
            )
        factory = PREFIXES.get(prefix)
        kwargs["model_id"] = model_id
    else:
        raise RegistryError(
            f"unknown encoder {name!r}; available: {', '.join(list_encoders())}"
        )
    return factory(
        weights=weights, device=device, precision=precision, arch_overrides=arch_overrides,
        **kwargs,
    )
