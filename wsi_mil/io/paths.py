"""Folder naming of every stage, in one place.

Tiling:      <output_dir>/<tiling_name>/coords/<slide_id>.h5
             <output_dir>/<tiling_name>/previews/<slide_id>.png
             <output_dir>/<tiling_name>/status.csv, config.yaml
             (reference layout, optional) <output_dir>/<tiling_name>/reference/<slide_id>/coords.npy
Extraction:  <output_dir>/<encoder_name>/<tiling_name>/<slide_id>.h5   (+ status.csv, config.yaml)
             (reference layout) <output_dir>/<encoder_name>/<cohort>/<slide_id>/features.npy
CV run:      <output_dir>/<task>/<encoder>/<head>/...
"""
from __future__ import annotations

import re
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file-system-safe version of an identifier (``timm:vit_small`` -> ``timm_vit_small``)."""
    return _SAFE.sub("_", str(name)).strip("_")


def tiling_name(target_mpp: float, tile_size: int) -> str:
    """``mpp0.50_px224``: two tilings with different parameters never share a folder."""
    return f"mpp{target_mpp:.2f}_px{int(tile_size)}"


def coords_dir(tiling_root: str | Path) -> Path:
    return Path(tiling_root) / "coords"


def coords_path(tiling_root: str | Path, slide_id: str) -> Path:
    return coords_dir(tiling_root) / f"{slide_id}.h5"


def preview_path(tiling_root: str | Path, slide_id: str) -> Path:
    return Path(tiling_root) / "previews" / f"{slide_id}.png"


def reference_coords_path(tiling_root: str | Path, slide_id: str) -> Path:
    return Path(tiling_root) / "reference" / slide_id / "coords.npy"


def features_dir(output_dir: str | Path, encoder_name: str, tiling: str) -> Path:
    return Path(output_dir) / safe_name(encoder_name) / tiling


def features_path(features_root: str | Path, slide_id: str) -> Path:
    return Path(features_root) / f"{slide_id}.h5"


def reference_features_path(output_dir: str | Path, encoder_name: str, cohort: str,
                            slide_id: str) -> Path:
    return Path(output_dir) / safe_name(encoder_name) / cohort / slide_id / "features.npy"
