"""Retrieval metrics on embeddings: image<->text recall@k, image->image accuracy / majority vote@k.

Similarity is the cosine of L2-normalised embeddings. Rankings sort by
decreasing similarity with ties broken by gallery index, so results are
deterministic (for large galleries the top k come from ``argpartition``; an
exact tie *at* the k-th place may then keep a later index). ``k`` larger than
the gallery is clipped. Queries go in chunks, so memory is O(chunk x G).

- ``recall@k`` (CLIP benchmark / MUSK convention): fraction of queries with at
  least one relevant item among their k nearest gallery items. Image->text:
  a text is relevant to its own image; text->image: the image of the text.
- ``acc@k`` (UNI / MUSK image retrieval): fraction of query tiles with at least
  one of the k nearest gallery tiles of the same label.
- ``mv@k``: fraction of query tiles whose top-k majority label equals their
  label; a tied vote goes to the tied label whose best neighbour ranks first.
- Leave-self-out: when the gallery is the query set itself, each query's own
  tile is removed from its ranking; ``exclude_same_group`` also removes the
  query's group (patient / slide), so neighbours from the same patient cannot
  inflate image->image retrieval.
- Intervals: every metric is a mean over queries; its 95% interval is a
  percentile bootstrap resampling *groups* of queries (patients, or the image
  a caption describes; :func:`~wsi_mil.evaluation.metrics.cluster_bootstrap_mean_ci`)
  with the gallery fixed. Columns ``ci_low, ci_high`` (NaN with ``n_bootstrap=0``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.metrics import cluster_bootstrap_mean_ci
from wsi_mil.evaluation.zero_shot import l2_normalise

RECALL_KS = (1, 10, 50)
IMAGE_KS = (1, 3, 5)


def ranked_gallery(
    queries: np.ndarray,
    gallery: np.ndarray,
    max_k: int,
    exclude_self: bool = False,
    chunk_size: int = 1024,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (Q, min(max_k, G')) of the nearest gallery items per query, best first.

    ``exclude_self``: query i is gallery item i (same set) and is left out.
    ``query_groups`` / ``gallery_groups``: gallery items of the query's group
    are left out (ranked last, index -1 if fewer than ``max_k`` items remain).
    """
    q = l2_normalise(queries)
    g = l2_normalise(gallery)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ConfigError(f"queries {q.shape} and gallery {g.shape} must be (Q, D) and (G, D)")
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ConfigError("exclude_self needs the query set to be the gallery")
    n_gallery = g.shape[0] - int(exclude_self)
    if n_gallery < 1:
        raise ConfigError("the gallery is empty")
    k = min(max_k, n_gallery)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk_size):
        sims = q[start:start + chunk_size] @ g.T  # (q, G)
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -np.inf
        if query_groups is not None:
            same = (np.asarray(query_groups)[start:start + chunk_size, None]
                    == np.asarray(gallery_groups)[None, :])
            sims[same] = -np.inf
        top = _top_k(sims, k)
        if exclude_self or query_groups is not None:  # excluded items never count as neighbours
            top[~np.isfinite(np.take_along_axis(sims, top, axis=1))] = -1
        out[start:start + chunk_size] = top
    return out


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the k largest values, best first, ties by index."""
    if 4 * k >= sims.shape[1]:
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (q, k) unordered
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {ks}")
    return ks


def first_hit_rank(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_keys: np.ndarray,
    gallery_keys: np.ndarray,
    max_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(rank (Q,) of the first relevant gallery item, 0-based, ``max_k`` if none in the top
    ``max_k``; ranked (Q, k) gallery indices)."""
    ranked = ranked_gallery(queries, gallery, max_k)
    hits = np.asarray(gallery_keys)[ranked] == np.asarray(query_keys)[:, None]  # (Q, k)
    rank = np.where(hits.any(axis=1), hits.argmax(axis=1), max_k)
    return rank, ranked


def recall_at_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_keys: np.ndarray,
    gallery_keys: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[int, float]:
    """Recall@k where gallery item g is relevant to query q iff ``gallery_keys[g] == query_keys[q]``."""
    ks = _check_ks(ks)
    rank, _ = first_hit_rank(queries, gallery, query_keys, gallery_keys, max(ks))
    return {k: float((rank < k).mean()) for k in ks}


def _interval_rows(hits: np.ndarray, groups: np.ndarray | None, ks: Sequence[int],
                   n_bootstrap: int, seed: int, level: float) -> list[tuple]:
    """(k, value, ci_low, ci_high, n_queries, n_groups) per k of per-query hits (Q, K)."""
    mean, low, high = cluster_bootstrap_mean_ci(hits.astype(np.float64), groups, n_bootstrap,
                                                level, seed)
    n_groups = len(hits) if groups is None else len(np.unique(groups))
    return [(k, float(mean[j]), float(low[j]), float(high[j]), len(hits), n_groups)
            for j, k in enumerate(ks)]


def image_text_retrieval(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_to_image: np.ndarray | None = None,
    ks: Sequence[int] = RECALL_KS,
    image_groups: np.ndarray | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence_level: float = 0.95,
    return_ranks: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Image->text and text->image recall@k of a paired set.

    Columns: direction, k, recall, ci_low, ci_high, n_queries, n_groups.
    ``text_to_image[t]`` is the image index of text t (several captions per
    image allowed); ``None`` means text i describes image i. ``image_groups``
    (I,) (patients) are the bootstrap units; a text belongs to its image's
    group; default: each image (with its captions) is a group.
    ``return_ranks``: also {direction: first-hit rank per query (see
    :func:`first_hit_rank`)} for the per-query outputs.
    """
    n_img, n_txt = len(image_embeddings), len(text_embeddings)
    if text_to_image is None:
        if n_img != n_txt:
            raise ConfigError(f"{n_img} images and {n_txt} texts: pass text_to_image to pair them")
        text_to_image = np.arange(n_txt)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if text_to_image.shape != (n_txt,) or text_to_image.min() < 0 or text_to_image.max() >= n_img:
        raise ConfigError(f"text_to_image must be ({n_txt},) image indices in [0, {n_img})")
    ks = _check_ks(ks)
    image_ids = np.arange(n_img)
    groups = image_ids if image_groups is None else np.asarray(image_groups)
    if groups.shape != (n_img,):
        raise ConfigError(f"image_groups must be ({n_img},), got {groups.shape}")
    ranks = {
        "image_to_text": first_hit_rank(image_embeddings, text_embeddings, image_ids,
                                        text_to_image, max(ks))[0],
        "text_to_image": first_hit_rank(text_embeddings, image_embeddings, text_to_image,
                                        image_ids, max(ks))[0],
    }
    query_groups = {"image_to_text": groups, "text_to_image": groups[text_to_image]}
    rows = []
    for direction, rank in ranks.items():
        hits = rank[:, None] < np.asarray(ks)[None, :]  # (Q, K)
        rows += [(direction, *r) for r in _interval_rows(hits, query_groups[direction], ks,
                                                         n_bootstrap, seed, confidence_level)]
    table = pd.DataFrame(rows, columns=["direction", "k", "recall", "ci_low", "ci_high",
                                        "n_queries", "n_groups"])
    return (table, ranks) if return_ranks else table


def _majority(labels_row: np.ndarray):
    """The most frequent label of a ranked row; a tie goes to the label ranked first."""
    values, first, counts = np.unique(labels_row, return_index=True, return_counts=True)
    tied = counts == counts.max()
    return values[tied][np.argmin(first[tied])]


def image_to_image_retrieval(
    features: np.ndarray,
    labels: np.ndarray,
    gallery_features: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    ks: Sequence[int] = IMAGE_KS,
    groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    exclude_same_group: bool = False,
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence_level: float = 0.95,
    return_neighbours: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """acc@k and mv@k of labelled tiles: columns metric (acc | mv), k, value, ci_low, ci_high,
    n_queries, n_groups.

    Without a gallery, the tiles are queried against each other, leaving self
    out. ``groups`` (Q,) are the bootstrap units (patients; default: each
    tile); ``exclude_same_group`` leaves the query's group out of its gallery
    (needs ``gallery_groups`` with a separate gallery). ``return_neighbours``:
    also the ranked gallery indices (Q, max k), -1 where none is left.
    """
    ks = _check_ks(ks)
    labels = np.asarray(labels)
    same = gallery_features is None
    if same:
        gallery_features, gallery_labels, gallery_groups = features, labels, groups
    elif gallery_labels is None:
        raise ConfigError("gallery_features given without gallery_labels")
    if exclude_same_group and (groups is None or gallery_groups is None):
        raise ConfigError("exclude_same_group needs the groups of the queries and the gallery")
    gallery_labels = np.asarray(gallery_labels)
    ranked = ranked_gallery(features, gallery_features, max(ks), exclude_self=same,
                            query_groups=groups if exclude_same_group else None,
                            gallery_groups=gallery_groups if exclude_same_group else None)
    valid = ranked >= 0  # False where the query's group left fewer than k neighbours
    neigh = gallery_labels[np.maximum(ranked, 0)]  # (Q, k)
    acc = np.zeros((len(labels), len(ks)))
    mv = np.zeros((len(labels), len(ks)))
    for j, k in enumerate(ks):
        top, ok = neigh[:, :k], valid[:, :k]
        acc[:, j] = ((top == labels[:, None]) & ok).any(axis=1)
        mv[:, j] = [o.any() and _majority(r[o]) == lbl
                    for r, o, lbl in zip(top, ok, labels, strict=True)]
    rows = [("acc", *r) for r in _interval_rows(acc, groups, ks, n_bootstrap, seed, confidence_level)]
    rows += [("mv", *r) for r in _interval_rows(mv, groups, ks, n_bootstrap, seed, confidence_level)]
    table = pd.DataFrame(rows, columns=["metric", "k", "value", "ci_low", "ci_high", "n_queries",
                                        "n_groups"])
    table = table.sort_values(["k", "metric"], kind="stable").reset_index(drop=True)
    return (table, ranked) if return_neighbours else table
