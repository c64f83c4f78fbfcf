"""What the two vision-language encoders whose MIL feature is not their image-text embedding
(MUSK, CONCH) share: the ``embedding`` choice, a text tokenizer found beside the weights (or
given) and loaded on first use, and the ``<name>_joint`` variant of each factory.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.base import Encoder
from wsi_mil.errors import ConfigError, WeightsNotFoundError

#: ``"mil"``: the model card's slide-level feature; ``"joint"``: the normalised image-text embedding
EMBEDDINGS = ("mil", "joint")


class TwoEmbeddingEncoder(Encoder):
    """An encoder with a text tower whose MIL feature (:meth:`mil_embed`) differs from its
    image-text embedding (``model.image_joint``); ``embedding`` picks what ``forward`` gives.

    Subclasses set :attr:`tokenizer_help` (how to get the tokenizer, for the error when it is
    missing) and implement :meth:`mil_embed`, :meth:`load_tokenizer` and ``encode_text``.
    """

    has_text = True
    tokenizer_help = "the encoder's text tokenizer"

    def __init__(self, model: nn.Module, tokenizer_path: Path | None, embedding: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.model = model
        self.embedding = embedding
        self.tokenizer_path = tokenizer_path
        self._tokenizer: Any = None

    def mil_embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def load_tokenizer(self, path: Path) -> Any:
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.embedding == "joint":
            return self.model.image_joint(images)  # (B, D_joint)
        return self.mil_embed(images)  # (B, D)

    def encode_image_joint(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast(images.device):
            return self.model.image_joint(images).float()  # (B, D_joint), unit norm

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.tokenizer_path is None:
                raise WeightsNotFoundError(self.tokenizer_help)
            self._tokenizer = self.load_tokenizer(self.tokenizer_path)
        return self._tokenizer


def check_factory_options(name: str, embedding: str, unknown: dict[str, Any]) -> None:
    """ConfigError for options a factory does not take, or an ``embedding`` not in :data:`EMBEDDINGS`."""
    if unknown:
        raise ConfigError(f"encoder {name!r} got unknown options {sorted(unknown)}")
    if embedding not in EMBEDDINGS:
        raise ConfigError(f"{name} embedding={embedding!r}; choose one of {EMBEDDINGS}")


def find_tokenizer(label: str, folder: Path, explicit: str | None, names: Sequence[str],
                   elsewhere: Sequence[Path] = ()) -> Path | None:
    """The tokenizer file: ``explicit`` (must exist), else the first of ``names`` in the weights'
    ``folder``, else the first existing path of ``elsewhere``; None when there is none."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{label} tokenizer {explicit!r} does not exist")
        return path
    for candidate in [Path(folder) / n for n in names] + list(elsewhere):
        if candidate.is_file():
            return candidate
    return None


def joint_variant(base: str, create: Callable[..., Encoder]) -> Callable[..., Encoder]:
    """The factory of ``<base>_joint``: ``create`` with ``embedding="joint"`` (to register)."""

    def create_joint(weights=None, device="cpu", precision=None, arch_overrides=None,
                     tokenizer: str | None = None, **kw) -> Encoder:
        if "embedding" in kw:
            raise ConfigError(f"encoder '{base}_joint' has embedding='joint'; use '{base}' for the other")
        return create(weights, device, precision, arch_overrides, embedding="joint", tokenizer=tokenizer,
                      name=f"{base}_joint", **kw)

    create_joint.__name__ = f"create_{base}_joint"
    create_joint.__doc__ = (f"{base.upper()} with its joint image-text embedding as the feature "
                            f"(``embedding=\"joint\"``): extract with it, then zero-shot / retrieval "
                            f"with the same name.")
    return create_joint
