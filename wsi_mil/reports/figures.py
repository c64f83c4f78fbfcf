"""Figure plumbing shared by the report modules: make, save (atomically), encode.

Figures are plain :class:`matplotlib.figure.Figure` objects, never pyplot
figures: they need no GUI backend, leave no global state behind and are freed
when dropped, so a long report run never accumulates open figures.
"""
from __future__ import annotations

import base64
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsi_mil.io.atomic import atomic_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def new_figure(width_in: float = 6.0, height_in: float = 5.0) -> Figure:
    """A pyplot-free figure with an Agg canvas."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically, then release it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    fig.clear()
    return path


def png_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` of a PNG file, for a self-contained HTML page."""
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
