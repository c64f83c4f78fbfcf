"""``wsi-mil demo``: the whole pipeline on a generated cohort, in one command.

Each stage runs through the same ``run(cfg)`` as its own subcommand, with the
package config of that stage (``load_stage_config``), so the demo is exactly
``wsi-mil tile`` -> ``extract`` -> ``cv`` (per head and task) -> ``results`` ->
``report`` on the embedded cohort. A rerun reuses every finished stage.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from loguru import logger
from omegaconf import DictConfig

from wsi_mil.cli import cv, extract, results, tile
from wsi_mil.cli.common import exit_on_error, load_stage_config, setup_run, to_dict
from wsi_mil.errors import WsiMilError
from wsi_mil.io.paths import features_dir, tiling_name


class DemoStageError(WsiMilError):
    """A stage of the demo did not finish cleanly."""


def _check(code: int, stage: str, out: Path) -> None:
    if code:
        raise DemoStageError(f"the {stage} stage failed (exit code {code}); see the logs in {out}")


def cv_configs(cfg: DictConfig, cohort_csv: str | Path, feats: str | Path, output_dir: str | Path,
               **changes: Any) -> list[tuple[str, str, DictConfig]]:
    """``(task name, head, cv stage config)`` of every nested CV the demo runs.

    ``changes`` override keys of every config (``dev_tools/demo_stability.py``
    reruns them with other ``seed`` and ``standardize`` values).
    """
    common = dict(
        cohort=str(cohort_csv), features_dir=str(feats), output_dir=str(output_dir),
        encoder=str(cfg.encoder), outer_folds=int(cfg.outer_folds),
        inner_folds=int(cfg.inner_folds), repeats=int(cfg.repeats), epochs=int(cfg.epochs),
        grid=to_dict(cfg.grid), batch_size=int(cfg.batch_size), n_tiles=int(cfg.n_tiles),
        standardize=bool(cfg.standardize),
        n_jobs=int(cfg.n_jobs), seed=int(cfg.seed), cohort_name="demo", log_level=cfg.log_level,
        report=False,  # one combined report at the end
    )
    common.update(changes)
    jobs = [("classification", "tumor", str(h)) for h in cfg.classification_heads]
    jobs += [("survival", "survival", str(h)) for h in cfg.survival_heads]
    return [(task_name, head, load_stage_config("cv", dict(common, task=task, task_name=task_name, model=head)))
            for task, task_name, head in jobs]


def run(cfg: DictConfig) -> int:
    from wsi_mil.reports import make_report
    from wsi_mil.testing.demo_cohort import write_demo_cohort

    out = Path(str(cfg.output_dir)).resolve()
    setup_run(cfg, out, "demo")
    timings: dict[str, float] = {}
    start = t = time.perf_counter()

    cohort = write_demo_cohort(out / "cohort", n_slides=int(cfg.n_slides),
                               n_patients=int(cfg.n_patients), width=int(cfg.slide_width),
                               height=int(cfg.slide_height), seed=int(cfg.seed))
    timings["cohort"], t = time.perf_counter() - t, time.perf_counter()

    tiling = tiling_name(float(cfg.target_mpp), int(cfg.tile_size))
    _check(tile.run(load_stage_config("tile", dict(
        slides=str(cohort.slides_csv), output_dir=str(out / "tiles"),
        target_mpp=float(cfg.target_mpp), tile_size=int(cfg.tile_size),
        log_level=cfg.log_level))), "tile", out / "tiles")
    timings["tile"], t = time.perf_counter() - t, time.perf_counter()

    tiling_root = out / "tiles" / tiling
    _check(extract.run(load_stage_config("extract", dict(
        slides=str(cohort.slides_csv), coords_dir=str(tiling_root),
        output_dir=str(out / "features"), encoder=str(cfg.encoder), weights=cfg.weights,
        num_workers=int(cfg.num_workers), device="cpu", log_level=cfg.log_level))),
        "extract", out / "features")
    timings["extract"], t = time.perf_counter() - t, time.perf_counter()

    feats = features_dir(out / "features", str(cfg.encoder), tiling)
    for task_name, head, cv_cfg in cv_configs(cfg, cohort.cohort_csv, feats, out / "runs"):
        logger.info("demo: cv {} / {}", task_name, head)
        _check(cv.run(cv_cfg), f"cv {head}", out / "runs")
    timings["cv"], t = time.perf_counter() - t, time.perf_counter()

    _check(results.run(load_stage_config("results", dict(
        runs_dir=str(out / "runs"), log_level=cfg.log_level))), "results", out / "runs")
    report = make_report(out / "runs", output_dir=out / "report",
                         slides=str(cohort.slides_csv), coords_dir=tiling_root / "coords",
                         n_heatmaps=int(cfg.n_heatmaps))
    timings["report"] = time.perf_counter() - t
    total = time.perf_counter() - start
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    logger.info("demo finished in {:.0f} s ({})", total, steps)
    print(f"\nresults table: {out / 'runs' / 'results.md'}\nreport: {report}\n"
          f"total {total:.0f} s ({steps})")
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="demo")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
