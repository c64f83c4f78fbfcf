"""``wsi-mil tile``: tissue detection + DeepZoom tile coordinates for a folder of slides."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run, to_dict
from wsi_mil.io.slide_table import read_slide_table
from wsi_mil.pipeline.tile_stage import run_tiling
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tissue import TissueParams


def make_params(cfg: DictConfig) -> TilingParams:
    """Typed tiling parameters from the ``tile`` config."""
    return TilingParams(
        target_mpp=float(cfg.target_mpp), tile_size=int(cfg.tile_size),
        mpp_tolerance=float(cfg.mpp_tolerance), min_tissue=float(cfg.min_tissue),
        full_tiles_only=bool(cfg.full_tiles_only), tissue=TissueParams(**to_dict(cfg.tissue)),
    )


def run(cfg: DictConfig) -> int:
    """Tile every slide of ``cfg.slides``; return 1 if any slide failed, else 0."""
    params = make_params(cfg)
    table = read_slide_table(str(cfg.slides))
    out = setup_run(cfg, Path(cfg.output_dir) / params.name, "tile")
    ledger = run_tiling(
        table, cfg.output_dir, params, overwrite=bool(cfg.overwrite),
        write_reference=bool(cfg.write_reference), previews=bool(cfg.previews),
        mpp_override=None if cfg.mpp is None else float(cfg.mpp), backend=str(cfg.backend),
        preview_px=int(cfg.preview_px),
    )
    counts = ledger.session_counts()  # what this run did (a rerun keeps the "done" rows)
    print(f"tiled {len(table)} slide(s) -> {out}: {counts['done']} done, "
          f"{counts['skipped']} skipped, {counts['failed']} failed", file=sys.stderr)
    for row in ledger.failed():
        if ledger.session.get(row.slide_id) == "failed":
            print(f"  FAILED {row.slide_id}: {row.reason}", file=sys.stderr)
    return 1 if counts["failed"] else 0


@hydra.main(version_base=None, config_path="../conf", config_name="tile")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)
