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
  tile is removed from its ranking.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.zero_shot import l2_normalise

RECALL_KS = (1, 10, 50)
IMAGE_KS = (1, 3, 5)


def ranked_gallery(
    queries: np.ndarray,
    gallery: np.ndarray,
    max_k: int,
    exclude_self: bool = False,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Indices (Q, min(max_k, G')) of the nearest gallery items per query, best first.

    ``exclude_self``: query i is gallery item i (same set) and is left out.
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
        out[start:start + chunk_size] = _top_k(sims, k)
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


def recall_at_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_keys: np.ndarray,
    gallery_keys: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[int, float]:
    """Recall@k where gallery item g is relevant to query q iff ``gallery_keys[g] == query_keys[q]``."""
    ks = _check_ks(ks)
    ranked = ranked_gallery(queries, gallery, max(ks))
    hits = np.asarray(gallery_keys)[ranked] == np.asarray(query_keys)[:, None]  # (Q, k)
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def image_text_retrieval(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_to_image: np.ndarray | None = None,
    ks: Sequence[int] = RECALL_KS,
) -> pd.DataFrame:
    """Image->text and text->image recall@k of a paired set: columns direction, k, recall.

    ``text_to_image[t]`` is the image index of text t (several captions per
    image allowed); ``None`` means text i describes image i.
    """
    n_img, n_txt = len(image_embeddings), len(text_embeddings)
    if text_to_image is None:
        if n_img != n_txt:
            raise ConfigError(f"{n_img} images and {n_txt} texts: pass text_to_image to pair them")
        text_to_image = np.arange(n_txt)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if text_to_image.shape != (n_txt,) or text_to_image.min() < 0 or text_to_image.max() >= n_img:
        raise ConfigError(f"text_to_image must be ({n_txt},) image indices in [0, {n_img})")
    image_ids = np.arange(n_img)
    i2t = recall_at_k(image_embeddings, text_embeddings, image_ids, text_to_image, ks)
    t2i = recall_at_k(text_embeddings, image_embeddings, text_to_image, image_ids, ks)
    rows = [("image_to_text", k, v) for k, v in i2t.items()]
    rows += [("text_to_image", k, v) for k, v in t2i.items()]
    return pd.DataFrame(rows, columns=["direction", "k", "recall"])


def _majority(labels_row: np.ndarray) -> int:
    values, first, counts = np.unique(labels_row, return_index=True, return_counts=True)
    tied = counts == counts.max()
    return int(values[tied][np.argmin(first[tied])])


def image_to_image_retrieval(
    features: np.ndarray,
    labels: np.ndarray,
    gallery_features: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    ks: Sequence[int] = IMAGE_KS,
) -> pd.DataFrame:
    """acc@k and mv@k of labelled tiles: columns metric (acc | mv), k, value.

    Without a gallery, the tiles are queried against each other, leaving self out.
    """
    ks = _check_ks(ks)
    labels = np.asarray(labels)
    same = gallery_features is None
    if same:
        gallery_features, gallery_labels = features, labels
    elif gallery_labels is None:
        raise ConfigError("gallery_features given without gallery_labels")
    gallery_labels = np.asarray(gallery_labels)
    ranked = ranked_gallery(features, gallery_features, max(ks), exclude_self=same)
    neigh = gallery_labels[ranked]  # (Q, k)
    rows = []
    for k in ks:
        top = neigh[:, :k]
        rows.append(("acc", k, float((top == labels[:, None]).any(axis=1).mean())))
        votes = np.array([_majority(r) for r in top])
        rows.append(("mv", k, float((votes == labels).mean())))
    return pd.DataFrame(rows, columns=["metric", "k", "value"])
