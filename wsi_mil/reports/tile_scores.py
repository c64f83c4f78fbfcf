"""Inputs of the heatmaps: feature bags, fold models, tile scores, slide thumbnails.

Reads what a run left on disk (feature and coords files through ``wsi_mil.io``,
``models/*.pt``) so that a report can be made afterwards.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from loguru import logger

from wsi_mil.errors import FileFormatError, SlideReadError, WsiMilError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif", ".svslide")
ModelFactory = Callable[..., torch.nn.Module]


def tile_size_level0_px(coords_level0: np.ndarray, *attr_sets: dict[str, Any]) -> float:
    """Tile side in level-0 pixels: ``tile_size * downsample`` (coords attrs), else
    ``tile_size * target_mpp / slide_mpp`` (feature attrs), else the grid step."""
    for attrs in attr_sets:
        if "tile_size" in attrs and "downsample" in attrs:
            return float(attrs["tile_size"]) * float(attrs["downsample"])
    for attrs in attr_sets:
        if {"tile_size", "target_mpp", "slide_mpp"} <= set(attrs):
            return float(attrs["tile_size"]) * float(attrs["target_mpp"]) / float(attrs["slide_mpp"])
    steps = [np.diff(np.unique(coords_level0[:, i])) for i in range(2)]
    steps = np.concatenate([s[s > 0] for s in steps])
    if steps.size == 0:
        raise FileFormatError("cannot infer the tile size: no attrs and a single tile position")
    return float(steps.min())


def default_model_factory() -> ModelFactory:
    try:
        from wsi_mil.models import create_model
    except ImportError as err:
        raise WsiMilError(f"wsi_mil.models.create_model is not available ({err})") from err
    return create_model


def load_fold_model(path: str | Path, factory: ModelFactory | None = None) -> torch.nn.Module:
    """Rebuild an outer-fold model from ``models/r{r}_f{k}.pt`` (eval mode, CPU)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise FileFormatError(f"{path} is not a readable model checkpoint "
                              f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}); rerun "
                              "`wsi-mil cv` for this run (or delete the file)") from err
    if not isinstance(ckpt, dict):
        raise FileFormatError(f"{path} holds a {type(ckpt).__name__}, not a model checkpoint")
    missing = {"model", "in_dim", "n_outputs", "state_dict"} - set(ckpt)
    if missing:
        raise FileFormatError(f"{path} lacks keys {sorted(missing)}")
    factory = factory or default_model_factory()
    model = factory(ckpt["model"], int(ckpt["in_dim"]), int(ckpt["n_outputs"]),
                    **dict(ckpt.get("hparams") or {}))
    model.load_state_dict(ckpt["state_dict"])
    if ckpt.get("feature_scaler") is not None:  # trained on standardised features: scale inputs the same way
        from wsi_mil.data.scaling import FeatureScaler, ScaledHead

        model = ScaledHead(model, FeatureScaler.from_state(ckpt["feature_scaler"]))
    return model.eval()


@torch.no_grad()
def compute_tile_scores(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """``model.tile_scores`` of one whole bag: (N, D) -> (N,) float."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None]  # (1, N, D)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)                              # (1, N)
    scores = model.tile_scores(x, mask)                                           # (1, N)
    return scores.reshape(-1).float().cpu().numpy()


def read_thumbnail(slide_path: str | Path, max_px: int = 1024, mpp: float | None = None
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """``(thumbnail (h, w, 3) uint8, level-0 (width, height))`` of a slide."""
    try:
        from wsi_mil.slides import open_slide
    except ImportError:
        open_slide = None
    if open_slide is not None:
        try:
            mpp_override = None if mpp is None or np.isnan(mpp) else float(mpp)
            with open_slide(slide_path, mpp_override=mpp_override) as reader:
                return np.asarray(reader.get_thumbnail((max_px, max_px))), tuple(reader.dimensions)
        except WsiMilError as err:  # e.g. no mpp: a thumbnail does not need it
            logger.debug("open_slide({}) failed ({}); using openslide", slide_path, err)
    import openslide

    try:
        osr = openslide.OpenSlide(str(slide_path))
    except (openslide.OpenSlideError, FileNotFoundError) as err:
        raise SlideReadError(f"cannot open slide {slide_path}: {err}") from err
    try:
        thumb = np.asarray(osr.get_thumbnail((max_px, max_px)).convert("RGB"))
        return thumb, tuple(osr.dimensions)
    finally:
        osr.close()


def read_slides(spec: str | Path) -> pd.DataFrame:
    """A slide table (``slide_id, path[, mpp]``) from a file / folder / glob / CSV spec."""
    try:
        from wsi_mil.io.slide_table import read_slide_table
    except ImportError:
        read_slide_table = _read_slide_table_fallback
    return read_slide_table(spec)


def slide_paths(slides: str | Path | pd.DataFrame | None) -> dict[str, tuple[Path, float]]:
    """``slide_id -> (path, mpp or NaN)`` from a slide table spec or DataFrame."""
    if slides is None:
        return {}
    if not isinstance(slides, pd.DataFrame):
        slides = read_slides(slides)
    mpp = slides["mpp"] if "mpp" in slides.columns else pd.Series(np.nan, index=slides.index)
    rows = zip(slides["slide_id"], slides["path"], mpp, strict=True)
    return {str(s): (Path(p), float(m)) for s, p, m in rows}


def _read_slide_table_fallback(spec: str | Path) -> pd.DataFrame:
    spec = Path(spec)
    if spec.suffix.lower() == ".csv":
        table = pd.read_csv(spec)
        if "path" in table.columns and "slide_id" not in table.columns:
            table["slide_id"] = [Path(p).stem for p in table["path"]]
        return table
    if spec.is_dir():
        files = sorted(p for p in spec.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES)
    else:
        files = [spec]
    return pd.DataFrame({"slide_id": [p.stem for p in files], "path": [str(p) for p in files]})
