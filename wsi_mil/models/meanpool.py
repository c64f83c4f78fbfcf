"""MeanPool: average the tile features of a bag, then a linear layer (or MLP).

The simplest baseline of Filiot et al., "Scaling Self-Supervised Learning for
Histopathology with Masked Image Modeling" (2023), reference ``MeanPool``.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from wsi_mil.models.base import MILHead, check_hidden, check_probability, nan_padded
from wsi_mil.models.layers import MLP, check_activation, masked_mean
from wsi_mil.models.registry import register_model


@register_model("meanpool")
class MeanPool(MILHead):
    """Masked mean of the tiles ``(B, D)`` -> MLP ``(B, C)``.

    Parameters
    ----------
    hidden: widths of the MLP's hidden layers; None (default) = one Linear.
    activation: activation after each hidden layer ("sigmoid" as the reference).
    dropout: dropout after each hidden layer.
    bias: bias in the MLP layers.

    ``tile_scores`` is the MLP applied to each tile alone: with the default
    linear head the bag logit is exactly the mean of these per-tile scores.
    """

    pools_by_mean = True

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden: Sequence[int] | None = None,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.hidden = check_hidden("hidden", hidden)
        self.activation = check_activation("activation", activation)
        self.dropout = check_probability("dropout", dropout)
        self.bias = bool(bias)
        self.mlp = MLP(in_dim, n_outputs, self.hidden, activation, self.dropout, self.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        pooled = masked_mean(x, mask)  # (B, D)
        return self.mlp(pooled)  # (B, C)

    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        per_tile = self.mlp(x)  # (B, N, C)
        out = self._resolve_output(self.mlp(masked_mean(x, mask)), output_index)  # (B,)
        scores = per_tile.gather(2, out.view(-1, 1, 1).expand(-1, x.shape[1], 1))  # (B, N, 1)
        return nan_padded(scores.squeeze(-1), mask)  # (B, N)
