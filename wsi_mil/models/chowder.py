"""Chowder: tile scores, top and bottom extreme scores, then an MLP.

Courtiol et al., "Classification and Disease Localization in Histopathology
Using Only Global Labels: A Weakly-Supervised Approach", arXiv:1802.02212
(2018). Defaults follow the reference's shipped ``chowder.yaml``.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from wsi_mil.errors import ConfigError
from wsi_mil.models.base import (
    MILHead,
    check_hidden,
    check_non_negative_int,
    check_probability,
    nan_padded,
)
from wsi_mil.models.layers import MLP, Packing, check_activation, masked_extremes
from wsi_mil.models.registry import register_model


@register_model("chowder")
class Chowder(MILHead):
    """Tile MLP -> one score per tile and output ``(B, N, C)``; the ``n_top``
    highest and ``n_bottom`` lowest real-tile scores ``(B, T+Bo, C)`` go
    through an MLP shared across outputs -> ``(B, C)``. Xavier-uniform
    weights and zero biases (Glorot & Bengio 2010), as the reference.

    Parameters
    ----------
    n_top, n_bottom: number of highest / lowest tile scores kept (10 / 10).
    tiles_mlp_hidden: hidden widths of the tile scorer ([128]).
    tiles_mlp_activation: its activation ("sigmoid").
    mlp_hidden: hidden widths of the MLP on extreme scores ([128, 64]).
    mlp_activation: its activation ("sigmoid").
    mlp_dropout: dropout after each hidden layer of that MLP.
    bias: biases in the tile scorer.

    ``tile_scores`` returns the tile scores of the chosen output.
    ``forward_packed`` gives ``forward``'s logits on a packed batch (see
    :class:`~wsi_mil.models.layers.Packing`).
    """

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        n_top: int = 10,
        n_bottom: int = 10,
        tiles_mlp_hidden: Sequence[int] | None = (128,),
        tiles_mlp_activation: str = "sigmoid",
        mlp_hidden: Sequence[int] | None = (128, 64),
        mlp_activation: str = "sigmoid",
        mlp_dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.n_top = check_non_negative_int("n_top", n_top)
        self.n_bottom = check_non_negative_int("n_bottom", n_bottom)
        if self.n_top + self.n_bottom == 0:
            raise ConfigError("n_top + n_bottom must be >= 1; got n_top=0, n_bottom=0")
        self.tiles_mlp_hidden = check_hidden("tiles_mlp_hidden", tiles_mlp_hidden)
        self.tiles_mlp_activation = check_activation("tiles_mlp_activation", tiles_mlp_activation)
        self.mlp_hidden = check_hidden("mlp_hidden", mlp_hidden)
        self.mlp_activation = check_activation("mlp_activation", mlp_activation)
        self.mlp_dropout = check_probability("mlp_dropout", mlp_dropout)
        self.bias = bool(bias)
        self.score_model = MLP(
            in_dim, n_outputs, self.tiles_mlp_hidden, tiles_mlp_activation, bias=self.bias
        )
        self.mlp = MLP(
            self.n_top + self.n_bottom, 1, self.mlp_hidden, mlp_activation, self.mlp_dropout
        )
        self.apply(_xavier_init)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        scores = self.score_model(x)  # (B, N, C)
        extremes, _ = masked_extremes(scores, mask, self.n_top, self.n_bottom)  # (B, K, C)
        return self.mlp(extremes.transpose(1, 2)).squeeze(-1)  # (B, C)

    def forward_packed(self, x: Tensor, packing: Packing) -> Tensor:
        """Logits ``(M * B, C)`` of the bags of a packed batch ``x (M, T, D)``."""
        scores = packing.unpack(self.score_model(x))  # (M * B, N, C)
        extremes, _ = masked_extremes(scores, packing.mask, self.n_top, self.n_bottom)  # (M * B, K, C)
        return self.mlp(extremes.transpose(1, 2)).squeeze(-1)  # (M * B, C)

    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        scores = self.score_model(x)  # (B, N, C)
        extremes, _ = masked_extremes(scores, mask, self.n_top, self.n_bottom)  # (B, K, C)
        logits = self.mlp(extremes.transpose(1, 2)).squeeze(-1)  # (B, C)
        out = self._resolve_output(logits, output_index)  # (B,)
        picked = scores.gather(2, out.view(-1, 1, 1).expand(-1, x.shape[1], 1))  # (B, N, 1)
        return nan_padded(picked.squeeze(-1), mask)  # (B, N)


def _xavier_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
