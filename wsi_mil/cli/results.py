"""``wsi-mil results``: one table over all CV runs under ``runs_dir`` (Hydra app)."""
from __future__ import annotations

import sys

import hydra
import pandas as pd
from loguru import logger
from omegaconf import DictConfig

from wsi_mil.cli.common import configure_logging, exit_on_error
from wsi_mil.cv.results import collect_results, write_results


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
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="results")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
