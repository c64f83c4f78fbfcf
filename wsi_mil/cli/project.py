"""Entry points of ``tools/``: the reference's script paths, driven by the top-level ``conf.yaml``.

``python tools/extract_features/extract_slide_features.py extract.encoder=uni`` reads the
``extract:`` section of ``conf.yaml`` (your paths), merges it over the package defaults of
the stage (``wsi_mil/conf/extract.yaml``) and runs the same ``run(cfg)`` as
``wsi-mil extract``. Overrides address the section: ``cv.model=chowder``.
"""
from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from wsi_mil.cli.common import exit_on_error, load_stage_config

# stage -> (cli module, conf.yaml section)
STAGES = {
    "tile": ("wsi_mil.cli.tile", "tile"),
    "extract": ("wsi_mil.cli.extract", "extract"),
    "extract_tiles": ("wsi_mil.cli.extract_tiles", "extract_tiles"),
    "cv": ("wsi_mil.cli.cv", "cv"),
    "results": ("wsi_mil.cli.results", "results"),
    "linear_probe": ("wsi_mil.cli.linear_probe", "linear_probe"),
}


def find_project_config(start: str | Path) -> Path:
    """The folder holding ``conf.yaml``: ``$WSI_MIL_CONF_DIR``, else the first parent of ``start``."""
    if os.environ.get("WSI_MIL_CONF_DIR"):
        return Path(os.environ["WSI_MIL_CONF_DIR"]).resolve()
    for folder in Path(start).resolve().parents:
        if (folder / "conf.yaml").exists():
            return folder
    return Path.cwd()


def _isolated_config_dir(conf_file: Path) -> Path:
    """A private folder holding only a link to ``conf_file``, removed at exit.

    Hydra scans its whole config folder (``--help`` lists config groups), and the
    project root may hold a virtual environment of several GB. The folder is made
    for this run by ``tempfile.mkdtemp`` (mode 0700, unpredictable name): no other
    user can plant a config there, as they could at a fixed shared path.
    """
    folder = Path(tempfile.mkdtemp(prefix="wsi_mil_conf_"))
    (folder / "conf.yaml").symlink_to(Path(conf_file).resolve())
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def project_main(stage: str, script: str | None = None) -> None:
    """Run ``stage`` from the ``<stage>:`` section of the project ``conf.yaml``."""
    module_name, section = STAGES[stage]
    config_dir = _isolated_config_dir(find_project_config(script or sys.argv[0]) / "conf.yaml")

    @hydra.main(version_base=None, config_path=str(config_dir), config_name="conf")
    @exit_on_error
    def _main(cfg: DictConfig) -> None:
        stage_cfg = load_stage_config(stage, cfg.get(section) or OmegaConf.create({}))
        code = importlib.import_module(module_name).run(stage_cfg)
        if code:
            sys.exit(code)

    _main()
