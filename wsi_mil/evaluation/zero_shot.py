"""Zero-shot tile and slide classification with a CLIP-style encoder's text side.

- Class prototypes (CLIP / MI-Zero): for class c with names ``n_1..n_m`` and
  templates ``t_1..t_T`` ("an H&E image of {}." or, as MUSK and the CLIP
  benchmark write them, "an H&E image of {c}."), embed the m x T prompts,
  L2-normalise each, average, and L2-normalise the mean -> (C, D). Every class
  needs prompts (:func:`class_names_for_labels`); using the raw label is an
  explicit opt-in (``labels_as_prompts``).
- Tile logits: cosine similarity of the L2-normalised image embedding (the
  encoder's joint-space output) with each prototype (N, C); probabilities =
  ``softmax(logit_scale * cosine)`` with the model's learned ``logit_scale``
  (:func:`wsi_mil.evaluation.text_side.learned_logit_scale`, ~100 for CLIP).
- Slide (MI-Zero ``topj_pooling``): per class, the mean of the ``top_k``
  highest tile similarities of that class; ``top_k=None`` ("all") is mean
  pooling; ``top_k`` larger than the slide is clipped. Slide prediction =
  argmax of the pooled scores; slide probabilities = softmax(logit_scale *
  pooled) (used for AUC only; the prediction does not depend on the scale).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from loguru import logger

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.tile_metrics import classification_metrics

DEFAULT_TEMPLATES = (
    "{}.",
    "an H&E image of {}.",
    "a histopathology image of {}.",
    "an image of {}.",
    "{} tissue.",
)


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x / ||x||`` along ``axis`` (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def fill_template(template: str, name: str) -> str:
    """``template`` with its class placeholder(s) ``{}`` and / or ``{c}`` set to ``name``."""
    try:
        return template.format(name, c=name)
    except (IndexError, KeyError, ValueError) as err:
        raise ConfigError(f"template {template!r}: placeholders must be '{{}}' or '{{c}}' "
                          f"({type(err).__name__}: {err})") from err


def class_prompts(names: str | Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every filled template (:func:`fill_template`) for the names (synonyms) of one class."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigError("a class has no name; give at least one name per class")
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad or not templates:
        raise ConfigError(f"templates must be non-empty and each contain '{{}}' or '{{c}}'; "
                          f"bad: {bad}")
    return [fill_template(t, n) for n in names for t in templates]


@torch.no_grad()
def make_class_prototypes(
    text_encoder: Any,
    class_names: Sequence[str | Sequence[str]],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> np.ndarray:
    """Class prototypes (C, D), unit rows, from ``text_encoder.encode_text(prompts) -> (P, D)``."""
    if not getattr(text_encoder, "has_text", hasattr(text_encoder, "encode_text")):
        name = getattr(text_encoder, "name", type(text_encoder).__name__)
        raise ConfigError(f"encoder {name!r} has no text side (has_text=False); "
                          "zero-shot needs a CLIP-style encoder")
    protos = []
    for names in class_names:
        prompts = class_prompts(names, templates)
        chunks = [_to_numpy(text_encoder.encode_text(prompts[i:i + batch_size]))
                  for i in range(0, len(prompts), batch_size)]
        emb = l2_normalise(np.concatenate(chunks))  # (P, D)
        protos.append(l2_normalise(emb.mean(axis=0)))
    return np.stack(protos).astype(np.float32)


def cosine_logits(image_features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity (N, C) of image embeddings (N, D) with prototypes (C, D)."""
    feats = np.asarray(image_features, dtype=np.float32)
    protos = np.asarray(prototypes, dtype=np.float32)
    if feats.ndim != 2 or protos.ndim != 2 or feats.shape[1] != protos.shape[1]:
        raise ConfigError(f"image features {feats.shape} and prototypes {protos.shape} must be "
                          "(N, D) and (C, D) in the same joint space (same D)")
    return l2_normalise(feats) @ l2_normalise(protos).T


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def zero_shot_tiles(
    image_features: np.ndarray, prototypes: np.ndarray, logit_scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), predictions (N,)) of zero-shot tile classification."""
    sims = cosine_logits(image_features, prototypes)
    return softmax(logit_scale * sims), sims.argmax(axis=1)


def _parse_top_k(top_k: int | str | None) -> int | None:
    if top_k is None or (isinstance(top_k, str) and top_k.lower() in ("all", "mean", "none")):
        return None
    try:
        k = int(top_k)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"top_k={top_k!r}; valid: a positive int or 'all'") from err
    if k < 1:
        raise ConfigError(f"top_k={top_k!r}; valid: a positive int or 'all'")
    return k


def mizero_pool(similarities: np.ndarray, top_k: int | str | None) -> np.ndarray:
    """Per class, mean of the ``top_k`` highest tile similarities (C,); ``None``/"all" = mean."""
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim != 2 or sims.shape[0] == 0:
        raise ConfigError(f"tile similarities must be (N > 0, C), got {sims.shape}")
    k = _parse_top_k(top_k)
    if k is None or k >= sims.shape[0]:
        return sims.mean(axis=0)
    top = -np.partition(-sims, k - 1, axis=0)[:k]  # (k, C): the k largest per class
    return top.mean(axis=0)


def top_k_label(top_k: int | str | None) -> str:
    k = _parse_top_k(top_k)
    return "all" if k is None else str(k)


def mizero_slide_rows(
    slide_id: str, similarities: np.ndarray, top_ks: Sequence[int | str | None]
) -> list[dict[str, Any]]:
    """One slide's rows of :func:`mizero_slide_scores` from its tile similarities (N, C)."""
    sims = np.asarray(similarities)
    rows = []
    for top_k in top_ks:
        pooled = mizero_pool(sims, top_k)
        rows.append({"slide_id": str(slide_id), "top_k": top_k_label(top_k),
                     "n_tiles": sims.shape[0],
                     **{f"score_{c}": float(pooled[c]) for c in range(sims.shape[1])},
                     "pred": int(pooled.argmax())})
    return rows


def mizero_slide_scores(
    slides: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    prototypes: np.ndarray,
    top_ks: Sequence[int | str | None] = (1, 5, 10, 50, 100, "all"),
) -> pd.DataFrame:
    """Pooled class scores per slide and K: columns slide_id, top_k, n_tiles, score_0.., pred.

    ``slides`` may be a generator: one slide's features are held at a time.
    """
    items = slides.items() if isinstance(slides, Mapping) else slides
    rows = []
    for slide_id, feats in items:
        rows.extend(mizero_slide_rows(slide_id, cosine_logits(feats, prototypes), top_ks))
    return pd.DataFrame(rows)


def evaluate_slide_scores(
    scores: pd.DataFrame,
    labels: Mapping[str, int],
    class_names: Sequence[str],
    logit_scale: float = 100.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics of :func:`mizero_slide_scores` against slide labels, per ``top_k``.

    Long table: top_k, n_slides, class, metric, value, ci_low, ci_high. Slides
    without a label are dropped (logged).
    """
    n_classes = len(class_names)
    score_cols = [f"score_{c}" for c in range(n_classes)]
    have = scores["slide_id"].isin(list(labels))
    if (~have).any():
        logger.warning("{} slide(s) without a label are left out", scores.loc[~have, "slide_id"].nunique())
    scores = scores[have]
    if scores.empty:
        raise ConfigError("no scored slide has a label in the cohort")
    tables = []
    for top_k, part in scores.groupby("top_k", sort=False):
        y = np.array([labels[s] for s in part["slide_id"]], dtype=np.int64)
        probs = softmax(logit_scale * part[score_cols].to_numpy())
        table = classification_metrics(y, probs, class_names, n_bootstrap=n_bootstrap, seed=seed)
        table.insert(0, "n_slides", len(part))
        table.insert(0, "top_k", top_k)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def class_names_for_labels(
    labels: Sequence[str],
    class_prompts: Mapping[str, str | Sequence[str]] | None,
    labels_as_prompts: bool = False,
) -> list[list[str]]:
    """Names (synonyms) per label from ``class_prompts``.

    A label without prompts is a :class:`ConfigError` listing every such label,
    unless ``labels_as_prompts`` (then the raw label is its name, logged).
    """
    class_prompts = {str(k): v for k, v in (class_prompts or {}).items()}
    unknown = sorted(set(class_prompts) - {str(lbl) for lbl in labels})
    if unknown:
        raise ConfigError(f"class prompts given for unknown labels {unknown}; labels: {list(labels)}")
    missing = [str(lbl) for lbl in labels if not class_prompts.get(str(lbl))]
    if missing and not labels_as_prompts:
        raise ConfigError(f"class(es) {missing} have no prompts; give class_prompts for every "
                          f"label of {list(map(str, labels))} (or labels_as_prompts=true to use "
                          "the raw labels)")
    if missing:
        logger.warning("class(es) {} have no prompts: their raw labels are used", missing)
    out = []
    for label in labels:
        names = class_prompts.get(str(label)) or str(label)
        out.append([names] if isinstance(names, str) else [str(n) for n in names])
    return out


def make_text_prototypes(
    text_side: Any,
    labels: Sequence[str],
    class_prompts: Mapping[str, str | Sequence[str]] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    labels_as_prompts: bool = False,
) -> np.ndarray:
    """Prototypes (C, D) of ``labels`` from a text side (anything with ``encode_text``)."""
    names = class_names_for_labels(labels, class_prompts, labels_as_prompts)
    logger.info("class prompts of {}: {} classes x {} templates",
                getattr(text_side, "name", type(text_side).__name__), len(names), len(templates))
    return make_class_prototypes(text_side, names, templates)
