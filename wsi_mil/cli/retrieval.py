"""``wsi-mil retrieval``: image-text (captions) and image-image retrieval on tile features."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run


def _opt(value):
    return None if value is None else str(value)


def run(cfg: DictConfig) -> int:
    """Run conf/retrieval.yaml; return the exit code."""
    from loguru import logger

    from wsi_mil.errors import ConfigError
    from wsi_mil.evaluation.retrieval_runs import (
        run_image_image_retrieval,
        run_image_text_retrieval,
    )
    from wsi_mil.evaluation.text_side import text_side_from_encoder
    from wsi_mil.io.features import read_tile_meta

    image_image = list(cfg.image_ks) and read_tile_meta(str(cfg.tile_features_dir)).get("labelled", True)
    if cfg.captions is None and not image_image:
        raise ConfigError("nothing to do: give captions=<CSV path,caption[,group]> (image-text) "
                          "and / or labelled tile features with image_ks (image-image)")
    out = setup_run(cfg, cfg.output_dir, "retrieval")
    common = dict(n_bootstrap=int(cfg.n_bootstrap), confidence_level=float(cfg.confidence_level),
                  seed=int(cfg.seed))
    if cfg.captions is not None:
        if cfg.encoder is None:
            raise ConfigError("image-text retrieval needs encoder=<the CLIP-style encoder that "
                              "made the tile features> to embed the captions")
        side = text_side_from_encoder(str(cfg.encoder), _opt(cfg.weights), str(cfg.device),
                                      _opt(cfg.precision))
        run_image_text_retrieval(str(cfg.tile_features_dir), str(cfg.captions), side, out,
                                 ks=[int(k) for k in cfg.text_ks],
                                 allow_mixed_models=bool(cfg.allow_mixed_models), **common)
    if image_image:
        run_image_image_retrieval(str(cfg.tile_features_dir), out, _opt(cfg.gallery_features_dir),
                                  _opt(cfg.groups), bool(cfg.exclude_same_group),
                                  ks=[int(k) for k in cfg.image_ks],
                                  drop_classes=[str(c) for c in cfg.drop_classes], **common)
    else:
        logger.info("image-image retrieval skipped (unlabelled tiles or image_ks=[])")
    logger.info("tables written to {}", out)
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="retrieval")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
