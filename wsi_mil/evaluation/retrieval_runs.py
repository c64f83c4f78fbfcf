"""Retrieval runs on files: tile-feature folders + a captions CSV -> tables and per-query outputs.

Stage functions behind ``wsi-mil retrieval``; the maths is in
:mod:`wsi_mil.evaluation.retrieval`.

Image-text: the images are a tile-feature folder (``wsi-mil extract-tiles``
run on the captions CSV itself embeds each listed image once, no label column
needed); the captions CSV has columns ``path`` (or ``tile_id``: the tile id of
the folder), ``caption`` and optionally ``group`` (patient / slide: the
bootstrap unit). Several rows per image are several captions. Captions are
embedded by the text side of the encoder that made the image features; the
provenance guard refuses another model (``allow_mixed_models`` overrides).

Image-image: the labelled tiles of a folder are queried against a gallery
folder or, without one, against each other (leave-self-out); ``groups`` CSV
``tile_id,group`` gives patients for the bootstrap and for ``exclude_same_group``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError, FileFormatError
from wsi_mil.evaluation.provenance import check_consistent, check_same_model
from wsi_mil.evaluation.retrieval import (
    IMAGE_KS,
    RECALL_KS,
    image_text_retrieval,
    image_to_image_retrieval,
)
from wsi_mil.evaluation.tables import write_csv, write_table
from wsi_mil.evaluation.text_side import TextSide


def read_captions(path: str | Path) -> pd.DataFrame:
    """Captions CSV -> columns tile_id, caption, group (group = tile_id when absent)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise FileFormatError(f"cannot read captions CSV {path}: {err}") from err
    key = "tile_id" if "tile_id" in table.columns else "path"
    if key not in table.columns or "caption" not in table.columns:
        raise FileFormatError(f"captions CSV {path} needs columns path (or tile_id) and caption "
                              f"[, group]; found {list(table.columns)}")
    empty = table["caption"].str.strip() == ""
    if empty.any():
        raise FileFormatError(f"captions CSV {path}: {int(empty.sum())} empty caption(s), e.g. "
                              f"line {int(np.flatnonzero(empty)[0]) + 2}")
    out = pd.DataFrame({"tile_id": table[key], "caption": table["caption"]})
    out["group"] = table["group"] if "group" in table.columns else table[key]
    conflict = out.groupby("tile_id")["group"].nunique() > 1
    if conflict.any():
        raise FileFormatError(f"captions CSV {path}: images with several groups, e.g. "
                              f"{conflict[conflict].index[:3].tolist()}")
    return out


def run_image_text_retrieval(
    tile_features_dir: str | Path,
    captions_csv: str | Path,
    text_side: TextSide,
    output_dir: str | Path,
    ks: Sequence[int] = RECALL_KS,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    allow_mixed_models: bool = False,
) -> pd.DataFrame:
    """Image<->text recall@k with group-bootstrap intervals; writes the table and per-query ranks."""
    from wsi_mil.io.features import read_tile_feature_set

    out = Path(output_dir)
    data = read_tile_feature_set(tile_features_dir)
    check_same_model(data.provenance, text_side.provenance, allow_mixed_models,
                     "image-text retrieval")
    captions = read_captions(captions_csv)
    index = {tid: i for i, tid in enumerate(data.tile_ids)}
    known = captions["tile_id"].isin(index)
    if not known.any():
        raise ConfigError(f"no image of {captions_csv} is in {tile_features_dir} (tile ids e.g. "
                          f"{data.tile_ids[:3].tolist()}; captions e.g. "
                          f"{captions['tile_id'][:3].tolist()}): embed the images with "
                          f"`wsi-mil extract-tiles dataset={captions_csv}`")
    if (~known).any():
        logger.warning("{} caption(s) whose image has no features are left out, e.g. {}",
                       int((~known).sum()), captions.loc[~known, "tile_id"][:3].tolist())
    captions = captions[known].reset_index(drop=True)
    image_ids = list(dict.fromkeys(captions["tile_id"]))  # images with >= 1 caption, in order
    image_pos = {tid: i for i, tid in enumerate(image_ids)}
    images = np.asarray(data.features, dtype=np.float32)[[index[t] for t in image_ids]]
    text_to_image = captions["tile_id"].map(image_pos).to_numpy()
    groups = captions.groupby("tile_id", sort=False)["group"].first().reindex(image_ids).to_numpy()
    logger.info("image-text retrieval: {} images, {} captions, {} groups; captions embedded by {}",
                len(image_ids), len(captions), len(set(groups)), text_side.name)
    texts = text_side.encode_text(captions["caption"].tolist())
    if texts.shape[1] != images.shape[1]:
        raise ConfigError(f"caption embeddings ({texts.shape[1]}-d) and image features "
                          f"({images.shape[1]}-d) are not one joint space")
    table, ranks = image_text_retrieval(images, texts, text_to_image, ks, groups, n_bootstrap,
                                        seed, confidence_level, return_ranks=True)
    write_table(table, out / "retrieval_image_text")
    max_k = max(int(k) for k in ks)
    per_query = pd.concat([
        pd.DataFrame({"direction": "image_to_text", "query": image_ids, "group": groups,
                      "first_hit_rank": ranks["image_to_text"] + 1}),
        pd.DataFrame({"direction": "text_to_image", "query": captions["caption"],
                      "image": captions["tile_id"], "group": captions["group"],
                      "first_hit_rank": ranks["text_to_image"] + 1}),
    ], ignore_index=True)
    per_query["first_hit_rank"] = per_query["first_hit_rank"].where(
        per_query["first_hit_rank"] <= max_k)  # NaN: no relevant item in the top max_k
    write_csv(per_query, out / "retrieval_image_text_queries.csv")
    logger.info("image-text retrieval:\n{}", table.to_string(index=False))
    return table


def _groups_for(tile_ids: np.ndarray, groups_csv: str | Path | None) -> np.ndarray | None:
    if groups_csv is None:
        return None
    table = pd.read_csv(groups_csv, dtype=str)
    if not {"tile_id", "group"} <= set(table.columns):
        raise FileFormatError(f"groups CSV {groups_csv} needs columns tile_id,group; "
                              f"found {list(table.columns)}")
    mapping = dict(zip(table["tile_id"], table["group"], strict=True))
    missing = [t for t in tile_ids if t not in mapping]
    if missing:
        raise FileFormatError(f"{len(missing)} tile(s) have no group in {groups_csv}, e.g. "
                              f"{missing[:3]}")
    return np.array([mapping[t] for t in tile_ids])


def run_image_image_retrieval(
    tile_features_dir: str | Path,
    output_dir: str | Path,
    gallery_features_dir: str | Path | None = None,
    groups_csv: str | Path | None = None,
    exclude_same_group: bool = False,
    ks: Sequence[int] = IMAGE_KS,
    drop_classes: Sequence[str] = (),
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """acc@k / mv@k of labelled tiles (leave-self-out or against a gallery), with intervals."""
    from wsi_mil.evaluation.tile_tasks import read_labelled_tiles

    out = Path(output_dir)
    query = read_labelled_tiles(tile_features_dir)
    gallery = read_labelled_tiles(gallery_features_dir) if gallery_features_dir else None
    if gallery is not None:
        check_consistent([(str(tile_features_dir), query.provenance),
                          (str(gallery_features_dir), gallery.provenance)], "image retrieval")
    keep = ~np.isin(query.labels, list(drop_classes))
    q_ids, q_labels, q_x = query.tile_ids[keep], query.labels[keep], query.features[keep]
    q_groups = _groups_for(q_ids, groups_csv)
    g_kw: dict = {}
    if gallery is not None:
        g_keep = ~np.isin(gallery.labels, list(drop_classes))
        g_kw = dict(gallery_features=gallery.features[g_keep], gallery_labels=gallery.labels[g_keep],
                    gallery_groups=_groups_for(gallery.tile_ids[g_keep], groups_csv))
    table, ranked = image_to_image_retrieval(
        q_x, q_labels, ks=ks, groups=q_groups, exclude_same_group=exclude_same_group,
        n_bootstrap=n_bootstrap, seed=seed, confidence_level=confidence_level,
        return_neighbours=True, **g_kw)
    write_table(table, out / "retrieval_image_image")
    g_ids = (query.tile_ids[keep] if gallery is None else gallery.tile_ids[g_keep])
    g_labels = q_labels if gallery is None else g_kw["gallery_labels"]
    per_query = pd.DataFrame({"tile_id": q_ids, "label": q_labels,
                              "group": q_ids if q_groups is None else q_groups})
    for j in range(ranked.shape[1]):
        ok = ranked[:, j] >= 0
        per_query[f"neighbour_{j + 1}"] = np.where(ok, g_ids[np.maximum(ranked[:, j], 0)], "")
        per_query[f"neighbour_{j + 1}_label"] = np.where(ok, g_labels[np.maximum(ranked[:, j], 0)], "")
    write_csv(per_query, out / "retrieval_image_image_queries.csv")
    logger.info("image->image retrieval ({}):\n{}",
                "leave-self-out" if gallery is None else f"gallery {gallery_features_dir}",
                table.to_string(index=False))
    return table
