"""``wsi-mil report run_dir=<dir>``: figures and a markdown / HTML report of CV runs."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wsi_mil.cli.common import exit_on_error, setup_run
from wsi_mil.errors import ConfigError


def _output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    return Path(cfg.run_dir or cfg.runs_dir) / "report"


def run(cfg: DictConfig) -> int:
    """Make the report from a config with the keys of conf/report.yaml; return the exit code."""
    from wsi_mil.reports import make_report

    if bool(cfg.get("run_dir")) == bool(cfg.get("runs_dir")):
        raise ConfigError(
            f"give exactly one of run_dir= (one CV run) or runs_dir= (a folder of runs); "
            f"got run_dir={cfg.get('run_dir')!r}, runs_dir={cfg.get('runs_dir')!r}"
        )
    source = Path(cfg.run_dir or cfg.runs_dir)
    if not source.is_dir():
        raise ConfigError(f"{source} is not a folder")
    out = setup_run(cfg, _output_dir(cfg), "report")
    html_path = make_report(
        source,
        output_dir=out,
        features_dir=cfg.get("features_dir"),
        slides=cfg.get("slides"),
        coords_dir=cfg.get("coords_dir"),
        tiling_root=cfg.get("tiling_root"),
        n_heatmaps=int(cfg.get("n_heatmaps", 2)),
        n_previews=int(cfg.get("n_previews", 4)),
        km_repeat=None if cfg.get("km_repeat") is None else int(cfg.km_repeat),
        title=str(cfg.get("title", "wsi_mil report")),
    )
    print(html_path)
    return 0


@hydra.main(version_base=None, config_path="../conf", config_name="report")
@exit_on_error
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)
