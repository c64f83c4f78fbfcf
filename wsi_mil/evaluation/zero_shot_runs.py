"""Zero-shot runs on files: tile folders and slide feature folders + a cohort -> tables.

Stage functions behind ``wsi-mil zero-shot``; the maths is in
:mod:`wsi_mil.evaluation.zero_shot` and :mod:`wsi_mil.evaluation.retrieval`.
``text`` is the keyword arguments of
:func:`~wsi_mil.evaluation.zero_shot.prototypes_from_encoder` except ``labels``
(encoder_name, weights, device, precision, class_prompts, templates); a
``prototypes`` entry (C, D) instead skips the encoder (tests, precomputed prompts).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError, MissingFeaturesError
from wsi_mil.evaluation.retrieval import image_to_image_retrieval
from wsi_mil.evaluation.tables import wide_macro_table, write_table
from wsi_mil.evaluation.tile_metrics import classification_metrics
from wsi_mil.evaluation.zero_shot import (
    evaluate_slide_scores,
    mizero_slide_scores,
    prototypes_from_encoder,
    zero_shot_tiles,
)


def _prototypes(text: dict[str, Any], labels: Sequence[str], dim: int) -> np.ndarray:
    if "prototypes" in text:
        protos = np.asarray(text["prototypes"], dtype=np.float32)
    else:
        protos = prototypes_from_encoder(labels=labels, **text)
    if protos.shape != (len(labels), dim):
        raise ConfigError(
            f"text prototypes {protos.shape} do not match {len(labels)} classes x feature dim {dim}: "
            "the features must be the same CLIP-style encoder's image embeddings"
        )
    return protos


def run_zero_shot_tiles(
    tile_features_dir: str | Path,
    text: dict[str, Any],
    output_dir: str | Path,
    drop_classes: Sequence[str] = (),
    image_retrieval_ks: Sequence[int] = (1, 3, 5),
    logit_scale: float = 100.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Zero-shot metrics of every tile of a folder (+ image->image retrieval); returns the metrics."""
    from wsi_mil.io.features import read_tile_features

    out = Path(output_dir)
    feats, _ids, raw = read_tile_features(tile_features_dir)
    raw = np.asarray(raw).astype(str)
    keep = ~np.isin(raw, list(drop_classes))
    feats, raw = np.asarray(feats, dtype=np.float32)[keep], raw[keep]
    labels = sorted(set(raw))
    y = np.searchsorted(np.array(labels), raw)
    protos = _prototypes(text, labels, feats.shape[1])
    probs, _ = zero_shot_tiles(feats, protos, logit_scale)
    table = classification_metrics(y, probs, labels, n_bootstrap=n_bootstrap, seed=seed)
    write_table(table, out / "zero_shot_tiles")
    macro = table[table["class"] == "macro"].set_index("metric")["value"]
    logger.info("zero-shot tiles ({} tiles, {} classes): macro AUC {:.4f}, balanced accuracy {:.4f}",
                len(y), len(labels), macro["auc"], macro["balanced_accuracy"])
    if image_retrieval_ks:
        retrieval = image_to_image_retrieval(feats, y, ks=image_retrieval_ks)
        write_table(retrieval, out / "image_retrieval")
        logger.info("image->image retrieval (leave-self-out):\n{}", retrieval.to_string(index=False))
    return table


def run_zero_shot_slides(
    features_dir: str | Path,
    cohort_csv: str | Path,
    text: dict[str, Any],
    output_dir: str | Path,
    features_source: str = "auto",
    label_column: str = "label",
    top_ks: Sequence[int | str | None] = (1, 5, 10, 50, 100, "all"),
    logit_scale: float = 100.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """MI-Zero on the cohort's slides; writes scores and metrics per K; returns the metrics."""
    from wsi_mil.data.cohort import read_cohort
    from wsi_mil.io.feature_sources import list_feature_slides, read_slide_features, resolve_source

    out = Path(output_dir)
    cohort = read_cohort(cohort_csv, "classification", label_column)
    source = resolve_source(features_dir, features_source)
    available = list_feature_slides(features_dir, source)
    table = cohort.table
    missing = sorted(set(table["slide_id"]) - available)
    if missing:
        logger.warning("{} cohort slide(s) have no features and are left out, e.g. {}",
                       len(missing), missing[:5])
    table = table[table["slide_id"].isin(available)]
    if table.empty:
        raise MissingFeaturesError(f"no slide of {cohort_csv} has features in {features_dir} "
                                   f"(source {source})")
    labels = [str(c) for c in cohort.classes]
    protos = None
    slides = {}
    for slide_id in table["slide_id"]:
        feats = np.asarray(read_slide_features(features_dir, slide_id, source), dtype=np.float32)
        if protos is None:
            protos = _prototypes(text, labels, feats.shape[1])
        slides[slide_id] = feats
    scores = mizero_slide_scores(slides, protos, top_ks)
    y = dict(zip(table["slide_id"], table["y"].astype(int), strict=True))
    scores["label"] = scores["slide_id"].map(y)
    write_table(scores, out / "zero_shot_slide_scores")
    metrics = evaluate_slide_scores(scores, y, labels, logit_scale, n_bootstrap, seed)
    write_table(metrics, out / "zero_shot_slides")
    macro = wide_macro_table(metrics, ["top_k", "n_slides"])
    write_table(macro, out / "zero_shot_slides_macro")
    logger.info("MI-Zero slide classification (macro):\n{}", macro.to_string(index=False))
    return metrics
