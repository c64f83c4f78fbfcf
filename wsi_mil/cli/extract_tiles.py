"""``wsi-mil extract-tiles``: features of a tile-level dataset (NCT-CRC-HE-100K layout or CSV)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run


def run(cfg: DictConfig) -> int:
    """Encode the dataset of conf/extract_tiles.yaml; return the exit code."""
    from wsi_mil.pipeline.extract_tiles_stage import run_tile_extraction

    setup_run(cfg, cfg.output_dir, "extract_tiles")
    run_tile_extraction(
        dataset=str(cfg.dataset),
        output_dir=str(cfg.output_dir),
        encoder_name=str(cfg.encoder),
        weights=None if cfg.weights is None else str(cfg.weights),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.num_workers),
        device=str(cfg.device),
        precision=None if cfg.precision is None else str(cfg.precision),
        features_dtype=str(cfg.features_dtype),
        dataset_name=None if cfg.dataset_name is None else str(cfg.dataset_name),
        overwrite=bool(cfg.overwrite),
    )
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="extract_tiles")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
