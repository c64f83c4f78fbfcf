"""The batch of one step of stacked models (:mod:`wsi_mil.training.fit_stacked`), padded or packed.

Layout, chosen per step (:func:`plan_step`): *padded* ``(S, B, N, D)``, every
bag padded to the step's largest bag N, run by the head's own ``forward``; or
*packed* ``(S, T, D)``, each stream's bags one after another (T = the largest
total of a stream; :class:`~wsi_mil.models.layers.Packing`), run by the head's
``forward_packed`` (ABMIL, Chowder, DSMIL). Packing is used when it drops at
least 10% of the padded rows (:data:`PACK_BELOW`). :func:`run_models` runs a
range of rows x streams of models on a group's batch, the batch repeated once
per row of models.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from wsi_mil.data.bags import BagStore, BatchBuffer, Pick, assemble, assemble_packed, bag_sizes
from wsi_mil.data.scaling import FeatureScaler
from wsi_mil.models.layers import Packing
from wsi_mil.training.fit import train_autocast
from wsi_mil.training.stacked import StackedHeads

#: a step's bags are packed when that leaves at most this share of the padded batch's rows
PACK_BELOW = 0.9


@dataclass(frozen=True)
class StackedBatch:
    """The batch of a group of S' streams, padded or packed.

    Padded: ``x (S', B, N, D)``, ``mask (S', B, N)``. Packed: ``x (S', T, D)``,
    ``sizes (S', B)`` tiles per bag (the layout of
    :class:`~wsi_mil.models.layers.Packing`, one stream per row).
    """

    x: torch.Tensor
    mask: torch.Tensor | None = None
    sizes: np.ndarray | None = None
    packings: dict[int, Packing] = field(default_factory=dict)  # rows of models -> the folded batch's map
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # precision -> x as the heads take it

    @property
    def width(self) -> int:
        return int(self.mask.shape[1] if self.sizes is None else self.sizes.shape[1])

    def to(self, device: str | torch.device) -> StackedBatch:
        if self.x.device == torch.device(device):
            return self
        return StackedBatch(self.x.to(device), None if self.mask is None else self.mask.to(device), self.sizes)

    def input(self, precision: str) -> torch.Tensor:
        """``x`` in the heads' input dtype: bfloat16 under ``"bf16"`` (cast once, before the batch
        is repeated per row of models; autocast would cast the repeated batch in every first layer,
        with the same rounding), else ``x`` itself."""
        if precision != "bf16" or self.x.dtype != torch.float32:
            return self.x
        if precision not in self.inputs:
            self.inputs[precision] = self.x.to(torch.bfloat16)
        return self.inputs[precision]

    def packing(self, rows: int) -> Packing:
        """The map of the packed batch repeated for ``rows`` rows of models (built once per rows)."""
        if rows not in self.packings:
            self.packings[rows] = Packing(np.tile(self.sizes, (rows, 1)), self.x.shape[1], self.x.device)
        return self.packings[rows]


def plan_step(store: BagStore, picks: Sequence[Sequence[Pick | None]], pooled: bool, packable: bool,
          chunk_bytes: int) -> tuple[bool, list[tuple[int, int]]]:
    """Whether to pack this step's bags, and the consecutive stream ranges whose batch
    stays under ``chunk_bytes`` (at least one stream per range).

    Packed when the head has a packed forward and packing leaves at most
    :data:`PACK_BELOW` of the padded rows (bags of varying size); a padded
    stream holds B x N rows (N = the largest bag of the step), a packed one
    T rows (the largest total of a stream).
    """
    sizes = bag_sizes(store, picks)  # (S, B)
    padded_rows = sizes.shape[1] * (1 if pooled else int(sizes.max(initial=1)))
    packed_rows = int(sizes.sum(1).max(initial=1))
    packed = packable and not pooled and packed_rows <= PACK_BELOW * padded_rows
    per_stream = max(1, (packed_rows if packed else padded_rows) * store.dim * 4)
    k = max(1, chunk_bytes // per_stream)
    return packed, [(lo, min(len(picks), lo + k)) for lo in range(0, len(picks), k)]


def assemble_step(store: BagStore, picks: Sequence[Sequence[Pick | None]], buffer: BatchBuffer | None,
              pooled: bool, packed: bool, scalers: Sequence[FeatureScaler | None]) -> StackedBatch:
    if packed:
        x, sizes = assemble_packed(store, picks, buffer, scalers)  # (S', T, D), (S', B)
        return StackedBatch(x, sizes=sizes)
    x, mask = assemble(store, picks, buffer, pooled, scalers)  # (S', B, N, D), (S', B, N)
    return StackedBatch(x, mask=mask)


def repeat_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``(K, ...)`` -> ``(rows * K, ...)``: x repeated for each row of models."""
    if rows == 1:
        return x
    return x.unsqueeze(0).expand(rows, *x.shape).reshape(-1, *x.shape[1:])


def fold_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``(S, B, ...)`` -> ``(rows * S * B, ...)``: the batch repeated for each row of models."""
    return repeat_rows(x.reshape(-1, *x.shape[2:]), rows)


def run_models(stacked: StackedHeads, batch: StackedBatch, rows: tuple[int, int], streams: tuple[int, int],
               n_streams: int, precision: str = "fp32") -> torch.Tensor:
    """Outputs ``(g, S', B, C)`` of models rows x streams on the group's batch, in the heads'
    ``precision`` (:func:`~wsi_mil.training.fit.train_autocast`; bf16 outputs are the caller's to cast)."""
    (g0, g1), (s0, s1) = rows, streams
    g = g1 - g0
    with stacked.models(g0 * n_streams + s0, (g1 - 1) * n_streams + s1), train_autocast(precision, batch.x.device):
        x = batch.input(precision)  # cast once for all rows (and all calls on this batch)
        if batch.sizes is None:
            out = stacked(fold_rows(x, g), fold_rows(batch.mask, g))  # (g * S' * B, C)
        else:
            out = stacked.forward_packed(repeat_rows(x, g), batch.packing(g))  # (g * S' * B, C)
    return out.view(g, s1 - s0, batch.width, -1)
