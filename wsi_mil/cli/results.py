"""``wsi-mil results``: one table over all CV runs under ``runs_dir`` (Hydra app);
with ``compare=<column>``, paired tests of the runs that differ only in that column."""
from __future__ import annotations

import sys

import hydra
import pandas as pd
from loguru import logger
from omegaconf import DictConfig

from wsi_mil.cli.common import configure_logging, exit_on_error
from wsi_mil.cv.compare import plot_comparison
from wsi_mil.cv.results import collect_results, compare_results, comparison_tables, write_results


def run(cfg: DictConfig) -> int:
    """Collect, save (CSV + markdown) and print the results table; 1 if no run was found."""
    configure_logging(level=str(cfg.get("log_level", "INFO")))
    df = collect_results(cfg.runs_dir)
    if df.empty:
        logger.error("no summary.json under {}", cfg.runs_dir)
        return 1
    csv, md = write_results(df, cfg.output)
    shown = df.drop(columns=["run_path", "other_hparams"])
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.precision", 3):
        print(shown.to_string(index=False))
    logger.info("{} runs -> {} and {}", len(df), csv, md)
    if cfg.get("compare"):
        _compare(df, str(cfg.compare), str(cfg.output), int(cfg.get("n_boot", 2000)))
    return 0


def _compare(df: pd.DataFrame, column: str, output: str, n_boot: int) -> None:
    results = compare_results(df, column, n_boot=n_boot)
    if not results:
        logger.warning("compare={}: no two runs differ only in {}; nothing to compare", column, column)
        return
    runs, pairs = comparison_tables(results, column)
    stem = f"{output}_compare_{column}"
    write_results(runs, f"{stem}_runs")
    write_results(pairs, f"{stem}_pairs")
    for i, (group, comp) in enumerate(results):
        title = ", ".join(f"{k}={v}" for k, v in group.items() if k in ("task", "cohort", "encoder", "head"))
        plot_comparison(comp, f"{stem}_{i}.png", title=title)
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.precision", 3):
        print(runs.drop(columns=["run_path"]).to_string(index=False))
        print(pairs.to_string(index=False))
    logger.info("compare={}: {} group(s) -> {}_runs/_pairs .csv/.md, {}_<i>.png", column, len(results), stem, stem)


@hydra.main(version_base=None, config_path="../conf", config_name="results")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
