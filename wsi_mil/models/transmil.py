"""TransMIL: transformer-based correlated MIL with Nystrom attention.

Shao et al., "TransMIL: Transformer based Correlated Multiple Instance
Learning for Whole Slide Image Classification", NeurIPS 2021. Layers follow
the authors' code: projection to 512 + ReLU, CLS token, two
``x + NystromAttention(LayerNorm(x))`` layers (nystrom-attention package,
8 heads, 256 landmarks, 6 pseudo-inverse iterations, value residual conv)
with a PPEG (depth-wise 7/5/3 convolutions) on the squared token grid in
between, LayerNorm and a linear layer on the CLS token.

Padding: the reference runs the whole padded sequence, so padding changes the
landmarks, the grid and the logits. Here each bag's grid is built from its
own real tiles only (squared by wrapping its first tiles, as the paper), and
bags whose grids have the same side are run together, unpadded: a padded bag
gives the same logits as the bag alone. Not permutation-invariant: the PPEG
convolutions and the landmark grouping see the tile order.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from nystrom_attention import NystromAttention
from torch import Tensor, nn

from wsi_mil.errors import ConfigError
from wsi_mil.models.base import MILHead, check_positive_int, check_probability
from wsi_mil.models.registry import register_model


class PPEG(nn.Module):
    """Pyramid position encoding generator: ``tokens (G, S*S, P)`` on an
    ``S x S`` grid -> ``tokens + dwconv7 + dwconv5 + dwconv3`` ``(G, S*S, P)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, tokens: Tensor, side: int) -> Tensor:
        g, _, p = tokens.shape
        grid = tokens.transpose(1, 2).reshape(g, p, side, side)  # (G, P, S, S)
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)  # (G, P, S, S)
        return grid.flatten(2).transpose(1, 2)  # (G, S*S, P)


class TransLayer(nn.Module):
    """``x + NystromAttention(LayerNorm(x))`` on ``(G, L, P)`` (no feed-forward, as the paper)."""

    def __init__(
        self, dim: int, n_heads: int, n_landmarks: int, pinv_iterations: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim=dim,
            dim_head=dim // n_heads,
            heads=n_heads,
            num_landmarks=n_landmarks,
            pinv_iterations=pinv_iterations,
            residual=True,
            dropout=dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm(x))  # (G, L, P)

    def cls_attention(self, x: Tensor) -> Tensor:
        """Nystrom-approximated attention of token 0 (CLS) on tokens 1.., mean
        over heads: ``(G, L, P) -> (G, L - 1)``, without the L x L matrix."""
        n = x.shape[1]
        front = (-n) % self.attn.num_landmarks  # zeros the package prepends
        _, (a1, a2_inv, a3) = self.attn(self.norm(x), return_attn_matrices=True)
        row = (a1[:, :, front : front + 1] @ a2_inv) @ a3  # (G, H, 1, front + L)
        return row[:, :, 0, front + 1 :].mean(dim=1)  # (G, L - 1)


class SquaredBagsHead(MILHead):
    """``forward`` / ``tile_scores`` of the TransMILs, from the head's ``_run(x, mask, with_scores)``
    (logits ``(B, C)``, CLS attention ``(B, N)`` or None; see :func:`run_squared`)."""

    def _run(self, x: Tensor, mask: Tensor, with_scores: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        logits, _ = self._run(x, mask, with_scores=False)  # (B, C)
        return logits  # (B, C)

    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        x, mask = self._prepare(x, mask)  # (B, N, D), (B, N)
        _, scores = self._run(x, mask, with_scores=True)  # (B, N)
        return scores  # (B, N)


def run_squared(tokens: Tensor, mask: Tensor, with_scores: bool, cls_token: Tensor, first: nn.Module,
                pos: nn.Module, second: nn.Module, classify: Callable[[Tensor], Tensor]
                ) -> tuple[Tensor, Tensor | None]:
    """The TransMIL pass on each bag's real tokens ``tokens (B, N, P)``: square them to ``S*S``
    (S = ceil(sqrt(n)), the first tokens appended again), prepend the CLS token, ``first`` block,
    ``pos(grid, S)`` on the grid tokens, ``second`` block, ``classify(CLS)``. Bags with the same side
    run together, unpadded. Returns logits ``(B, C)`` and, with ``with_scores``, the CLS token's
    attention in ``second`` (its ``cls_attention``) on each tile ``(B, N)`` (NaN = padded; a wrapped
    duplicate's attention added to its tile), else None.
    """
    n_real = mask.sum(dim=1).tolist()  # B ints
    sides = [math.isqrt(n - 1) + 1 for n in n_real]  # S = ceil(sqrt(n))
    order, outs = [], []
    scores = None
    if with_scores:
        scores = torch.full(mask.shape, math.nan, dtype=tokens.dtype, device=tokens.device)  # (B, N)
    for side in sorted(set(sides)):
        idx = [b for b, s in enumerate(sides) if s == side]
        seq = torch.stack([_square(tokens[b][mask[b]], side) for b in idx])  # (G, S*S, P)
        cls = cls_token.expand(len(idx), -1, -1)  # (G, 1, P)
        seq = first(torch.cat([cls, seq], dim=1))  # (G, 1+S*S, P)
        seq = torch.cat([seq[:, :1], pos(seq[:, 1:], side)], dim=1)  # (G, 1+S*S, P)
        if scores is not None:
            attn = second.cls_attention(seq)  # (G, S*S)
            for g, b in enumerate(idx):
                scores[b, mask[b]] = _unsquare(attn[g], n_real[b])  # (n_b,)
        seq = second(seq)  # (G, 1+S*S, P)
        outs.append(classify(seq[:, 0]))  # (G, C)
        order.extend(idx)
    logits = torch.cat(outs)[torch.argsort(torch.tensor(order, device=tokens.device))]  # (B, C)
    return logits, scores


@register_model("transmil")
class TransMIL(SquaredBagsHead):
    """``x (B, N, D)`` -> Linear + ReLU ``(B, N, P)`` -> per bag: square the
    real tokens to ``S*S`` (S = ceil(sqrt(n))), prepend CLS -> layer ->
    PPEG -> layer -> LayerNorm(CLS) -> Linear ``(B, C)``.

    Parameters
    ----------
    proj_dim: token width P after the input projection (512).
    n_heads: attention heads (8; head width P / n_heads).
    n_landmarks: Nystrom landmarks (256).
    pinv_iterations: Moore-Penrose iterations (6).
    dropout: dropout after the attention output projection (0.1).

    ``tile_scores`` returns the CLS token's attention on each tile in the last
    layer, mean over heads (Nystrom-approximated; a wrapped duplicate's
    attention is added to its tile).
    """

    permutation_invariant = False

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        proj_dim: int = 512,
        n_heads: int = 8,
        n_landmarks: int = 256,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.proj_dim = check_positive_int("proj_dim", proj_dim)
        self.n_heads = check_positive_int("n_heads", n_heads)
        if proj_dim % n_heads:
            raise ConfigError(f"proj_dim={proj_dim} must be divisible by n_heads={n_heads}")
        self.n_landmarks = check_positive_int("n_landmarks", n_landmarks)
        self.pinv_iterations = check_positive_int("pinv_iterations", pinv_iterations)
        self.dropout = check_probability("dropout", dropout)
        self.proj = nn.Sequential(nn.Linear(in_dim, proj_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, proj_dim))
        args = (proj_dim, n_heads, n_landmarks, pinv_iterations, self.dropout)
        self.layer1 = TransLayer(*args)
        self.pos_layer = PPEG(proj_dim)
        self.layer2 = TransLayer(*args)
        self.norm = nn.LayerNorm(proj_dim)
        self.head = nn.Linear(proj_dim, n_outputs)

    def _run(self, x: Tensor, mask: Tensor, with_scores: bool) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, C)`` and, if asked, CLS attention on each tile ``(B, N)`` (NaN = padded)."""
        return run_squared(self.proj(x), mask, with_scores, self.cls_token, self.layer1, self.pos_layer,
                           self.layer2, lambda cls: self.head(self.norm(cls)))


def _square(tokens: Tensor, side: int) -> Tensor:
    """``(n, P) -> (S*S, P)``: append the first ``S*S - n`` tokens again (paper's squaring)."""
    return torch.cat([tokens, tokens[: side * side - tokens.shape[0]]])  # (S*S, P)


def _unsquare(scores: Tensor, n: int) -> Tensor:
    """``(S*S,) -> (n,)``: fold the wrapped duplicates' scores back onto their tiles."""
    folded = scores[:n].clone()  # (n,)
    extra = scores[n:]  # (S*S - n,)
    folded[: extra.shape[0]] += extra
    return folded
