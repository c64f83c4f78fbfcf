"""Versions of the libraries that shape extracted features (stored with every output)."""
from __future__ import annotations

from functools import lru_cache
from importlib import metadata

from wsi_mil.version import __version__

LIBRARIES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy",
             "openslide-python", "openslide-bin", "tifffile", "imagecodecs", "pillow", "h5py")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """``{"wsi_mil": ..., "torch": ..., ...}``; a library that is not installed is left out."""
    out = {"wsi_mil": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
