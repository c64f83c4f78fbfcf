"""TransMIL as the reference benchmark builds it (``protocol=reference``).

owkin/HistoSSLscaling ``rl_benchmarks/models/slide_models/transmil.py`` with its
shipped config (``trans_mil.yaml`` sets nothing): no input projection (tokens
keep the ``in_dim`` width, 768 for the paper's encoders), CLS token, two
``x + SelfAttention(LayerNorm(x))`` blocks with **exact** softmax attention
(8 heads, qkv without bias, output projection with bias, no feed-forward),
between them a PPEG whose 3/5/7 convolutions are **dense** (``groups`` is not
set in the reference, so each is ``D x D x k x k``), then LayerNorm and a linear
layer on the CLS token. 53,683,969 parameters at D = 768, C = 1. Initialisation
as the reference: linear weights truncated normal (std 0.02), biases 0, the
classifier's weight and bias 0, CLS token 0, LayerNorm (1, 0).

Kept from wsi_mil's contract, where the reference is wrong: the reference
ignores its padding mask (padding tiles enter the squaring, the attention and
the grid). Here each bag is squared from its own real tiles (its first tiles
appended again, as the reference does) and bags with the same grid side run
together, unpadded, so a masked padded bag gives the logits of the bag alone.
Not permutation-invariant: the PPEG convolutions see the tile order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_mil.errors import ConfigError
from wsi_mil.models.base import check_positive_int, check_probability
from wsi_mil.models.registry import register_model
from wsi_mil.models.transmil import SquaredBagsHead, run_squared


class SelfAttention(nn.Module):
    """Exact multi-head self-attention (timm layout): ``(G, L, D) -> (G, L, D)``.

    Computed with ``scaled_dot_product_attention`` (the same softmax attention,
    without holding the ``L x L`` matrix where torch has a fused kernel).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, n, d = x.shape
        qkv = self.qkv(x).reshape(g, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # (G, H, L, D/H) each

    def forward(self, x: Tensor) -> Tensor:
        g, n, d = x.shape
        q, k, v = self._qkv(x)  # (G, H, L, D/H) each
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (G, H, L, D/H)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(g, n, d)))  # (G, L, D)

    def first_row(self, x: Tensor) -> Tensor:
        """Softmax attention of token 0 on every token: ``(G, L, D) -> (G, H, L)``."""
        q, k, _ = self._qkv(x)  # (G, H, L, D/H) each
        scale = q.shape[-1] ** -0.5
        return ((q[:, :, :1] @ k.transpose(-2, -1)) * scale).softmax(dim=-1)[:, :, 0]  # (G, H, L)


class Block(nn.Module):
    """``x + SelfAttention(LayerNorm(x))`` on ``(G, L, D)`` (the reference's ``_Block``)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm1(x))  # (G, L, D)

    def cls_attention(self, x: Tensor) -> Tensor:
        """Attention of token 0 (CLS) on tokens 1.., mean over heads: ``(G, L, D) -> (G, L - 1)``."""
        return self.attn.first_row(self.norm1(x))[:, :, 1:].mean(dim=1)  # (G, L - 1)


class DensePPEG(nn.Module):
    """``tokens (G, S*S, D)`` on an ``S x S`` grid -> ``tokens + conv3 + conv5 + conv7``,
    dense ``D -> D`` convolutions as in the reference."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.group_conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.group_conv2 = nn.Conv2d(dim, dim, 5, padding=2)
        self.group_conv3 = nn.Conv2d(dim, dim, 7, padding=3)

    def forward(self, tokens: Tensor, side: int) -> Tensor:
        g, _, d = tokens.shape
        grid = tokens.reshape(g, side, side, d).permute(0, 3, 1, 2)  # (G, D, S, S), row-major as the reference
        grid = grid + self.group_conv1(grid) + self.group_conv2(grid) + self.group_conv3(grid)  # (G, D, S, S)
        return grid.permute(0, 2, 3, 1).reshape(g, side * side, d)  # (G, S*S, D)


@register_model("transmil_ref")
class TransMILRef(SquaredBagsHead):
    """``x (B, N, D)`` -> per bag: square the real tiles to ``S*S`` (S = ceil(sqrt(n))),
    prepend CLS -> block -> dense PPEG -> block -> LayerNorm(CLS) -> Linear ``(B, C)``.

    Parameters
    ----------
    n_heads: attention heads (8; ``in_dim`` must be divisible by it).
    dropout: attention and projection dropout (0.0, the reference's default).

    ``tile_scores``: the CLS token's exact attention on each tile in the last
    block, mean over heads (a wrapped duplicate's attention is added to its tile).
    """

    permutation_invariant = False

    def __init__(self, in_dim: int, n_outputs: int, *, n_heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__(in_dim, n_outputs)
        self.n_heads = check_positive_int("n_heads", n_heads)
        if in_dim % n_heads:
            raise ConfigError(f"transmil_ref: in_dim={in_dim} must be divisible by n_heads={n_heads}")
        self.dropout = check_probability("dropout", dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, in_dim))
        self.cor = Block(in_dim, n_heads, self.dropout)
        self.pos_enc = DensePPEG(in_dim)
        self.agg = Block(in_dim, n_heads, self.dropout)
        self.norm = nn.LayerNorm(in_dim)
        self.head = nn.Linear(in_dim, n_outputs)
        self.apply(_reference_init)

    def _run(self, x: Tensor, mask: Tensor, with_scores: bool) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, C)`` and, if asked, CLS attention on each tile ``(B, N)`` (NaN = padded)."""
        return run_squared(x, mask, with_scores, self.cls_token, self.cor, self.pos_enc, self.agg,
                           lambda cls: self.head(self.norm(cls)))


def _reference_init(module: nn.Module) -> None:
    """The reference's ``_weight_init`` (applied module by module)."""
    if isinstance(module, TransMILRef):
        nn.init.zeros_(module.head.weight)
        nn.init.zeros_(module.head.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
