"""``wsi-mil extract``: per-slide feature files from coords files and a frozen encoder.

Multi-GPU / multi-node: ``torchrun --nproc_per_node=K -m wsi_mil.cli.main extract ...``
shards the slides across ranks (see :mod:`wsi_mil.pipeline.distributed`).
"""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run


def run(cfg: DictConfig) -> int:
    """Extract features for the keys of conf/extract.yaml; 1 if any slide failed."""
    from wsi_mil.pipeline.extract_stage import run_extraction

    world = int(os.environ.get("WORLD_SIZE", "1"))
    command = "extract" if world <= 1 else f"extract.rank{os.environ.get('RANK', '0')}"
    setup_run(cfg, cfg.output_dir, command)
    result = run_extraction(
        slide_table=str(cfg.slides),
        coords_root=str(cfg.coords_dir),
        output_dir=str(cfg.output_dir),
        encoder_name=str(cfg.encoder),
        weights=None if cfg.weights is None else str(cfg.weights),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        device=str(cfg.device),
        precision=None if cfg.precision is None else str(cfg.precision),
        features_dtype=str(cfg.features_dtype),
        layout=str(cfg.layout),
        cohort=str(cfg.cohort),
        overwrite=bool(cfg.overwrite),
        reader_mode=str(cfg.reader_mode),
        resample=str(cfg.resample),
        backend=str(cfg.backend),
        chunk_tiles=None if cfg.chunk_tiles is None else int(cfg.chunk_tiles),
        verify_tiles=int(cfg.get("verify_tiles", 2)),
    )
    return 1 if result.counts.get("failed", 0) else 0


@hydra.main(version_base=None, config_path="../conf", config_name="extract")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
