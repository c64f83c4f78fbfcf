"""Shared plumbing of the Hydra entry points: logging sinks, saved config, errors.

Only entry points (``wsi_mil/cli``, ``tools/``) touch Hydra ``DictConfig``;
they convert it to typed arguments before calling library code.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from wsi_mil.errors import WsiMilError
from wsi_mil.io.atomic import write_text_atomic

_SINKS: list[int] = []


def configure_logging(log_file: str | Path | None = None, level: str = "INFO") -> None:
    """Enable wsi_mil's loguru records: stderr (``level``) and optionally a DEBUG log file."""
    logger.enable("wsi_mil")
    for sink_id in _SINKS:
        try:
            logger.remove(sink_id)
        except ValueError:
            pass
    _SINKS.clear()
    try:
        logger.remove(0)  # loguru's default stderr sink
    except ValueError:
        pass
    fmt = "<green>{time:HH:mm:ss}</green> | <level>{level: <7}</level> | {message}"
    # Through tqdm.write so log lines and progress bars do not interleave.
    _SINKS.append(logger.add(lambda msg: tqdm.write(msg, end="", file=sys.stderr),
                             level=level.upper(), format=fmt, colorize=sys.stderr.isatty()))
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        _SINKS.append(
            logger.add(
                str(log_file), level="DEBUG", enqueue=False,
                format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra} | {message}",
            )
        )


def save_config(cfg: DictConfig | dict, folder: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to the outputs (atomically)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    path = Path(folder) / name
    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def setup_run(cfg: DictConfig, out_dir: str | Path, command: str) -> Path:
    """Create ``out_dir``, configure sinks (stderr + ``<out_dir>/<command>.log``), save config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(out_dir / f"{command}.log", level=str(cfg.get("log_level", "INFO")))
    save_config(cfg, out_dir)
    logger.info("wsi-mil {} -> {}", command, out_dir)
    return out_dir


def to_dict(cfg: DictConfig | Any) -> Any:
    """Plain Python containers from a (sub)config."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def exit_on_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`WsiMilError` into a one-line message and exit code 2.

    Put it *under* ``@hydra.main`` so Hydra sees a normal return.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WsiMilError as err:
            logger.error("{}: {}", type(err).__name__, err)
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def load_stage_config(command: str, overrides: DictConfig | dict | None = None) -> DictConfig:
    """The package config of ``command`` (``wsi_mil/conf/<command>.yaml``) merged with overrides,
    without Hydra: config groups of its ``defaults`` list (e.g. ``model: abmil``) are loaded
    from ``wsi_mil/conf/<group>/<option>.yaml``; a string override of a group key picks
    another option (``{"model": "chowder"}``), a mapping is merged over the default option.

    Used by ``tools/`` entry points (whose primary config is the top-level ``conf.yaml``:
    ``run(load_stage_config("cv", cfg.cv))``) and by ``wsi-mil demo``.
    """
    from importlib import resources

    root = resources.files("wsi_mil.conf")
    base = OmegaConf.create(root.joinpath(f"{command}.yaml").read_text())
    overrides = OmegaConf.create({} if overrides is None else to_dict(overrides))
    groups: dict[str, str] = {}
    for entry in base.get("defaults", []):
        if OmegaConf.is_dict(entry):
            for group, option in entry.items():
                if not str(group).startswith("override") and "/" not in str(group):
                    groups[str(group)] = str(option)
    for key in ("defaults", "hydra"):
        if key in base:
            base.pop(key)
    for group, option in groups.items():
        chosen = overrides.get(group)
        if isinstance(chosen, str):
            option = chosen
            overrides.pop(group)
        text = root.joinpath(group, f"{option}.yaml").read_text()
        base[group] = OmegaConf.create(text)
    return OmegaConf.merge(base, overrides)
