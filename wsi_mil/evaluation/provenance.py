"""The guard against mixed models: image features and text side must come from one model.

Zero-shot, the text-initialised few-shot head and image-text retrieval compare
image embeddings with text embeddings; that only means something in the joint
space of *one* vision-language model. Several of them share a width (PLIP,
BiomedCLIP, UniMed-CLIP ViT-B/16 and QuiltNet are all 512-d), so the width
check alone lets PLIP prompts run on BiomedCLIP features.

Rule (:func:`check_same_model`): when both sides record a weights fingerprint
(sha256), the fingerprints must be equal (the encoder names may differ, e.g.
``biomedclip`` and ``open_clip:hf-hub:microsoft/BiomedCLIP-...``); when either
lacks one, the encoder names must be equal. Features without any provenance
(made before it was recorded, TRIDENT files) cannot be checked: a warning is
logged. A mismatch raises :class:`ProvenanceMismatchError` unless
``allow_mixed_models`` is set (a deliberate cross-model experiment), which is
logged as a warning.
"""
from __future__ import annotations

from collections.abc import Iterable

from loguru import logger

from wsi_mil.errors import ConfigError
from wsi_mil.io.features import FeatureProvenance

OVERRIDE_FLAG = "allow_mixed_models"


class ProvenanceMismatchError(ConfigError):
    """Image features and the text side come from different models (encoder or weights)."""


def same_model(a: FeatureProvenance, b: FeatureProvenance) -> bool | None:
    """True / False when decidable, None when either side has no provenance."""
    if not a.known or not b.known:
        return None
    if a.weights_sha256 and b.weights_sha256:
        return a.weights_sha256 == b.weights_sha256
    return bool(a.encoder) and a.encoder == b.encoder


def check_same_model(
    features: FeatureProvenance,
    text: FeatureProvenance,
    allow_mixed_models: bool = False,
    what: str = "zero-shot",
) -> bool:
    """Raise :class:`ProvenanceMismatchError` unless both sides are one model; see the module doc.

    Returns True when the check passed, False when it could not be made or a
    mismatch was allowed.
    """
    verdict = same_model(features, text)
    if verdict is None:
        side = "features record" if not features.known else "text side records"
        logger.warning("{}: cannot check that features and text side are one model: the {} "
                       "no encoder / weights ({}); make sure they match", what, side,
                       (features if not features.known else text).source)
        return False
    if verdict:
        logger.debug("{}: features and text side are one model: {}", what, text.describe())
        return True
    message = (f"{what}: image features made by {features.describe()} ({features.source}) but "
               f"the text side is {text.describe()}: embeddings of different models do not "
               f"share a space. Use the features' encoder and weights, or set "
               f"{OVERRIDE_FLAG}=true for a deliberate cross-model experiment")
    if not allow_mixed_models:
        raise ProvenanceMismatchError(message)
    logger.warning("{} [allowed by {}=true]", message, OVERRIDE_FLAG)
    return False


def check_consistent(provenances: Iterable[tuple[str, FeatureProvenance]], what: str) -> None:
    """Raise :class:`ProvenanceMismatchError` when items (slides, folders) disagree on the model."""
    first: tuple[str, FeatureProvenance] | None = None
    for name, prov in provenances:
        if not prov.known:
            continue
        if first is None:
            first = (name, prov)
        elif same_model(first[1], prov) is False:
            raise ProvenanceMismatchError(
                f"{what}: {first[0]} was made by {first[1].describe()} but {name} by "
                f"{prov.describe()}; features of one run must come from one model")
