"""Shared plumbing of the Hydra entry points: logging sinks, saved config, errors.

Only entry points (``wsi_mil/cli``, ``tools/``) touch Hydra ``DictConfig``;
they convert it to typed arguments before calling library code.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from wsi_mil.errors import ConfigError, WsiMilError
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


#: errno -> (exit code, what to say, the fix). 2 = fix the command or the folders, 1 = the run failed.
_OS_ERRORS = {
    errno.ENOSPC: (1, "disk full while writing {f}", "free some space or choose another output_dir"),
    errno.EDQUOT: (1, "disk quota exceeded while writing {f}", "free some space or choose "
                   "another output_dir"),
    errno.EFBIG: (1, "file too large (file size limit) while writing {f}", "raise the limit "
                  "(ulimit -f) or choose another output_dir"),
    errno.EACCES: (2, "permission denied: {f}", "choose a folder you can write to (or fix its "
                   "permissions)"),
    errno.EPERM: (2, "operation not permitted: {f}", "choose a folder you can write to (or fix "
                  "its permissions)"),
    errno.EROFS: (2, "read-only file system: {f}", "choose an output_dir on a writable disk"),
    errno.ENOTDIR: (2, "a path component of {f} is a file, not a folder", "choose another "
                    "output_dir or move that file away"),
    errno.EEXIST: (2, "{f} exists and is not a folder", "choose another output_dir or move that "
                   "file away"),
    errno.EISDIR: (2, "{f} is a folder where a file is expected", "give the path of a file"),
    errno.ENOENT: (2, "no such file or folder: {f}", "check the path"),
}


def describe_error(err: BaseException) -> tuple[int, str]:
    """(exit code, one-line message naming the file and the fix) for an error at an entry point.

    2: usage (bad config value, missing key, unwritable / not-a-folder output, missing file);
    1: the run failed (disk full, unexpected error).
    """
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if isinstance(err, WsiMilError):
        return 2, f"{type(err).__name__}: {err}"
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", None) or str(err).split(":")[-1].strip()
        return 2, f"missing mandatory key {key!r}: give {key}=<value> on the command line"
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return 2, f"config error{f' in key {key!r}' if key else ''}: {first}"
    first = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, OSError):
        if err.filename is None:  # e.g. from a C library: its message is all there is
            return 1, f"{type(err).__name__}: {first}; check the files and the disk"
        where = str(err.filename)
        if err.filename2 is not None:
            where = f"{err.filename} -> {err.filename2}"
        code, what, fix = _OS_ERRORS.get(err.errno, (1, "{f}: " + (err.strerror or first),
                                                     "check the file and the disk"))
        return code, f"{type(err).__name__}: {what.replace('{f}', where)}; {fix}"
    return 1, (f"unexpected {type(err).__name__}: {first} (a bug? the traceback is in the "
               f"command's log file; set {TRACEBACK_ENV}=1 to print it)")


TRACEBACK_ENV = "WSI_MIL_TRACEBACK"


def check_config(cfg: DictConfig, defaults: DictConfig | None = None) -> None:
    """Before any work: :class:`ConfigError` for missing mandatory keys (``???``) and for values
    whose type does not match the package default (``target_mpp=abc``, ``epochs=null``)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"missing mandatory key(s) {keys}: give "
                          + " ".join(f"{k}=<value>" for k in missing) + " on the command line")
    if defaults is not None:
        _check_types(cfg, defaults, "")


def _check_types(cfg: Any, defaults: Any, prefix: str) -> None:
    """Values whose package default is a number must convert to one, and a boolean's must be
    true or false (null is allowed: several keys take null for "all" / "auto"). Config groups
    (``model``) are not checked."""
    have = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    want = (OmegaConf.to_container(defaults, resolve=False) if OmegaConf.is_config(defaults)
            else defaults)
    for key, default in want.items():
        if key in _GROUPS or key not in have:
            continue
        value, name = have[key], f"{prefix}{key}"
        if isinstance(default, dict) and isinstance(value, dict):
            _check_types(value, default, f"{name}.")
            continue
        if value is None or (isinstance(value, str) and value.startswith("${")):
            continue  # null, or an interpolation: checked where it points
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} is not true or false (default {str(default).lower()}): "
                                  f"give {name}=true or {name}=false")
            continue
        if not isinstance(default, (int, float)):
            continue
        kind = "an integer" if isinstance(default, int) else "a number"
        try:
            if isinstance(value, (bool, list, dict)):
                raise TypeError
            int(value) if isinstance(default, int) else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} is not {kind} (default {default}): give e.g. "
                              f"{name}={default}") from None


_GROUPS = ("model", "hydra", "defaults")


def _package_defaults(cfg: DictConfig) -> DictConfig | None:
    """The package config the running Hydra app was made from (None outside a package app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().job.config_name
    except (ImportError, ValueError):  # not under hydra.main
        return None
    from importlib import resources

    if not name or not resources.files("wsi_mil.conf").joinpath(f"{name}.yaml").is_file():
        return None
    return load_stage_config(name, check=False)


def exit_on_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """Entry-point errors as one line on stderr and an exit code, never a raw traceback.

    Checks the config first (missing mandatory keys, value types against the package
    defaults), then turns :class:`WsiMilError`, OS errors (permission, disk full, not a
    folder), config errors and anything unexpected into one line (:func:`describe_error`):
    exit code 2 (usage) or 1 (the run failed). The traceback goes to the log file (and to
    stderr with ``WSI_MIL_TRACEBACK=1``). Put it *under* ``@hydra.main`` so Hydra sees a
    normal return.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            cfg = args[0] if args else None
            defaults = _package_defaults(cfg) if isinstance(cfg, DictConfig) else None
            if defaults is not None:  # a package app (tools/ check their stage section later)
                check_config(cfg, defaults)
            return func(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - the entry point's last word
            code, message = describe_error(err)
            # to the log file (DEBUG) with its traceback; stderr gets the one line below
            logger.opt(exception=err).debug("error: {}", message)
            if os.environ.get(TRACEBACK_ENV):
                traceback.print_exc()
            print(f"error: {message}", file=sys.stderr)
            sys.exit(code)

    return wrapper


def load_stage_config(command: str, overrides: DictConfig | dict | None = None,
                      check: bool = True) -> DictConfig:
    """The package config of ``command`` (``wsi_mil/conf/<command>.yaml``) merged with overrides,
    without Hydra: config groups of its ``defaults`` list (e.g. ``model: abmil``) are loaded
    from ``wsi_mil/conf/<group>/<option>.yaml``; a string override of a group key picks
    another option (``{"model": "chowder"}``), a mapping is merged over the default option.

    Used by ``tools/`` entry points (whose primary config is the top-level ``conf.yaml``:
    ``run(load_stage_config("cv", cfg.cv))``) and by ``wsi-mil demo``. ``check``: value
    types of the overrides are checked against the package defaults (:func:`check_config`).
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
    merged = OmegaConf.merge(base, overrides)
    if check:
        _check_types(merged, base, "")
    return merged
