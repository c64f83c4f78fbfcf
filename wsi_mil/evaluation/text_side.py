"""Text sides of the vision-language evaluations: where class and caption embeddings come from.

A :class:`TextSide` has ``encode_text(prompts) -> (P, D)``, the provenance of
the model (encoder name + weights sha256, for the mixed-model guard of
:mod:`wsi_mil.evaluation.provenance`), its learned logit scale and whether it
shares a joint space with an image encoder (``aligned``).

- :func:`text_side_from_encoder`: the text tower of a registered CLIP-style
  encoder (``create_encoder(name).encode_text``): aligned with that encoder's
  image embeddings; used by zero-shot, the text-initialised head, retrieval.
- :func:`text_side_from_hf`: any Hugging Face text model (e.g. BioLinkBERT,
  PubMedBERT) through ``AutoModel``; the embedding is the ``[CLS]`` token
  (``pooling="cls"``) or the mask-weighted mean of the last hidden states
  (``"mean"``). Not aligned with any image encoder: only the CITE-style head
  (:mod:`wsi_mil.evaluation.cite`), which learns the image->text projection, uses it.

Learned logit scale (:func:`learned_logit_scale`): CLIP-style models store the
softmax temperature as a log-space parameter ``logit_scale`` (CLIP, PLIP,
BiomedCLIP, CONCH, MUSK: ``exp(logit_scale)`` ~ 100 after training). A Python
number on the encoder (``encoder.logit_scale = 50.0``) is taken as the scale
itself; a tensor on the encoder or on its ``model`` is log-space and exponentiated.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from loguru import logger

from wsi_mil.errors import ConfigError
from wsi_mil.io.features import FeatureProvenance

DEFAULT_LOGIT_SCALE = 100.0
POOLINGS = ("cls", "mean")


def learned_logit_scale(encoder: Any) -> float | None:
    """The model's trained softmax temperature (linear scale), or None if it has none."""
    for owner in (encoder, getattr(encoder, "model", None)):
        value = getattr(owner, "logit_scale", None) if owner is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value.detach().float().exp().item())
    return None


def resolve_logit_scale(override: float | None, learned: float | None, what: str) -> float:
    """``override`` if given, else the learned scale, else 100 (CLIP's trained value), logged."""
    if override is not None:
        if float(override) <= 0:
            raise ConfigError(f"logit_scale={override}; must be > 0 (or null = the model's own)")
        logger.info("{}: logit scale {} (override; the model's own: {})", what, float(override),
                    "none" if learned is None else f"{learned:.4g}")
        return float(override)
    if learned is None:
        logger.info("{}: the model records no logit scale; using {}", what, DEFAULT_LOGIT_SCALE)
        return DEFAULT_LOGIT_SCALE
    logger.info("{}: the model's learned logit scale {:.4g}", what, learned)
    return float(learned)


@dataclass
class TextSide:
    """A text encoder with its provenance; see the module docstring."""

    model: Any                       # has encode_text(list[str]) -> (P, D) tensor / array
    provenance: FeatureProvenance
    logit_scale: float | None = None  # learned (linear) scale, None when unknown
    aligned: bool = True              # shares a joint space with an image encoder

    @property
    def name(self) -> str:
        return self.provenance.encoder or type(self.model).__name__

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(P,) texts -> (P, D) float32 embeddings (not normalised), in batches."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise ConfigError(f"no text to embed with {self.name}")
        chunks = []
        for i in range(0, len(prompts), batch_size):
            out = self.model.encode_text(prompts[i:i + batch_size])
            chunks.append(out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor)
                          else np.asarray(out, dtype=np.float32))
        return np.concatenate(chunks).astype(np.float32)


def text_side_from_encoder(
    encoder_name: str,
    weights: str | None = None,
    device: str = "cpu",
    precision: str | None = None,
) -> TextSide:
    """The text tower of a CLIP-style encoder (aligned with its image embeddings)."""
    from wsi_mil.encoders import create_encoder

    encoder = create_encoder(encoder_name, weights=weights, device=device, precision=precision)
    return text_side_of(encoder)


def text_side_of(encoder: Any) -> TextSide:
    """Wrap an already-created CLIP-style encoder (or any object with ``encode_text``)."""
    name = getattr(encoder, "name", type(encoder).__name__)
    if not getattr(encoder, "has_text", hasattr(encoder, "encode_text")):
        raise ConfigError(f"encoder {name!r} has no text side (has_text=False); zero-shot, "
                          "text-initialised heads and retrieval need a CLIP-style encoder")
    prov = FeatureProvenance(str(name), getattr(encoder, "weights_sha256", None) or None,
                             f"text side of encoder {name!r}")
    return TextSide(encoder, prov, learned_logit_scale(encoder), aligned=True)


class HFTextModel:
    """A Hugging Face text model as ``encode_text(prompts) -> (P, D)`` (CLS or mean pooling)."""

    def __init__(self, model: Any, tokenizer: Any, pooling: str = "cls", max_length: int = 128,
                 device: str = "cpu") -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}; valid: {list(POOLINGS)}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = int(max_length)
        self.device = device

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**tokens).last_hidden_state  # (P, L, H)
        if self.pooling == "cls":
            return hidden[:, 0].float()  # (P, H)
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (P, L, 1)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float()  # (P, H)


def text_side_from_hf(
    model: str,
    pooling: str = "cls",
    device: str = "cpu",
    max_length: int = 128,
) -> TextSide:
    """Any Hugging Face text model (hub id or local ``save_pretrained`` folder), not aligned."""
    from transformers import AutoModel, AutoTokenizer

    from wsi_mil.encoders.clip import TOKENIZER_FILES
    from wsi_mil.encoders.weights import resolve_weights

    name = f"hf-text:{model}"
    resolved = resolve_weights(name, model, None, ("model.safetensors", "pytorch_model.bin"),
                               ("config.json",) + TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(resolved.folder))
    hf_model = AutoModel.from_pretrained(str(resolved.folder)).float()
    logger.info("text model {} ({}), {} pooling, width {}", model, resolved.source, pooling,
                hf_model.config.hidden_size)
    prov = FeatureProvenance(name, resolved.sha256, resolved.source)
    return TextSide(HFTextModel(hf_model, tokenizer, pooling, max_length, device), prov,
                    logit_scale=None, aligned=False)


@dataclass
class ClassText:
    """Where class prototypes come from: a text side and the class prompts.

    ``prototypes`` (C, D) given directly skip the text side (precomputed prompt
    embeddings, tests); ``provenance`` then says which model made them.
    """

    side: TextSide | None = None
    class_prompts: dict[str, Any] | None = None
    templates: Sequence[str] = ()
    labels_as_prompts: bool = False
    prototypes: np.ndarray | None = None
    provenance: FeatureProvenance | None = None

    @property
    def model_provenance(self) -> FeatureProvenance:
        if self.side is not None:
            return self.side.provenance
        return self.provenance or FeatureProvenance(source="precomputed prototypes")

    @property
    def learned_logit_scale(self) -> float | None:
        return None if self.side is None else self.side.logit_scale

    def prototypes_for(self, labels: Sequence[str], dim: int | None = None) -> np.ndarray:
        """Unit class prototypes (C, D) of ``labels``; D must equal ``dim`` when given."""
        from wsi_mil.evaluation.zero_shot import DEFAULT_TEMPLATES, make_text_prototypes

        if self.prototypes is not None:
            protos = np.asarray(self.prototypes, dtype=np.float32)
        elif self.side is not None:
            protos = make_text_prototypes(self.side, labels, self.class_prompts,
                                          list(self.templates) or DEFAULT_TEMPLATES,
                                          self.labels_as_prompts)
        else:
            raise ConfigError("class text needs a text side (encoder) or precomputed prototypes")
        if protos.ndim != 2 or protos.shape[0] != len(labels) or (
                dim is not None and protos.shape[1] != dim):
            raise ConfigError(
                f"text prototypes {protos.shape} do not match {len(labels)} classes x feature "
                f"dim {dim}: the features must be the same CLIP-style encoder's image embeddings")
        return protos
