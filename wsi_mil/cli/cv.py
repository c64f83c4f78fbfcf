"""``wsi-mil cv``: nested cross-validation of one MIL head on one cohort (Hydra app).

Keys: see ``wsi_mil/conf/cv.yaml``; heads: ``wsi_mil/conf/model/<name>.yaml``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from loguru import logger
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run, to_dict
from wsi_mil.cv.engine import CVSettings, run_cv
from wsi_mil.cv.settings import apply_protocol
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import read_cohort
from wsi_mil.data.folds import FoldPlan, make_fold_plan, validate_targets
from wsi_mil.errors import StaleOutputError
from wsi_mil.io.feature_sources import list_feature_slides, resolve_source


def _settings(cfg: DictConfig) -> CVSettings:
    grid = {**(to_dict(cfg.grid) or {}), **(to_dict(cfg.model.get("grid")) or {})}
    n_tiles = cfg.n_tiles if cfg.n_tiles is None else int(cfg.n_tiles)
    return CVSettings(
        task=str(cfg.task), model=str(cfg.model.name), hparams=to_dict(cfg.model.get("hparams")) or {},
        grid=grid, mode=str(cfg.mode), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay),
        epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), n_tiles=n_tiles,
        tile_sampling=str(cfg.tile_sampling), seed=int(cfg.seed), engine=str(cfg.get("engine", "batched")),
        n_jobs=int(cfg.n_jobs), feature_dtype=str(cfg.feature_dtype), protocol=str(cfg.get("protocol", "default")),
        standardize=bool(cfg.get("standardize", False)), precision=str(cfg.get("precision", "fp32")),
        selection_tiebreak=str(cfg.get("selection_tiebreak", "loss")),
        backend=str(cfg.backend), device=str(cfg.device), encoder=str(cfg.encoder),
        features_dir=str(cfg.features_dir), cohort_path=str(cfg.cohort), save_models=bool(cfg.save_models),
    )


def run(cfg: DictConfig) -> int:
    """Run one CV from a config with the keys of conf/cv.yaml; return the exit code."""
    run_dir = setup_run(cfg, cfg.run_dir, "cv")
    settings, changed = apply_protocol(_settings(cfg))
    for change in changed:
        logger.info("protocol={}: {}", settings.protocol, change)
    cohort = read_cohort(cfg.cohort, settings.task, str(cfg.label_column),
                         name=None if cfg.cohort_name is None else str(cfg.cohort_name),
                         allow_many_classes=bool(cfg.get("allow_many_classes", False)))
    logger.info("{}", cohort)
    source = resolve_source(cfg.features_dir, str(cfg.feature_source))
    cohort.check_features(list_feature_slides(cfg.features_dir, source))
    n_inner = int(cfg.inner_folds) if settings.mode == "nested" else 0
    wanted = (int(cfg.outer_folds), n_inner, int(cfg.repeats), settings.seed, str(cfg.group_by))
    plan_file = Path(cfg.fold_plan) if cfg.fold_plan else run_dir / "fold_plan.json"
    if plan_file.exists():
        plan = FoldPlan.load(plan_file)
        found = (plan.n_outer, plan.n_inner, plan.n_repeats, plan.seed, plan.group_by)
        if not cfg.fold_plan and found != wanted:
            raise StaleOutputError(
                f"{plan_file} has (outer, inner, repeats, seed, group_by)={found} but the config asks "
                f"{wanted}; use another output_dir / run_dir, or pass fold_plan=<file> to reuse it"
            )
        logger.info("reusing fold plan {}", plan_file)
    else:
        plan = make_fold_plan(cohort, *wanted[:3], seed=settings.seed, group_by=wanted[4])
    plan.validate(cohort)
    validate_targets(cohort, plan)  # events / classes in every fold, before any training
    memmap = None
    if settings.engine == "loop" and settings.n_jobs > 1 and settings.backend == "loky":
        memmap = run_dir / ".features_cache.npy"
    store = BagStore.from_dir(cfg.features_dir, cohort.slide_ids, source, settings.feature_dtype,
                              memmap_path=memmap)
    try:
        result = run_cv(cohort, store, plan, settings, run_dir)
    finally:
        del store
        if memmap is not None:
            memmap.unlink(missing_ok=True)
    if cfg.get("report", True):
        from wsi_mil.reports import make_report

        make_report(run_dir, features_dir=str(cfg.features_dir), slides=cfg.get("slides"),
                    coords_dir=cfg.get("coords_dir"), n_heatmaps=int(cfg.get("n_heatmaps", 2)))
    s = result.summary
    if s["n_folds"] < s["n_folds_total"]:
        logger.error("{} is defined on only {} of {} outer folds (the others' test slides do not allow it, "
                     "e.g. one class only or no comparable pair): the headline {:.4f} is not a CV estimate; "
                     "use fewer outer folds or group differently. Details: {}", s["metric"], s["n_folds"],
                     s["n_folds_total"], s["mean"], run_dir / "folds.csv")
        return 1
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="cv")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
