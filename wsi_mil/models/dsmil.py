"""DSMIL: dual-stream MIL (max-pooling stream + critical-instance attention).

Li, Li & Eliceiri, "Dual-stream Multiple Instance Learning Network for Whole
Slide Image Classification with Self-supervised Contrastive Learning", CVPR
2021. Defaults follow the reference's shipped ``dsmil.yaml``. Unlike the
reference, the output is ``(B, C)`` for any C (it returned ``(B, 1, C)``
for multiclass tasks), and no unused value network is built.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wsi_mil.models.base import (
    MILHead,
    check_choice,
    check_hidden,
    check_positive_int,
    check_probability,
    nan_padded,
)
from wsi_mil.models.layers import MLP, Packing, check_activation, masked_extremes, masked_softmax
from wsi_mil.models.registry import register_model

OUT_LOGITS = ("mean", "max", "bag")


@register_model("dsmil")
class DSMIL(MILHead):
    """Two streams per output c:

    1. instance classifier ``(B, N, C)``; the critical instance of output c
       is the real tile with the highest score, its score is the max-stream
       logit ``(B, C)``;
    2. queries ``(B, N, Q)``; attention of output c = masked softmax over
       tiles of ``<q_i, q_critical(c)>`` ``(B, C, N)``; pooled values
       ``(B, C, V)`` -> bag MLP shared across outputs -> bag logit ``(B, C)``.

    Output = mean of the two logits (``out_logits="mean"``), or one stream.

    Parameters
    ----------
    d_tiles_queries: query width Q (32).
    tiles_scores_mlp_hidden: hidden widths of the instance classifier ([200, 100]).
    tiles_queries_mlp_hidden: hidden widths of the query network ([200, 100]).
    tiles_mlp_activation: activation of those tile MLPs ("sigmoid").
    project_values: False (default, as the reference config): the values are
        the input features (V = D); True: a tile MLP maps them to V = d_tiles_values.
    d_tiles_values, tiles_values_mlp_hidden: width / hidden widths of that value MLP.
    mlp_hidden: hidden widths of the bag MLP ([200, 100]).
    mlp_activation: its activation ("sigmoid").
    mlp_dropout: dropout after each of its hidden layers.
    bias: biases in the tile MLPs.
    out_logits: "mean" (default), "max" (instance stream) or "bag" (attention stream).

    ``tile_scores`` returns the attention weights of the chosen output.
    ``forward_packed`` gives ``forward``'s logits on a packed batch (see
    :class:`~wsi_mil.models.layers.Packing`).
    """

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        d_tiles_queries: int = 32,
        tiles_scores_mlp_hidden: Sequence[int] | None = (200, 100),
        tiles_queries_mlp_hidden: Sequence[int] | None = (200, 100),
        tiles_mlp_activation: str = "sigmoid",
        project_values: bool = False,
        d_tiles_values: int = 32,
        tiles_values_mlp_hidden: Sequence[int] | None = None,
        mlp_hidden: Sequence[int] | None = (200, 100),
        mlp_activation: str = "sigmoid",
        mlp_dropout: float = 0.0,
        bias: bool = True,
        out_logits: str = "mean",
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.d_tiles_queries = check_positive_int("d_tiles_queries", d_tiles_queries)
        self.tiles_scores_mlp_hidden = check_hidden(
            "tiles_scores_mlp_hidden", tiles_scores_mlp_hidden
        )
        self.tiles_queries_mlp_hidden = check_hidden(
            "tiles_queries_mlp_hidden", tiles_queries_mlp_hidden
        )
        self.tiles_mlp_activation = check_activation("tiles_mlp_activation", tiles_mlp_activation)
        self.project_values = bool(project_values)
        self.d_tiles_values = check_positive_int("d_tiles_values", d_tiles_values)
        self.tiles_values_mlp_hidden = check_hidden(
            "tiles_values_mlp_hidden", tiles_values_mlp_hidden
        )
        self.mlp_hidden = check_hidden("mlp_hidden", mlp_hidden)
        self.mlp_activation = check_activation("mlp_activation", mlp_activation)
        self.mlp_dropout = check_probability("mlp_dropout", mlp_dropout)
        self.bias = bool(bias)
        self.out_logits = check_choice("out_logits", out_logits, OUT_LOGITS)

        act, b = tiles_mlp_activation, self.bias
        self.tiles_scores = MLP(in_dim, n_outputs, self.tiles_scores_mlp_hidden, act, bias=b)
        self.tiles_queries = MLP(
            in_dim, self.d_tiles_queries, self.tiles_queries_mlp_hidden, act, bias=b
        )
        self.tiles_values = (
            MLP(in_dim, self.d_tiles_values, self.tiles_values_mlp_hidden, act, bias=b)
            if self.project_values
            else None
        )
        d_values = self.d_tiles_values if self.project_values else in_dim
        self.mlp = MLP(d_values, 1, self.mlp_hidden, mlp_activation, self.mlp_dropout)

    def _streams(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Max-stream logits ``(B, C)``, bag-stream logits ``(B, C)``, attention ``(B, C, N)``."""
        scores = self.tiles_scores(x)  # (B, N, C)
        max_logits, critical = masked_extremes(scores, mask, 1, 0)  # (B, 1, C) x2
        max_logits = max_logits.squeeze(1)  # (B, C)
        queries = self.tiles_queries(x)  # (B, N, Q)
        idx = critical.squeeze(1).unsqueeze(-1).expand(-1, -1, queries.shape[-1])  # (B, C, Q)
        q_critical = queries.gather(1, idx)  # (B, C, Q)
        sim = torch.einsum("bnq,bcq->bnc", queries, q_critical)  # (B, N, C)
        attn = masked_softmax(sim, mask, dim=1).transpose(1, 2)  # (B, C, N)
        values = x if self.tiles_values is None else self.tiles_values(x)  # (B, N, V)
        pooled = attn @ values  # (B, C, V)
        bag_logits = self.mlp(pooled).squeeze(-1)  # (B, C)
        return max_logits, bag_logits, attn

    def _combine(self, max_logits: Tensor, bag_logits: Tensor) -> Tensor:
        if self.out_logits == "max":
            return max_logits
        if self.out_logits == "bag":
            return bag_logits
        return 0.5 * (max_logits + bag_logits)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        max_logits, bag_logits, _ = self._streams(x, mask)  # (B, C), (B, C)
        return self._combine(max_logits, bag_logits)  # (B, C)

    def forward_packed(self, x: Tensor, packing: Packing) -> Tensor:
        """Logits ``(M * B, C)`` of the bags of a packed batch ``x (M, T, D)`` (as ``_streams``)."""
        scores = packing.unpack(self.tiles_scores(x))  # (M * B, N, C)
        max_logits, critical = masked_extremes(scores, packing.mask, 1, 0)  # (M * B, 1, C) x2
        queries = self.tiles_queries(x)  # (M, T, Q)
        rows = packing.index.gather(1, critical.squeeze(1))  # (M * B, C) rows of the critical tiles
        q_critical = queries.reshape(-1, queries.shape[-1])[rows]  # (M * B, C, Q)
        sim = packing.bag_dot(queries, q_critical)  # (M, T, C)
        attn = packing.pack(masked_softmax(packing.unpack(sim), packing.mask))  # (M, T, C)
        values = x if self.tiles_values is None else self.tiles_values(x)  # (M, T, V)
        pooled = packing.pool(attn, values)  # (M * B, C, V)
        bag_logits = self.mlp(pooled).squeeze(-1)  # (M * B, C)
        return self._combine(max_logits.squeeze(1), bag_logits)  # (M * B, C)

    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        max_logits, bag_logits, attn = self._streams(x, mask)  # (B, C), (B, C), (B, C, N)
        out = self._resolve_output(self._combine(max_logits, bag_logits), output_index)  # (B,)
        picked = attn.gather(1, out.view(-1, 1, 1).expand(-1, 1, x.shape[1]))  # (B, 1, N)
        return nan_padded(picked.squeeze(1), mask)  # (B, N)
