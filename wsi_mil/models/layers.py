"""Building blocks shared by several MIL heads.

Every masked operation takes ``mask (B, N)`` bool, True = real tile, and
guarantees that padded tiles have no influence on the result.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsi_mil.models.base import check_choice

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def check_activation(name: str, value: str) -> str:
    """``value`` if it names an activation of :data:`ACTIVATIONS`, else ConfigError."""
    return check_choice(name, value, sorted(ACTIVATIONS))


def make_activation(name: str) -> nn.Module:
    """An activation module from its name (one of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[check_activation("activation", name)]()


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> out_dim``; each hidden block is
    Linear, activation, Dropout (the reference's ``MLP`` layout, so state
    dicts and parameter counts line up). Applied on the last dimension.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] | None = None,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for width in hidden or ():
            block = [nn.Linear(d, width, bias=bias), make_activation(activation)]
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            d = width
        layers.append(nn.Linear(d, out_dim, bias=bias))
        super().__init__(*layers)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax of ``logits (B, N, ...)`` over real tiles only; padded weights are 0."""
    while mask.ndim < logits.ndim:
        mask = mask.unsqueeze(-1)
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=dim)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x (B, N, D)`` over the real tiles of each bag -> ``(B, D)``."""
    m = mask.to(x.dtype)  # (B, N)
    total = torch.einsum("bn,bnd->bd", m, x)  # (B, D), no (B, N, D) temporary
    return total / m.sum(dim=1, keepdim=True)  # (B, D)


class GatedAttention(nn.Module):
    """Attention logits of Ilse et al., "Attention-based Deep Multiple Instance
    Learning", ICML 2018 (eq. 9, gated; eq. 8 when ``gated=False``):
    ``a_i = w^T (tanh(V h_i) * sigm(U h_i)) / temperature``.

    ``forward(h (B, N, D), mask (B, N)) -> logits (B, N)``, -inf on padded tiles.
    Submodules ``attention_a`` (V), ``attention_b`` (U), ``attention_c`` (w)
    follow CLAM / HIPT naming.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        dropout: float = 0.0,
        gated: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        self.attention_a = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), *drop)
        self.attention_b = (
            nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Sigmoid(), *drop) if gated else None
        )
        self.attention_c = nn.Linear(hidden_dim, 1)
        self.temperature = temperature

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        a = self.attention_a(h)  # (B, N, H)
        if self.attention_b is not None:
            a = a * self.attention_b(h)  # (B, N, H)
        logits = self.attention_c(a).squeeze(-1) / self.temperature  # (B, N)
        return logits.masked_fill(~mask, float("-inf"))  # (B, N)


def masked_extremes(
    scores: Tensor, mask: Tensor, n_top: int, n_bottom: int
) -> tuple[Tensor, Tensor]:
    """The ``n_top`` highest then ``n_bottom`` lowest real-tile scores per output.

    ``scores (B, N, C)`` -> ``(values (B, n_top + n_bottom, C), indices (same))``,
    top values sorted descending, bottom values ascending. A bag with fewer
    real tiles than requested gets 0 in the missing slots (the reference
    ExtremeLayer's rule), so a short bag gives the same values padded or not.
    """
    k = max(n_top, n_bottom)
    if scores.shape[1] < k:  # topk needs k <= N: pad with masked slots
        extra = k - scores.shape[1]
        scores = nn.functional.pad(scores, (0, 0, 0, extra))  # (B, k, C)
        mask = nn.functional.pad(mask, (0, extra), value=False)  # (B, k)
    real = mask.unsqueeze(-1).expand_as(scores)  # (B, N, C)
    values, indices = [], []
    if n_top > 0:
        top, top_idx = scores.masked_fill(~real, float("-inf")).topk(n_top, dim=1)  # (B, T, C)
        values.append(top.masked_fill(~real.gather(1, top_idx), 0.0))
        indices.append(top_idx)
    if n_bottom > 0:
        low, low_idx = scores.masked_fill(~real, float("inf")).topk(
            n_bottom, dim=1, largest=False
        )  # (B, Bo, C)
        values.append(low.masked_fill(~real.gather(1, low_idx), 0.0))
        indices.append(low_idx)
    return torch.cat(values, dim=1), torch.cat(indices, dim=1)
