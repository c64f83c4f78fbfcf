"""The slide reader interface: every backend (OpenSlide, later tiffslide, cuCIM...) implements it.

Coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)`` in pixels of
the level read; images are ``(H, W, 3) uint8`` RGB numpy arrays.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from wsi_mil.registry import Registry

#: Slide reader backends by name; ``open_slide(path, backend=name)`` creates them.
READERS: Registry[SlideReader] = Registry("slide reader")


class SlideReader(ABC):
    """A pyramidal whole-slide image opened for reading.

    Attributes set by backends: ``path``, ``slide_id`` (file stem), ``dimensions``
    (level-0 width, height px), ``level_count``, ``level_dimensions``,
    ``level_downsamples`` (level-0 px per level px), ``mpp`` (um/px at level 0, x
    axis), ``mpp_source`` (where it came from), ``properties`` (str -> str).
    """

    path: Path
    slide_id: str
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    properties: dict[str, str]
    backend: str = ""

    @abstractmethod
    def read_region(self, xy_level0: tuple[int, int], level: int,
                    size_px: tuple[int, int]) -> np.ndarray:
        """RGB pixels (H, W, 3) uint8 of ``size_px`` = (W, H) at ``level``, from level-0 ``xy``."""

    @abstractmethod
    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """RGB thumbnail (h, w, 3) uint8 fitting in ``max_size`` = (W, H), aspect kept."""

    @abstractmethod
    def close(self) -> None:
        """Release the file handle."""

    @property
    def quickhash(self) -> str:
        """A cheap content hash of the slide ('' when the backend has none)."""
        return ""

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample is <= ``downsample`` (OpenSlide's rule)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample:
                best = level
        return best

    def level_mpp(self, level: int) -> float:
        """um/px at pyramid ``level``."""
        return self.mpp * float(self.level_downsamples[level])

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.slide_id!r}, dimensions={self.dimensions}, "
                f"levels={self.level_count}, mpp={self.mpp:.4g} ({self.mpp_source}))")
