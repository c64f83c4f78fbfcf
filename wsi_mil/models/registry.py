"""Registry of MIL heads: ``register_model``, ``create_model``, ``list_models``."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsi_mil.errors import ConfigError
from wsi_mil.models.base import MILHead
from wsi_mil.registry import Registry

MODELS: Registry[MILHead] = Registry("model")


def register_model(name: str) -> Callable[[type[MILHead]], type[MILHead]]:
    """Class decorator: register a :class:`MILHead` subclass under ``name``."""

    def decorator(cls: type[MILHead]) -> type[MILHead]:
        cls.name = name
        MODELS.register(name)(cls)
        return cls

    return decorator


def create_model(name: str, in_dim: int, n_outputs: int, **hparams: Any) -> MILHead:
    """Build the head ``name`` for ``in_dim``-d tile features and ``n_outputs`` logits.

    Hyperparameters not given take the reference's shipped defaults. Unknown
    names raise :class:`~wsi_mil.errors.RegistryError` (model) or
    :class:`~wsi_mil.errors.ConfigError` (hyperparameter), listing valid ones.
    """
    cls = MODELS.get(name)
    valid = cls.hparam_names()  # type: ignore[attr-defined]
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {unknown} for model {name!r}; valid: {', '.join(valid)}"
        )
    return cls(in_dim, n_outputs, **hparams)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered head names, sorted (optionally filtered by a glob pattern)."""
    return MODELS.list(pattern)
