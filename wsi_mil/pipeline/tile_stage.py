"""The tiling stage: every slide of a table -> coords h5 (+ preview, + reference npy).

Resumable and atomic: a slide whose coords file exists with the same parameters is
``skipped``; a coords file made with other parameters is a :class:`StaleOutputError`
for that slide unless ``overwrite``. The coords file is written last, so it marks a
finished slide. A failing slide is recorded with its reason and the batch goes on.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
from loguru import logger
from tqdm import tqdm

from wsi_mil.errors import FileFormatError, StaleOutputError, WsiMilError
from wsi_mil.io.atomic import atomic_path, sweep_temp_files
from wsi_mil.io.coords import read_coords, write_coords, write_reference_coords
from wsi_mil.io.ledger import StatusLedger
from wsi_mil.io.paths import coords_path, preview_path, reference_coords_path
from wsi_mil.slides import SlideReader, open_slide
from wsi_mil.tiling.lowres import read_lowres
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.preview import make_preview
from wsi_mil.tiling.tile import SlideTiling, tile_slide

#: Errors recorded as a plain reason (anything else is recorded with its traceback).
EXPECTED_ERRORS = (WsiMilError, openslide.OpenSlideError, OSError)


@dataclass(frozen=True)
class TilingOutputs:
    """What to write besides the coords: previews (long side ``preview_px``), reference npy."""

    previews: bool = True
    write_reference: bool = False
    preview_px: int = 1024


def _nan_equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check_existing(path: Path, params: TilingParams, mpp_override: float | None) -> None:
    """Raise StaleOutputError if the coords file at ``path`` was made with other params."""
    attrs = read_coords(path).attrs
    want_mpp = float("nan") if mpp_override is None else float(mpp_override)
    have_mpp = float(attrs.get("mpp_override", float("nan")))
    diffs = []
    if attrs.get("tiling_params") != params.to_json():
        diffs.append(f"tiling parameters {attrs.get('tiling_params')} != {params.to_json()}")
    if not _nan_equal(have_mpp, want_mpp):
        diffs.append(f"mpp override {have_mpp} != {want_mpp}")
    if diffs:
        raise StaleOutputError(f"{path} was made with other parameters ({'; '.join(diffs)}); "
                               "pass overwrite=true or choose another output_dir")


def _write_preview(path: Path, reader: SlideReader, tiling: SlideTiling, max_px: int) -> None:
    lowres = tiling.lowres
    w0, h0 = reader.dimensions
    if max(lowres.rgb.shape[:2]) < 0.75 * max_px:  # too coarse: read a finer image
        lowres = read_lowres(reader, reader.mpp * max(w0, h0) / max_px)
    mask = tiling.mask
    if lowres is not tiling.lowres:  # resample the mask onto the preview grid (nearest)
        ys = (((0.5 + np.arange(lowres.rgb.shape[0])) * lowres.downsample_xy[1])
              / tiling.lowres.downsample_xy[1]).astype(int).clip(0, mask.shape[0] - 1)
        xs = (((0.5 + np.arange(lowres.rgb.shape[1])) * lowres.downsample_xy[0])
              / tiling.lowres.downsample_xy[0]).astype(int).clip(0, mask.shape[1] - 1)
        mask = mask[ys[:, None], xs[None, :]]
    image = make_preview(lowres.rgb, mask, tiling.grid, lowres.downsample_xy, max_px)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def tile_one(slide_id: str, slide_path: str, tiling_root: Path, params: TilingParams,
             mpp_override: float | None, outputs: TilingOutputs, overwrite: bool,
             backend: str = "openslide") -> tuple[str, str]:
    """Tile one slide; returns (status, reason) with status ``done`` or ``skipped``."""
    out = coords_path(tiling_root, slide_id)
    if out.exists() and not overwrite:
        try:
            _check_existing(out, params, mpp_override)
            return "skipped", "coords already there with the same parameters"
        except FileFormatError as err:  # unreadable (e.g. truncated by a node crash): redo it
            logger.bind(slide_id=slide_id).warning("{}: recomputing unreadable {}", slide_id, err)
    with open_slide(slide_path, mpp_override=mpp_override, backend=backend) as reader:
        tiling = tile_slide(reader, params, mpp_override)
        if outputs.previews:
            _write_preview(preview_path(tiling_root, slide_id), reader, tiling,
                           outputs.preview_px)
    if outputs.write_reference:
        write_reference_coords(reference_coords_path(tiling_root, slide_id), tiling.grid.coords)
    write_coords(out, tiling.grid.coords, tiling.grid.coords_level0, tiling.attrs)
    grid = tiling.grid
    return "done", f"{len(grid)} tiles at dz level {grid.dz_level} ({grid.dz_mpp:.3f} um/px)"


def record_odd_entries(slide_table: pd.DataFrame, ledger: StatusLedger) -> None:
    """Entries named like slides that are not slide files (dangling links, link loops, folders;
    ``read_slide_table`` lists them) go to the ledger as ``skipped`` with their reason."""
    for slide_id, reason in slide_table.attrs.get("skipped", {}).items():
        logger.warning("{}: skipped: {}", slide_id, reason)
        ledger.record(slide_id, "skipped", f"not a slide: {reason}", flush=False)
    if slide_table.attrs.get("skipped"):
        ledger.flush()


def _mpp_for(row_mpp: object, global_mpp: float | None) -> float | None:
    """The slide table's ``mpp`` wins over the global override; NaN/None = not given."""
    try:
        value = float(row_mpp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    return value if math.isfinite(value) else global_mpp


def run_tiling(slide_table: pd.DataFrame, output_dir: str | Path, params: TilingParams,
               overwrite: bool = False, write_reference: bool = False, previews: bool = True,
               mpp_override: float | None = None, backend: str = "openslide",
               preview_px: int = 1024) -> StatusLedger:
    """Tile every slide of ``slide_table`` (columns slide_id, path[, mpp]) into
    ``<output_dir>/<params.name>/`` and return the status ledger (``status.csv`` there).

    ``mpp_override`` (um/px) applies to slides without an ``mpp`` value in the table.
    """
    root = Path(output_dir) / params.name
    root.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(root)
    ledger = StatusLedger(root)
    outputs = TilingOutputs(previews, write_reference, preview_px)
    record_odd_entries(slide_table, ledger)
    rows = list(slide_table.itertuples(index=False))
    for row in tqdm(rows, desc="tile", unit="slide", dynamic_ncols=True):
        slide_id = str(row.slide_id)
        log = logger.bind(slide_id=slide_id)
        start = time.perf_counter()
        mpp = _mpp_for(getattr(row, "mpp", None), mpp_override)
        try:
            status, reason = tile_one(slide_id, str(row.path), root, params, mpp, outputs,
                                      overwrite, backend)
        except EXPECTED_ERRORS as err:
            status, reason = "failed", f"{type(err).__name__}: {err}"
        except Exception as err:  # record unexpected errors with their origin, go on
            frame = traceback.extract_tb(err.__traceback__)[-1]
            status = "failed"
            reason = (f"unexpected {type(err).__name__}: {err} "
                      f"(at {Path(frame.filename).name}:{frame.lineno} in {frame.name})")
            log.opt(exception=err).error("{}: {}", slide_id, reason)
        seconds = time.perf_counter() - start
        ledger.record(slide_id, status, reason, seconds)
        (log.warning if status == "failed" else log.info)("{} {}: {} ({:.2f}s)", slide_id,
                                                           status, reason, seconds)
    counts = ledger.counts()
    logger.info("tiling finished: {} done, {} skipped, {} failed -> {}", counts["done"],
                counts["skipped"], counts["failed"], root)
    return ledger
