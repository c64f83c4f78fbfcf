"""``open_slide``: the one way to open a slide, whatever the backend."""
from __future__ import annotations

from pathlib import Path

import wsi_mil.slides.openslide_backend  # noqa: F401  (registers "openslide")
import wsi_mil.slides.pil_backend  # noqa: F401  (registers "pil")
from wsi_mil.slides.base import READERS, SlideReader


def open_slide(path: str | Path, mpp_override: float | None = None,
               backend: str = "openslide") -> SlideReader:
    """Open a whole-slide image with the ``backend`` reader (see ``list_readers()``).

    ``mpp_override`` (um/px at level 0) wins over the file's resolution. Raises
    :class:`~wsi_mil.errors.SlideReadError` for a missing / unreadable / non-slide file,
    :class:`~wsi_mil.errors.MissingMppError` when no resolution is known, and
    :class:`~wsi_mil.errors.RegistryError` for an unknown backend.
    """
    return READERS.create(backend, path, mpp_override=mpp_override)


def list_readers() -> list[str]:
    """Names of the registered slide reader backends."""
    return READERS.list()
