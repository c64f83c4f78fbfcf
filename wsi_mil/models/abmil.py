"""ABMIL: attention-based MIL pooling.

Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning",
ICML 2018. Defaults follow the reference's shipped ``abmil.yaml``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wsi_mil.models.base import (
    MILHead,
    check_hidden,
    check_positive_float,
    check_positive_int,
    check_probability,
    nan_padded,
)
from wsi_mil.models.layers import MLP, GatedAttention, Packing, check_activation, masked_softmax
from wsi_mil.models.registry import register_model


@register_model("abmil")
class ABMIL(MILHead):
    """Tile embedding ``(B, N, E)`` -> (gated) attention weights ``(B, N)`` ->
    attention-weighted sum ``(B, E)`` -> MLP ``(B, C)``.

    Parameters
    ----------
    d_model_attention: tile embedding width E, also the attention's hidden width (128).
    temperature: softmax temperature of the attention (1.0).
    gated: gated attention (Ilse et al. eq. 9, default) or plain tanh attention (eq. 8).
    tiles_mlp_hidden: hidden widths before the embedding; None (default) = one Linear.
    tiles_mlp_activation: activation of those hidden layers ("sigmoid").
    mlp_hidden: hidden widths of the classifier MLP ([128, 64]).
    mlp_activation: its activation ("relu").
    mlp_dropout: dropout after each of its hidden layers.
    bias: biases in the tile embedding.

    ``tile_scores`` returns the attention weights (sum to 1 over real tiles).
    ``forward_packed`` gives ``forward``'s logits on a packed batch (see
    :class:`~wsi_mil.models.layers.Packing`).
    """

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        d_model_attention: int = 128,
        temperature: float = 1.0,
        gated: bool = True,
        tiles_mlp_hidden: Sequence[int] | None = None,
        tiles_mlp_activation: str = "sigmoid",
        mlp_hidden: Sequence[int] | None = (128, 64),
        mlp_activation: str = "relu",
        mlp_dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.d_model_attention = check_positive_int("d_model_attention", d_model_attention)
        self.temperature = check_positive_float("temperature", temperature)
        self.gated = bool(gated)
        self.tiles_mlp_hidden = check_hidden("tiles_mlp_hidden", tiles_mlp_hidden)
        self.tiles_mlp_activation = check_activation("tiles_mlp_activation", tiles_mlp_activation)
        self.mlp_hidden = check_hidden("mlp_hidden", mlp_hidden)
        self.mlp_activation = check_activation("mlp_activation", mlp_activation)
        self.mlp_dropout = check_probability("mlp_dropout", mlp_dropout)
        self.bias = bool(bias)
        e = self.d_model_attention
        self.tiles_emb = MLP(in_dim, e, self.tiles_mlp_hidden, tiles_mlp_activation, bias=self.bias)
        self.attention = GatedAttention(e, e, gated=self.gated, temperature=self.temperature)
        self.mlp = MLP(e, n_outputs, self.mlp_hidden, mlp_activation, self.mlp_dropout)

    def _attend(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.tiles_emb(x)  # (B, N, E)
        weights = masked_softmax(self.attention(h, mask), mask)  # (B, N)
        return h, weights

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        h, weights = self._attend(x, mask)  # (B, N, E), (B, N)
        pooled = torch.einsum("bn,bne->be", weights, h)  # (B, E)
        return self.mlp(pooled)  # (B, C)

    def forward_packed(self, x: Tensor, packing: Packing) -> Tensor:
        """Logits ``(M * B, C)`` of the bags of a packed batch ``x (M, T, D)``."""
        h = self.tiles_emb(x)  # (M, T, E)
        logits = packing.unpack(self.attention(h, packing.real))  # (M * B, N)
        weights = packing.pack(masked_softmax(logits, packing.mask))  # (M, T)
        pooled = packing.pool(weights.unsqueeze(-1), h).squeeze(1)  # (M * B, E)
        return self.mlp(pooled)  # (M * B, C)

    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        _, weights = self._attend(x, mask)  # (B, N)
        return nan_padded(weights, mask)  # (B, N)
