"""HIPT-MIL: tile projection, a small transformer, gated attention pooling.

The slide-level aggregator of Chen et al., "Scaling Vision Transformers to
Gigapixel Images via Hierarchical Self-Supervised Learning", CVPR 2022, as
shipped by the reference (``HIPTMIL``). Unlike the reference (batch size 1,
no mask), this one is batched: padded tiles are excluded from self-attention
by a key padding mask and from the pooling by a masked softmax.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from wsi_mil.errors import ConfigError
from wsi_mil.models.base import MILHead, check_positive_int, check_probability, nan_padded
from wsi_mil.models.layers import GatedAttention, masked_softmax
from wsi_mil.models.registry import register_model


@register_model("hipt_mil")
class HIPTMIL(MILHead):
    """``phi``: Linear(D, d_model) + ReLU + Dropout -> post-norm transformer
    encoder (``n_layers`` x ``n_heads``, feed-forward ``dim_feedforward``,
    ReLU) -> gated attention (hidden d_model) -> weighted sum ``(B, d_model)``
    -> ``rho``: Linear + ReLU + Dropout -> Linear ``(B, C)``.

    Parameters
    ----------
    d_model: token width (192).
    n_heads: attention heads (3).
    n_layers: transformer layers (2).
    dim_feedforward: transformer feed-forward width (192).
    dropout: every dropout of the head (0.25).

    ``tile_scores`` returns the gated-attention weights (sum to 1 over real tiles).
    """

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        d_model: int = 192,
        n_heads: int = 3,
        n_layers: int = 2,
        dim_feedforward: int = 192,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.d_model = check_positive_int("d_model", d_model)
        self.n_heads = check_positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ConfigError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_layers = check_positive_int("n_layers", n_layers)
        self.dim_feedforward = check_positive_int("dim_feedforward", dim_feedforward)
        self.dropout = check_probability("dropout", dropout)
        self.phi = nn.Sequential(nn.Linear(in_dim, d_model), nn.ReLU(), nn.Dropout(dropout))
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward, dropout, activation="relu", batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.attention = GatedAttention(d_model, d_model, dropout=dropout)
        self.rho = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(d_model, n_outputs)

    def _attend(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.phi(x)  # (B, N, d)
        h = self.transformer(h, src_key_padding_mask=~mask)  # (B, N, d)
        weights = masked_softmax(self.attention(h, mask), mask)  # (B, N)
        return h, weights

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        h, weights = self._attend(x, mask)  # (B, N, d), (B, N)
        pooled = torch.einsum("bn,bnd->bd", weights, h)  # (B, d)
        return self.classifier(self.rho(pooled))  # (B, C)

    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        _, weights = self._attend(x, mask)  # (B, N)
        return nan_padded(weights, mask)  # (B, N)
