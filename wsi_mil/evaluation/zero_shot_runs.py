"""Zero-shot runs on files: tile folders and slide feature folders + a cohort -> tables.

Stage functions behind ``wsi-mil zero-shot``; the maths is in
:mod:`wsi_mil.evaluation.zero_shot` and :mod:`wsi_mil.evaluation.retrieval`.
``text`` (:class:`~wsi_mil.evaluation.text_side.ClassText`) is the text side and
the class prompts, or precomputed prototypes. Before anything is scored, the
features' provenance (encoder, weights) is checked against the text side's
(:func:`~wsi_mil.evaluation.provenance.check_same_model`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError, MissingFeaturesError
from wsi_mil.evaluation.provenance import check_consistent, check_same_model
from wsi_mil.evaluation.retrieval import image_to_image_retrieval
from wsi_mil.evaluation.tables import wide_macro_table, write_csv, write_table
from wsi_mil.evaluation.text_side import ClassText, resolve_logit_scale
from wsi_mil.evaluation.tile_metrics import classification_metrics
from wsi_mil.evaluation.zero_shot import (
    cosine_logits,
    evaluate_slide_scores,
    mizero_slide_rows,
    zero_shot_tiles,
)
from wsi_mil.io.scores import open_tile_score_writer


def run_zero_shot_tiles(
    tile_features_dir: str | Path,
    text: ClassText,
    output_dir: str | Path,
    drop_classes: Sequence[str] = (),
    image_retrieval_ks: Sequence[int] = (1, 3, 5),
    logit_scale: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    allow_mixed_models: bool = False,
) -> pd.DataFrame:
    """Zero-shot metrics of every tile of a folder (+ image->image retrieval); returns the metrics.

    ``logit_scale=None`` uses the text side's learned scale.
    """
    from wsi_mil.io.features import read_tile_feature_set

    out = Path(output_dir)
    data = read_tile_feature_set(tile_features_dir)
    if data.labels is None:
        raise ConfigError(f"{tile_features_dir} has no tile labels (embedded without a label "
                          "column); zero-shot classification needs them")
    check_same_model(data.provenance, text.model_provenance, allow_mixed_models, "zero-shot")
    raw = data.labels
    keep = ~np.isin(raw, list(drop_classes))
    feats, raw = np.asarray(data.features, dtype=np.float32)[keep], raw[keep]
    labels = sorted(set(raw))
    y = np.searchsorted(np.array(labels), raw)
    protos = text.prototypes_for(labels, feats.shape[1])
    scale = resolve_logit_scale(logit_scale, text.learned_logit_scale, "zero-shot")
    probs, _ = zero_shot_tiles(feats, protos, scale)
    table = classification_metrics(y, probs, labels, n_bootstrap=n_bootstrap, seed=seed)
    write_table(table, out / "zero_shot_tiles")
    per_tile = pd.DataFrame(probs, columns=[f"p_{c}" for c in labels])
    per_tile.insert(0, "pred", np.asarray(labels)[probs.argmax(1)])
    per_tile.insert(0, "label", raw)
    per_tile.insert(0, "tile_id", data.tile_ids[keep])
    write_csv(per_tile, out / "zero_shot_tile_scores.csv")
    macro = table[table["class"] == "macro"].set_index("metric")["value"]
    logger.info("zero-shot tiles ({} tiles, {} classes): macro AUC {:.4f}, balanced accuracy {:.4f}",
                len(y), len(labels), macro["auc"], macro["balanced_accuracy"])
    if image_retrieval_ks:
        retrieval = image_to_image_retrieval(feats, y, ks=image_retrieval_ks,
                                             n_bootstrap=n_bootstrap, seed=seed)
        write_table(retrieval, out / "image_retrieval")
        logger.info("image->image retrieval (leave-self-out):\n{}", retrieval.to_string(index=False))
    return table


def run_zero_shot_slides(
    features_dir: str | Path,
    cohort_csv: str | Path,
    text: ClassText,
    output_dir: str | Path,
    features_source: str = "auto",
    label_column: str = "label",
    top_ks: Sequence[int | str | None] = (1, 5, 10, 50, 100, "all"),
    logit_scale: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    allow_mixed_models: bool = False,
) -> pd.DataFrame:
    """MI-Zero on the cohort's slides; writes scores and metrics per K; returns the metrics.

    Streams: one slide's features are in memory at a time (peak memory does not
    grow with the cohort; ``dev_tools/bench_zero_shot_rss.py``). Per-tile cosine
    similarities go to ``zero_shot_tile_scores.h5`` (:mod:`wsi_mil.io.scores`).
    """
    from wsi_mil.data.cohort import read_cohort
    from wsi_mil.io.feature_sources import (
        feature_shape,
        list_feature_slides,
        read_slide_features,
        read_slide_provenance,
        resolve_source,
    )

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
    slide_ids = table["slide_id"].tolist()
    provs = [(sid, read_slide_provenance(features_dir, sid, source)) for sid in slide_ids]
    check_consistent(provs, f"features of {features_dir}")
    known = next((p for _, p in provs if p.known), provs[0][1])
    check_same_model(known, text.model_provenance, allow_mixed_models, "zero-shot (slides)")
    protos = text.prototypes_for(labels, feature_shape(features_dir, slide_ids[0], source)[1])
    rows: list[dict] = []
    with open_tile_score_writer(out / "zero_shot_tile_scores.h5", labels) as tile_scores:
        for i, slide_id in enumerate(slide_ids):  # one slide's features in memory at a time
            feats = read_slide_features(features_dir, slide_id, source)
            sims = cosine_logits(feats, protos)  # (N, C)
            del feats
            rows.extend(mizero_slide_rows(slide_id, sims, top_ks))
            tile_scores.write(slide_id, sims)
            if (i + 1) % 500 == 0:
                logger.info("MI-Zero: {} / {} slides scored", i + 1, len(slide_ids))
    scores = pd.DataFrame(rows)
    logit_scale = resolve_logit_scale(logit_scale, text.learned_logit_scale, "zero-shot (slides)")
    y = dict(zip(table["slide_id"], table["y"].astype(int), strict=True))
    scores["label"] = scores["slide_id"].map(y)
    write_table(scores, out / "zero_shot_slide_scores")
    metrics = evaluate_slide_scores(scores, y, labels, logit_scale, n_bootstrap, seed)
    write_table(metrics, out / "zero_shot_slides")
    macro = wide_macro_table(metrics, ["top_k", "n_slides"])
    write_table(macro, out / "zero_shot_slides_macro")
    logger.info("MI-Zero slide classification (macro):\n{}", macro.to_string(index=False))
    return metrics
