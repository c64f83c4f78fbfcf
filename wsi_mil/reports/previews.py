"""The tiling previews (``<tiling_root>/previews/<slide_id>.png``) in the report.

The tiling stage draws the kept tiles over each slide's thumbnail; the report
shows a few of them side by side in one figure.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from wsi_mil.io.paths import preview_path
from wsi_mil.reports.figures import new_figure, save_figure


def find_tiling_root(coords_dir: str | Path | None) -> Path | None:
    """The tiling root of a ``coords`` folder (or of a tiling root itself), if it has previews."""
    if coords_dir is None:
        return None
    coords_dir = Path(coords_dir)
    for candidate in (coords_dir, coords_dir.parent):
        if (candidate / "previews").is_dir():
            return candidate
    return None


def list_previews(tiling_root: str | Path, slide_ids: Sequence[str] | None = None
                  ) -> dict[str, Path]:
    """``slide_id -> preview PNG`` of the slides that have one (sorted by slide id)."""
    tiling_root = Path(tiling_root)
    if slide_ids is None:
        folder = tiling_root / "previews"
        found = sorted(folder.glob("*.png")) if folder.is_dir() else []
        return {p.stem: p for p in found if not p.name.startswith(".")}
    paths = {s: preview_path(tiling_root, s) for s in slide_ids}
    return {s: p for s, p in paths.items() if p.exists()}


def plot_previews(previews: dict[str, Path], n_max: int = 4, n_cols: int = 2) -> Figure:
    """Up to ``n_max`` previews in a grid, titled by slide id."""
    items = list(previews.items())[:n_max]
    if not items:
        raise ValueError("no preview to show")
    n_cols = min(n_cols, len(items))
    n_rows = int(np.ceil(len(items) / n_cols))
    fig = new_figure(5.0 * n_cols, 4.2 * n_rows)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (slide_id, path) in zip(axes, items, strict=False):
        with Image.open(path) as image:
            ax.imshow(np.asarray(image.convert("RGB")))
        ax.set_title(slide_id, fontsize=9)
    fig.suptitle("Tiling previews (kept tiles over the thumbnail)", fontsize=10)
    return fig


def make_previews_figure(previews: dict[str, Path], path: str | Path, n_max: int = 4) -> Path:
    """Plot :func:`plot_previews` and write it as a PNG (atomically)."""
    return save_figure(plot_previews(previews, n_max=n_max), path)
