"""``wsi-mil zero-shot``: zero-shot tile classification or MI-Zero slide classification."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run, to_dict


def run(cfg: DictConfig) -> int:
    """Run conf/zero_shot.yaml (tile mode or slide mode); return the exit code."""
    from wsi_mil.errors import ConfigError
    from wsi_mil.evaluation.text_side import ClassText, text_side_from_encoder
    from wsi_mil.evaluation.zero_shot_runs import run_zero_shot_slides, run_zero_shot_tiles

    tiles, slides = cfg.tile_features_dir is not None, cfg.features_dir is not None
    if tiles == slides:
        raise ConfigError("set exactly one of tile_features_dir (tile mode) or "
                          "features_dir + cohort (slide mode)")
    if slides and cfg.cohort is None:
        raise ConfigError("slide mode (features_dir) needs cohort=<cohort CSV>")
    out = setup_run(cfg, cfg.output_dir, "zero_shot")
    side = text_side_from_encoder(
        str(cfg.encoder), weights=None if cfg.weights is None else str(cfg.weights),
        device=str(cfg.device), precision=None if cfg.precision is None else str(cfg.precision))
    text = ClassText(side, class_prompts=to_dict(cfg.class_prompts),
                     templates=[str(t) for t in cfg.templates],
                     labels_as_prompts=bool(cfg.labels_as_prompts))
    common = dict(output_dir=out,
                  logit_scale=None if cfg.logit_scale is None else float(cfg.logit_scale),
                  n_bootstrap=int(cfg.n_bootstrap), seed=int(cfg.seed),
                  allow_mixed_models=bool(cfg.allow_mixed_models))
    if tiles:
        run_zero_shot_tiles(str(cfg.tile_features_dir), text, drop_classes=list(cfg.drop_classes),
                            image_retrieval_ks=[int(k) for k in cfg.image_retrieval_ks], **common)
    else:
        run_zero_shot_slides(str(cfg.features_dir), str(cfg.cohort), text,
                             features_source=str(cfg.features_source),
                             label_column=str(cfg.label_column), top_ks=list(cfg.top_k), **common)
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="zero_shot")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
