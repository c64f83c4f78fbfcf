"""Per-tile scores of a MIL head drawn over the slide thumbnail.

:func:`plot_heatmap` is the pure drawing step (thumbnail + level-0 tile
coordinates + tile size in level-0 pixels + scores). :func:`make_heatmaps`
does it for a CV run: for the top-scored and lowest-scored test slides of one
repeat it loads the outer-fold model that tested the slide
(``models/r{r}_f{k}.pt``), computes ``model.tile_scores`` on the slide's
feature bag and renders the heatmap. Colours are scaled per slide (attention
weights sum to one per bag, so only their relative size is meaningful).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from wsi_mil.errors import WsiMilError
from wsi_mil.io.coords import read_coords
from wsi_mil.io.feature_sources import read_slide_bag
from wsi_mil.io.paths import coords_path, features_path, safe_name
from wsi_mil.reports.figures import new_figure, save_figure
from wsi_mil.reports.runs import TASK_SURVIVAL, RunData, class_score_columns
from wsi_mil.reports.tile_scores import (
    ModelFactory,
    compute_tile_scores,
    load_fold_model,
    read_thumbnail,
    slide_paths,
    tile_size_level0_px,
)


@dataclass(frozen=True)
class HeatmapOutput:
    """One written heatmap."""

    head: str
    slide_id: str
    rank: str          # "top" | "bottom"
    slide_score: float
    repeat: int
    outer_fold: int
    path: Path


def score_overlay(thumbnail_shape: tuple[int, ...], coords_level0: np.ndarray,
                  tile_size_level0: float, scores: np.ndarray,
                  slide_dimensions: tuple[int, int], cmap: str = "jet",
                  alpha: float = 0.5) -> tuple[np.ndarray, Normalize]:
    """RGBA (h, w, 4) float image of the tile scores at thumbnail resolution.

    Tiles with a non-finite score stay transparent. Returns the overlay and the
    colour normalisation (for a colour bar).
    """
    height, width = thumbnail_shape[:2]
    scale_x = width / float(slide_dimensions[0])
    scale_y = height / float(slide_dimensions[1])
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(scores) != len(coords_level0):
        raise WsiMilError(f"{len(scores)} scores for {len(coords_level0)} tiles")
    finite = np.isfinite(scores)
    vmin, vmax = (float(scores[finite].min()), float(scores[finite].max())) if finite.any() else (0.0, 1.0)
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
    colors = colormaps[cmap](norm(np.where(finite, scores, vmin)))  # (N, 4)
    overlay = np.zeros((height, width, 4), dtype=float)
    x0 = np.floor(coords_level0[:, 0] * scale_x).astype(int)
    y0 = np.floor(coords_level0[:, 1] * scale_y).astype(int)
    x1 = np.maximum(np.ceil((coords_level0[:, 0] + tile_size_level0) * scale_x).astype(int), x0 + 1)
    y1 = np.maximum(np.ceil((coords_level0[:, 1] + tile_size_level0) * scale_y).astype(int), y0 + 1)
    for i in np.flatnonzero(finite):
        overlay[max(y0[i], 0):min(y1[i], height), max(x0[i], 0):min(x1[i], width), :3] = colors[i, :3]
        overlay[max(y0[i], 0):min(y1[i], height), max(x0[i], 0):min(x1[i], width), 3] = alpha
    return overlay, norm


def plot_heatmap(thumbnail: np.ndarray, coords_level0: np.ndarray, tile_size_level0: float,
                 scores: np.ndarray, slide_dimensions: tuple[int, int],
                 title: str | None = None, cmap: str = "jet", alpha: float = 0.5) -> Figure:
    """Thumbnail (left) and thumbnail with the tile-score overlay (right)."""
    overlay, norm = score_overlay(thumbnail.shape, coords_level0, tile_size_level0, scores,
                                  slide_dimensions, cmap=cmap, alpha=alpha)
    h, w = thumbnail.shape[:2]
    fig = new_figure(10.0, 10.0 * h / w / 2 + 1.0)
    left, right = fig.subplots(1, 2)
    left.imshow(thumbnail)
    left.set_title("thumbnail", fontsize=9)
    right.imshow(thumbnail)
    right.imshow(overlay)
    right.set_title("tile scores", fontsize=9)
    for ax in (left, right):
        ax.set_axis_off()
    sm = _scalar_mappable(norm, cmap)
    fig.colorbar(sm, ax=right, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _scalar_mappable(norm: Normalize, cmap: str):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def slide_ranking_score(predictions: pd.DataFrame) -> pd.Series:
    """The score that orders slides: ``score``, or the top class probability (multiclass)."""
    if "score" in predictions.columns:
        return predictions["score"].astype(float)
    cols = class_score_columns(predictions)
    return predictions[cols].max(axis=1).astype(float)


def select_slides(predictions: pd.DataFrame, n_per_end: int, repeat: int | None = None
                  ) -> list[tuple[str, pd.Series]]:
    """``[("top"|"bottom", row)]``: the ``n_per_end`` highest and lowest scored test slides."""
    repeat = int(predictions["repeat"].min()) if repeat is None else repeat
    preds = predictions[predictions["repeat"] == repeat].copy()
    preds["_rank_score"] = slide_ranking_score(preds)
    preds = preds.sort_values("_rank_score", ascending=False, kind="mergesort")
    n = min(n_per_end, len(preds) // 2 if len(preds) > 1 else len(preds))
    top = [("top", row) for _, row in preds.head(n).iterrows()]
    bottom = [("bottom", row) for _, row in preds.iloc[::-1].head(n).iterrows()]
    return top + bottom


def _find_coords(coords_dir: Path | None, slide_id: str) -> Path | None:
    if coords_dir is None:
        return None
    for candidate in (coords_dir / f"{slide_id}.h5", coords_path(coords_dir, slide_id)):
        if candidate.exists():
            return candidate
    return None


def make_heatmaps(run: RunData, features_dir: str | Path, output_dir: str | Path,
                  slides: str | Path | pd.DataFrame | None = None,
                  coords_dir: str | Path | None = None, n_per_end: int = 2,
                  repeat: int | None = None, thumbnail_px: int = 1024,
                  model_factory: ModelFactory | None = None, file_key: str | None = None,
                  ) -> tuple[list[HeatmapOutput], list[str]]:
    """Heatmaps of the top / lowest-scored test slides of one run.

    ``coords_dir`` is the tiling's ``coords`` folder or the tiling root; its
    attrs give the tile size and, when ``slides`` is None, the slide path.
    Files are ``heatmap_<file_key>_<top|bottom>_<slide_id>.png`` (default key:
    ``run.key``).
    Returns the written heatmaps and one reason per slide that was skipped.
    """
    if run.predictions is None:
        return [], [f"{run.run_dir}: no predictions.csv"]
    features_dir = Path(features_dir)
    coords_dir = None if coords_dir is None else Path(coords_dir)
    output_dir = Path(output_dir)
    paths = slide_paths(slides)
    written: list[HeatmapOutput] = []
    skipped: list[str] = []
    models: dict[Path, object] = {}
    key = safe_name(file_key or run.key)
    for rank, row in select_slides(run.predictions, n_per_end, repeat=repeat):
        slide_id = str(row["slide_id"])
        r, k = int(row["repeat"]), int(row["outer_fold"])
        where = f"{run.head} / {slide_id}"
        try:
            model_path = run.model_path(r, k)
            if not model_path.exists():
                skipped.append(f"{where}: no model file {model_path}")
                continue
            feat_path = features_path(features_dir, slide_id)
            if not feat_path.exists():
                skipped.append(f"{where}: no feature file {feat_path}")
                continue
            coords_file = _find_coords(coords_dir, slide_id)
            coords_attrs = read_coords(coords_file).attrs if coords_file else {}
            if slide_id in paths:
                slide_path, mpp = paths[slide_id]
            elif coords_attrs.get("slide_path"):
                slide_path, mpp = Path(str(coords_attrs["slide_path"])), float("nan")
            else:
                skipped.append(f"{where}: slide path unknown (give slides= or coords_dir=)")
                continue
            if model_path not in models:
                models[model_path] = load_fold_model(model_path, factory=model_factory)
            bag = read_slide_bag(feat_path)
            scores = compute_tile_scores(models[model_path], bag.features)
            tile_px = tile_size_level0_px(bag.coords_level0, coords_attrs, bag.attrs)
            thumb, dims = read_thumbnail(slide_path, max_px=thumbnail_px, mpp=mpp)
        except (WsiMilError, OSError, RuntimeError) as err:  # recorded, not hidden
            logger.warning("report: heatmap {} skipped: {}", where, err)
            skipped.append(f"{where}: {type(err).__name__}: {err}")
            continue
        slide_score = float(slide_ranking_score(row.to_frame().T).iloc[0])
        target = _target_text(row, run)
        title = (f"{run.label}: {slide_id} ({rank}-scored, score {slide_score:.3g}{target}; "
                 f"model r{r}_f{k})")
        fig = plot_heatmap(thumb, bag.coords_level0, tile_px, scores, dims, title=title)
        out = save_figure(fig, output_dir / f"heatmap_{key}_{rank}_{safe_name(slide_id)}.png")
        logger.info("report: heatmap {} -> {}", where, out)
        written.append(HeatmapOutput(run.head, slide_id, rank, slide_score, r, k, out))
    return written, skipped


def _target_text(row: pd.Series, run: RunData) -> str:
    if run.task_kind == TASK_SURVIVAL:
        return f", time {float(row['time']):.3g}, event {int(row['event'])}"
    return f", target {int(row['target'])}" if "target" in row.index else ""
