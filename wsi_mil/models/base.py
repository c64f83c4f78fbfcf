"""The interface every MIL head implements, plus hyperparameter checks.

A head maps a padded batch of bags ``x (B, N, D)`` with a padding mask
``mask (B, N)`` (bool, True = real tile) to logits ``(B, C)``: C = 1 for a
binary task or a survival risk, C = K for a K-class task. A masked padded bag
gives the same logits as the same bag alone, unpadded (tested for every head).
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsi_mil.errors import ConfigError, EmptyBagError

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("wsi_mil_trusted_inputs", default=False)


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Inside this context heads skip their input checks and the zeroing of padding.

    For the training engines only, whose batches come from
    :class:`~wsi_mil.data.bags.BagStore` with zero padding and no empty bag
    (checked once when the store is built): the checks cost a full masked
    copy of every ``(B, N, D)`` batch and data-dependent branches.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


class MILHead(nn.Module, ABC):
    """Base class of the MIL heads (multiple-instance aggregators).

    Subclasses take ``in_dim`` and ``n_outputs`` positionally and their
    hyperparameters as keyword-only arguments, each stored in an attribute of
    the same name (so :attr:`hparams` can list them, sklearn-style).

    Attributes
    ----------
    name: registry name, set by ``register_model``.
    permutation_invariant: True when shuffling a bag's tiles cannot change
        the output (False for TransMIL, whose positional encoding sees order).
    pools_by_mean: True when the head sees a bag only through its mean tile.
    """

    name: ClassVar[str] = ""
    permutation_invariant: ClassVar[bool] = True
    #: True when ``forward(x, mask) == forward(masked_mean(x, mask)[:, None], ones)``:
    #: the head sees a bag only through its mean, so engines may pool once per bag.
    pools_by_mean: ClassVar[bool] = False

    def __init__(self, in_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.n_outputs = check_positive_int("n_outputs", n_outputs)

    # -- interface -------------------------------------------------------------
    @abstractmethod
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, C)`` of bags ``x (B, N, D)``; ``mask (B, N)`` True = real tile."""

    @abstractmethod
    def tile_scores(
        self, x: Tensor, mask: Tensor | None = None, output_index: int | None = None
    ) -> Tensor:
        """Per-tile scores ``(B, N)`` for heatmaps; padded positions are NaN.

        ``output_index`` picks the output for heads whose tile scores depend
        on it (Chowder, DSMIL, MeanPool); None = output 0 when C = 1, else
        each bag's highest logit (its predicted class).
        """

    # -- hyperparameters -------------------------------------------------------
    @classmethod
    def hparam_names(cls) -> list[str]:
        """Names of the keyword-only hyperparameters of the constructor."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """Default value of each hyperparameter (the reference's shipped config)."""
        params = inspect.signature(cls.__init__).parameters
        return {n: params[n].default for n in cls.hparam_names()}

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters this head was built with (JSON-friendly)."""
        return {n: getattr(self, n) for n in self.hparam_names()}

    def extra_repr(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"in_dim={self.in_dim}, n_outputs={self.n_outputs}, {args}".rstrip(", ")

    # -- helpers for subclasses ------------------------------------------------
    def _prepare(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check shapes, default the mask to all-real, zero the padded tiles.

        Zeroing makes whatever the padding holds (zeros, NaN) irrelevant.
        Skipped inside :func:`trusted_inputs` (padding is zero there already).
        """
        if _TRUSTED.get():
            return x, mask
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ConfigError(
                f"{self.name or type(self).__name__} expects features (B, N, {self.in_dim}); "
                f"got shape {tuple(x.shape)}"
            )
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ConfigError(
                f"mask must be a bool tensor of shape {tuple(x.shape[:2])} (True = real tile); "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise EmptyBagError(f"bag(s) at batch index {empty} have no real tile")
        if not bool(mask.all()):
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        return x, mask

    def _resolve_output(self, logits: Tensor, output_index: int | None) -> Tensor:
        """Output index per bag ``(B,)`` for class-dependent tile scores."""
        if output_index is None:
            if self.n_outputs == 1:
                return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            return logits.argmax(dim=1)
        if not 0 <= output_index < self.n_outputs:
            raise ConfigError(
                f"output_index={output_index} out of range for n_outputs={self.n_outputs}"
            )
        return torch.full((logits.shape[0],), output_index, device=logits.device)


def nan_padded(scores: Tensor, mask: Tensor) -> Tensor:
    """``scores (B, N)`` with padded positions set to NaN."""
    return scores.masked_fill(~mask, math.nan)


# -- value checks (messages name the bad value and what is allowed) -----------
def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    return value


def check_non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0; got {value!r}")
    return value


def check_hidden(name: str, value: Any) -> list[int] | None:
    """None (no hidden layer) or a sequence of positive layer widths, as a list."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list of positive integers or null; got {value!r}")
    return [check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value)]


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a dropout rate in [0, 1); got {value!r}")
    return float(value)


def check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0; got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {list(choices)}")
    return value
