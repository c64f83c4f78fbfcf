"""Synthetic tile features and image-text embeddings whose right answers are known.

- :func:`make_synthetic_tiles`: tile features with a planted class signal
  (``signal`` along one orthonormal direction per class + isotropic noise),
  a train/test split, and noisy "text" prototypes near the class directions
  (a stand-in for class prompt embeddings in a joint image-text space).
- :func:`make_controlled_embeddings`: a tiny joint space where every zero-shot,
  MI-Zero and retrieval answer is known by construction, and a fake text
  encoder (:class:`LookupTextEncoder`) that maps prompts to embeddings by the
  class name they contain.
- :func:`write_tile_features_dir`: the ``wsi-mil extract-tiles`` layout
  (``tile_features.npy``, ``tile_ids.npy``, ``tile_labels.npy``) + ``split.csv``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _orthonormal(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(dim, n)))
    return q.T.astype(np.float32)  # (n, dim), rows orthonormal


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class SyntheticTileSet:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64
    tile_ids: np.ndarray  # (N,) str
    split: np.ndarray  # (N,) "train" | "test"
    class_names: list[str]
    class_directions: np.ndarray  # (C, D) unit rows: the planted signal
    text_prototypes: np.ndarray  # (C, D) unit rows: noisy class directions ("prompt embeddings")

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the ``train`` or ``test`` split."""
        sel = self.split == name
        return self.features[sel], self.labels[sel]


def make_synthetic_tiles(
    n_per_class: int = 100,
    n_classes: int = 3,
    dim: int = 32,
    signal: float = 2.0,
    text_noise: float = 0.5,
    test_fraction: float = 0.5,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> SyntheticTileSet:
    """Tiles ``x = signal * u_y + e`` (``e ~ N(0, I)``), split per class into train / test.

    ``text_prototypes`` are ``unit(u_c + text_noise * g / sqrt(D))``: the
    larger ``text_noise``, the worse the "prompts" describe the classes.
    """
    rng = np.random.default_rng(seed)
    dirs = _orthonormal(n_classes, dim, rng)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    feats = signal * dirs[labels] + rng.normal(size=(labels.size, dim)).astype(np.float32)
    split = np.empty(labels.size, dtype=object)
    n_test = int(round(test_fraction * n_per_class))
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        split[idx[:n_test]] = "test"
        split[idx[n_test:]] = "train"
    text = _unit(dirs + text_noise * rng.normal(size=dirs.shape).astype(np.float32) * np.sqrt(dim) / dim)
    names = list(class_names) if class_names is not None else [f"class{c}" for c in range(n_classes)]
    ids = np.array([f"tile_{i:05d}" for i in range(labels.size)])
    return SyntheticTileSet(feats.astype(np.float32), labels.astype(np.int64), ids,
                            split.astype(str), names, dirs, text)


def write_tile_features_dir(
    folder: str | Path, tiles: SyntheticTileSet, split: str | None = None
) -> Path:
    """The ``wsi-mil extract-tiles`` layout (:func:`wsi_mil.io.features.write_tile_features`).

    ``tile_features.npy`` (N, D), ``tile_ids.npy``, ``tile_labels.npy`` (class
    names) of every tile, or of one ``split`` only; with ``split=None`` a
    ``split.csv`` (tile_id, split) is written beside them.
    """
    from wsi_mil.io.features import write_tile_features

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sel = np.ones(tiles.labels.size, bool) if split is None else tiles.split == split
    names = np.array(tiles.class_names)[tiles.labels[sel]]
    write_tile_features(folder, tiles.features[sel], tiles.tile_ids[sel], names)
    if split is None:
        pd.DataFrame({"tile_id": tiles.tile_ids, "split": tiles.split}).to_csv(
            folder / "split.csv", index=False)
    return folder


# --- controlled joint space --------------------------------------------------
@dataclass
class ControlledEmbeddings:
    """A joint space with known answers (all rows (N, D) float32, not normalised).

    - ``class_names`` C names; ``templates`` T prompt templates with ``{}``.
    - ``text_table``: prompt -> embedding for every name x template: class
      direction + a template-specific offset orthogonal to every class direction
      (so the class prototypes are exactly ``expected_prototypes``).
    - ``tile_features`` / ``tile_labels``: tiles whose nearest prototype is their label.
    - ``slides``: slide_id -> (N_s, D) tiles; ``slide_labels``. "Focal" slides of
      class 1 have a few strong class-1 tiles among many weakly class-0 tiles:
      top-K pooling (K <= 3) says 1, mean pooling (K = all) and K >= 5 say 0.
    - ``paired_images`` / ``paired_texts``: image i pairs with text i
      (text = image + small noise), so every recall@k is 1.
    """

    class_names: list[str]
    templates: list[str]
    class_directions: np.ndarray  # (C, D)
    expected_prototypes: np.ndarray  # (C, D) unit rows: the right class prototypes
    text_table: dict[str, np.ndarray]
    tile_features: np.ndarray  # (N, D)
    tile_labels: np.ndarray  # (N,)
    slides: dict[str, np.ndarray]
    slide_labels: dict[str, int]
    focal_slides: list[str]
    paired_images: np.ndarray  # (P, D)
    paired_texts: np.ndarray  # (P, D)


class LookupTextEncoder:
    """A fake CLIP text side: ``encode_text(prompts) -> (P, D)`` looked up in a table."""

    has_text = True

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return torch.from_numpy(np.stack([self.table[p] for p in prompts]))


def make_controlled_embeddings(
    n_classes: int = 3,
    dim: int = 16,
    n_tiles_per_class: int = 20,
    n_slides_per_class: int = 4,
    n_pairs: int = 60,
    seed: int = 0,
) -> ControlledEmbeddings:
    """Build the fixture (see :class:`ControlledEmbeddings`); needs ``dim >= n_classes + 3``."""
    rng = np.random.default_rng(seed)
    n_templates = 3
    basis = _orthonormal(n_classes + n_templates, dim, rng)
    dirs, offsets = basis[:n_classes], basis[n_classes:]
    names = [f"tissue type {chr(ord('a') + c)}" for c in range(n_classes)]
    templates = ["an H&E image of {}.", "{}", "a histopathology tile showing {}."]
    table: dict[str, np.ndarray] = {}
    for c, name in enumerate(names):
        for t, tpl in enumerate(templates):
            # Scales differ per prompt: prototypes must normalise before averaging.
            table[tpl.format(name)] = ((1.0 + t) * (dirs[c] + 0.5 * offsets[t])).astype(np.float32)
    # Prototype = unit(mean_t unit(prompt)) = unit(d_c + 0.5 * mean_t o_t) exactly, whatever the
    # per-prompt scale (1 + t): a wrong (unnormalised) average would tilt it towards template 2.
    expected = _unit(dirs + 0.5 * offsets.mean(axis=0, keepdims=True))

    def noisy(c: np.ndarray, scale: float) -> np.ndarray:
        noise = rng.normal(size=(c.size, dim)).astype(np.float32) * scale / np.sqrt(dim)
        return dirs[c] + noise

    tile_labels = np.repeat(np.arange(n_classes), n_tiles_per_class)
    tile_features = 3.0 * noisy(tile_labels, 0.3)
    slides: dict[str, np.ndarray] = {}
    slide_labels: dict[str, int] = {}
    focal: list[str] = []
    for c in range(n_classes):
        for s in range(n_slides_per_class):
            sid = f"slide_c{c}_{s}"
            n = 30 + 5 * s
            slides[sid] = noisy(np.full(n, c), 0.3)
            slide_labels[sid] = c
    for s in range(2):  # focal class-1 slides
        sid = f"focal_c1_{s}"
        bulk = 0.6 * dirs[0] + 0.8 * offsets[0] + 0.05 * rng.normal(size=(40, dim)).astype(np.float32)
        spots = dirs[1] + 0.05 * rng.normal(size=(3, dim)).astype(np.float32)
        slides[sid] = np.concatenate([bulk, spots]).astype(np.float32)
        slide_labels[sid] = 1
        focal.append(sid)
    paired_images = rng.normal(size=(n_pairs, dim)).astype(np.float32)
    paired_texts = paired_images + 0.01 * rng.normal(size=(n_pairs, dim)).astype(np.float32)
    return ControlledEmbeddings(names, templates, dirs, expected, table, tile_features.astype(np.float32),
                                tile_labels.astype(np.int64), slides, slide_labels, focal,
                                paired_images, paired_texts)
