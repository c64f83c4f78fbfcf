"""Per-fit feature standardisation (``standardize=true`` of a CV run).

Encoders give features on very different scales (``histo_stats`` colour
statistics in the hundreds, ViT tokens around 1, ResNet50 activations
skewed); a linear head with Adam at lr 1e-4 barely moves from its
initialisation in a few epochs on unscaled features. :class:`FeatureScaler`
is ``(x - mean) / std`` per feature dimension, fitted on *all tiles of the
training slides of one fit only* (never its validation or test slides), as
scikit-learn's ``StandardScaler`` would be on those tiles stacked (ddof=0;
a constant dimension gets scale 1; tested against it).

Moments are combined from per-slide means and sums of squared deviations
(Chan et al.'s pairwise update, in float64; :meth:`BagStore.slide_moments`,
computed once per store), so a
fit's scaler costs O(slides x D) however many tiles it covers.

The scaler travels with the model: batches are scaled when they are
assembled (padding stays zero), the outer refit's scaler is saved in its
``models/r{r}_f{k}.pt`` (``feature_scaler``), and :class:`ScaledHead` applies
it in front of a loaded head (reports, heatmaps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from wsi_mil.errors import ConfigError

if TYPE_CHECKING:
    from wsi_mil.data.bags import BagStore


@dataclass(frozen=True)
class FeatureScaler:
    """``(x - mean) / scale`` per feature dimension; ``mean``, ``scale`` are ``(D,)`` float32."""

    mean: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, store: BagStore, slide_idx: np.ndarray) -> FeatureScaler:
        """Moments of every tile of slides ``slide_idx`` (ddof=0, as ``StandardScaler``)."""
        slide_idx = np.asarray(slide_idx, dtype=np.int64)
        if slide_idx.size == 0:
            raise ConfigError("cannot fit a feature scaler on zero training slides")
        n_i, mean_i, m2_i = store.slide_moments()
        n = n_i[slide_idx]  # (S,)
        total = float(n.sum())
        mean = (n[:, None] * mean_i[slide_idx]).sum(0) / total  # (D,)
        m2 = m2_i[slide_idx].sum(0) + (n[:, None] * (mean_i[slide_idx] - mean) ** 2).sum(0)  # (D,)
        std = np.sqrt(np.maximum(m2 / total, 0.0))
        scale = np.where(std < 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0, std)  # constant dims: 1
        return cls(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(scale.astype(np.float32)))

    def apply_(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scale ``x (..., N, D)`` in place; rows where ``mask (..., N)`` is False stay zero."""
        x.sub_(self.mean).div_(self.scale)
        if mask is not None and not bool(mask.all()):
            x.mul_(mask.unsqueeze(-1).to(x.dtype))
        return x

    def state(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> FeatureScaler:
        return cls(torch.as_tensor(state["mean"], dtype=torch.float32),
                   torch.as_tensor(state["scale"], dtype=torch.float32))


class ScaledHead(nn.Module):
    """A trained head behind the feature scaler it was trained with (``forward`` and ``tile_scores``)."""

    def __init__(self, head: nn.Module, scaler: FeatureScaler) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("feature_mean", scaler.mean.clone())
        self.register_buffer("feature_scale", scaler.scale.clone())

    def _scale(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = (x - self.feature_mean) / self.feature_scale
        return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.head(self._scale(x, mask), mask)

    def tile_scores(self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None) -> Tensor:
        return self.head.tile_scores(self._scale(x, mask), mask, output_index)
