"""``wsi-mil linear-probe``: linear evaluation and few-shot learning on tile features."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run, to_dict


def _opt(value):
    return None if value is None else str(value)


def run(cfg: DictConfig) -> int:
    """Run the probes of conf/linear_probe.yaml and write the tables; return the exit code."""
    import numpy as np
    from loguru import logger

    from wsi_mil.evaluation.few_shot_runs import FewShotData, run_few_shot_files
    from wsi_mil.evaluation.linear_probe import linear_probe_scores_table, run_linear_probe
    from wsi_mil.evaluation.tables import wide_macro_table, write_csv, write_table
    from wsi_mil.evaluation.text_side import ClassText, text_side_from_encoder
    from wsi_mil.evaluation.tile_tasks import load_tile_task

    out = setup_run(cfg, cfg.output_dir, "linear_probe")
    task = load_tile_task(
        str(cfg.features_dir), _opt(cfg.test_features_dir), _opt(cfg.split_csv),
        float(cfg.test_fraction), [str(c) for c in cfg.drop_classes], seed=int(cfg.seeds[0]),
    )
    if cfg.protocol == "reference":
        probe_kwargs = {"n_members": int(cfg.n_members)}
    else:
        probe_kwargs = {"cv": int(cfg.cv_folds)}
    tile_scores: dict = {}
    table = run_linear_probe(
        task.train_x, task.train_y, task.test_x, task.test_y, protocol=str(cfg.protocol),
        portions=[float(p) for p in cfg.portions], seeds=[int(s) for s in cfg.seeds],
        class_names=task.class_names, n_bootstrap=int(cfg.n_bootstrap),
        confidence_level=float(cfg.confidence_level), ci_method=str(cfg.ci_method),
        probe_kwargs=probe_kwargs, tile_scores=tile_scores,
    )
    write_table(table, out / "linear_probe")
    write_csv(linear_probe_scores_table(tile_scores, task.test_ids, task.test_y, task.class_names),
              out / "linear_probe_tile_scores.csv")
    macro = wide_macro_table(table, ["protocol", "portion", "seed", "n_train"])
    write_table(macro, out / "linear_probe_macro")
    logger.info("linear probe (macro):\n{}", macro.to_string(index=False))

    fs = cfg.few_shot
    if fs.ks:  # the tile k-shot of `wsi-mil few-shot`, on this command's split
        methods = [str(m) for m in fs.methods]
        text = projection = None
        if {"text_init", "zero_shot"} & set(methods):
            if cfg.text.encoder is None:
                from wsi_mil.errors import ConfigError

                raise ConfigError(f"few_shot.methods {methods} need text.encoder (a CLIP-style encoder)")
            side = text_side_from_encoder(str(cfg.text.encoder), _opt(cfg.text.weights),
                                          str(cfg.text.device))
            text = ClassText(side, to_dict(cfg.text.class_prompts),
                             [str(t) for t in cfg.text.templates], bool(cfg.text.labels_as_prompts))
            if cfg.text.image_projection is not None:
                projection = np.load(str(cfg.text.image_projection))
        data = FewShotData(task.train_x, task.train_y, task.train_keys, task.test_x, task.test_y,
                           task.test_keys, task.test_ids, task.class_names, task.provenance)
        run_few_shot_files(
            data, out, aligned_text=text, ks=[int(k) for k in fs.ks],
            seeds=[int(s) for s in fs.seeds], methods=methods, metric=str(fs.metric),
            head_kwargs={"epochs": int(fs.epochs), "lr": float(fs.lr)},
            head_logit_scale=None if fs.logit_scale is None else float(fs.logit_scale),
            probe_kwargs={"cv": int(cfg.cv_folds)}, n_bootstrap=int(fs.n_bootstrap),
            confidence_level=float(cfg.confidence_level),
            allow_mixed_models=bool(cfg.text.allow_mixed_models), image_projection=projection,
        )
    logger.info("tables written to {}", out)
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="linear_probe")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
