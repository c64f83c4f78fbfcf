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

    from wsi_mil.evaluation.few_shot import run_few_shot
    from wsi_mil.evaluation.linear_probe import run_linear_probe
    from wsi_mil.evaluation.provenance import check_same_model
    from wsi_mil.evaluation.tables import wide_macro_table, write_table
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
    table = run_linear_probe(
        task.train_x, task.train_y, task.test_x, task.test_y, protocol=str(cfg.protocol),
        portions=[float(p) for p in cfg.portions], seeds=[int(s) for s in cfg.seeds],
        class_names=task.class_names, n_bootstrap=int(cfg.n_bootstrap),
        confidence_level=float(cfg.confidence_level), ci_method=str(cfg.ci_method),
        probe_kwargs=probe_kwargs,
    )
    write_table(table, out / "linear_probe")
    macro = wide_macro_table(table, ["protocol", "portion", "seed", "n_train"])
    write_table(macro, out / "linear_probe_macro")
    logger.info("linear probe (macro):\n{}", macro.to_string(index=False))

    fs = cfg.few_shot
    if fs.ks:
        methods = [str(m) for m in fs.methods]
        prototypes = projection = None
        if {"text_init", "zero_shot"} & set(methods):
            if cfg.text.encoder is None:
                from wsi_mil.errors import ConfigError

                raise ConfigError(f"few_shot.methods {methods} need text.encoder (a CLIP-style encoder)")
            side = text_side_from_encoder(str(cfg.text.encoder), _opt(cfg.text.weights),
                                          str(cfg.text.device))
            check_same_model(task.provenance, side.provenance,
                             bool(cfg.text.allow_mixed_models), "few-shot text init")
            text = ClassText(side, to_dict(cfg.text.class_prompts),
                             [str(t) for t in cfg.text.templates],
                             bool(cfg.text.labels_as_prompts))
            prototypes = text.prototypes_for(task.class_names)
            if cfg.text.image_projection is not None:
                projection = np.load(str(cfg.text.image_projection))
        result = run_few_shot(
            task.train_x, task.train_y, task.test_x, task.test_y,
            ks=[int(k) for k in fs.ks], seeds=[int(s) for s in fs.seeds], methods=methods,
            class_names=task.class_names, prototypes=prototypes, image_projection=projection,
            head_kwargs={"epochs": int(fs.epochs), "lr": float(fs.lr),
                         "logit_scale": float(fs.logit_scale)},
            probe_kwargs={"cv": int(cfg.cv_folds)},
            train_ids=task.train_keys, test_ids=task.test_keys,
        )
        write_table(result.per_seed, out / "few_shot")
        write_table(result.summary, out / "few_shot_summary")
        few = result.table(str(fs.metric))
        write_table(few, out / "few_shot_table")
        logger.info("few-shot macro {} (mean, sd over {} seeds):\n{}", fs.metric, len(fs.seeds),
                    few.to_string(index=False))
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
