"""``wsi-mil few-shot``: k-shot classification of tiles or slides over seeds, incl. a CITE-style head."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run, to_dict


def _opt(value):
    return None if value is None else str(value)


def _load(cfg: DictConfig):
    from wsi_mil.errors import ConfigError
    from wsi_mil.evaluation.few_shot_runs import load_slide_pool, load_tile_pool

    tiles, slides = cfg.features_dir is not None, cfg.slide_features_dir is not None
    if tiles == slides:
        raise ConfigError("set exactly one of features_dir (tile dataset) or slide_features_dir "
                          "+ cohort (slide cohort)")
    if tiles:
        return load_tile_pool(str(cfg.features_dir), _opt(cfg.test_features_dir),
                              _opt(cfg.split_csv), float(cfg.test_fraction),
                              [str(c) for c in cfg.drop_classes], _opt(cfg.tile_table),
                              seed=int(cfg.split_seed))
    if cfg.cohort is None:
        raise ConfigError("slide mode (slide_features_dir) needs cohort=<cohort CSV>")
    return load_slide_pool(str(cfg.slide_features_dir), str(cfg.cohort), str(cfg.features_source),
                           str(cfg.label_column), _opt(cfg.split_csv), float(cfg.test_fraction),
                           None if cfg.max_tiles_per_slide is None else int(cfg.max_tiles_per_slide),
                           seed=int(cfg.split_seed))


def run(cfg: DictConfig) -> int:
    """Run conf/few_shot.yaml and write the tables; return the exit code."""
    from wsi_mil.errors import ConfigError
    from wsi_mil.evaluation.few_shot_runs import run_few_shot_files
    from wsi_mil.evaluation.text_side import ClassText, text_side_from_encoder, text_side_from_hf

    methods = [str(m) for m in cfg.methods]
    t = cfg.text
    aligned = cite = None
    if {"text_init", "zero_shot"} & set(methods) or ("cite" in methods and t.hf_model is None):
        if t.encoder is None:
            raise ConfigError(f"methods {methods} need text.encoder (the CLIP-style encoder that "
                              "made the features)" + (" or text.hf_model for cite" if "cite" in methods
                                                      else ""))
        side = text_side_from_encoder(str(t.encoder), _opt(t.weights), str(t.device), _opt(t.precision))
        aligned = ClassText(side, to_dict(t.class_prompts), [str(x) for x in t.templates],
                            bool(t.labels_as_prompts))
    if "cite" in methods:
        side = (text_side_from_hf(str(t.hf_model), str(t.pooling), str(t.device))
                if t.hf_model is not None else aligned.side)
        cite = ClassText(side, to_dict(t.class_prompts), [str(x) for x in t.templates],
                         bool(t.labels_as_prompts))
    out = setup_run(cfg, cfg.output_dir, "few_shot")
    data = _load(cfg)
    run_few_shot_files(
        data, out, aligned_text=aligned, cite_text=cite, sample_by=str(cfg.sample_by),
        ks=[int(k) for k in cfg.ks], seeds=[int(s) for s in cfg.seeds], methods=methods,
        metric=str(cfg.metric), head_kwargs={"epochs": int(cfg.head.epochs), "lr": float(cfg.head.lr)},
        head_logit_scale=None if cfg.head.logit_scale is None else float(cfg.head.logit_scale),
        cite_kwargs={"steps": int(cfg.cite.steps), "batch_size": int(cfg.cite.batch_size),
                     "lr": float(cfg.cite.lr), "weight_decay": float(cfg.cite.weight_decay),
                     "logit_scale": float(cfg.cite.logit_scale),
                     "learn_logit_scale": bool(cfg.cite.learn_logit_scale)},
        probe_kwargs={"cv": int(cfg.cv_folds)}, n_bootstrap=int(cfg.n_bootstrap),
        confidence_level=float(cfg.confidence_level), macro_over=str(cfg.macro_over),
        allow_mixed_models=bool(t.allow_mixed_models), save_tile_scores=bool(cfg.save_tile_scores),
    )
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="few_shot")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
