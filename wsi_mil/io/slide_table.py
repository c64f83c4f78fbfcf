"""The slide table: which slides to process, from a file, folder, glob or CSV.

``read_slide_table(spec)`` always returns a DataFrame with columns
``slide_id`` (str, unique), ``path`` (str) and ``mpp`` (float um/px, NaN = read it
from the slide). Missing slide files are *not* an error here: they fail one by one
in the stage ledger, so the rest of the batch still runs.

A folder or glob may hold entries named like slides that are not slide files: a
dangling symbolic link, a link loop, a folder called ``x.svs``. They are not
slides to process, but they are not dropped silently either:
``table.attrs["skipped"]`` maps their slide id to the reason, and the stages
record them as ``skipped`` in their ledger (:func:`odd_entries`).
"""
from __future__ import annotations

import errno
import glob
import os
from pathlib import Path

import pandas as pd

from wsi_mil.errors import ConfigError, FileFormatError

#: File extensions picked up when the spec is a folder (case-insensitive).
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif",
                    ".svslide")
COLUMNS = ("slide_id", "path", "mpp")


def _is_slide_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SLIDE_EXTENSIONS


def why_not_a_slide(path: Path) -> str:
    """Why an entry named like a slide is not a slide file ('' if it is a regular file)."""
    try:
        if path.is_file():
            return ""
    except OSError:
        pass
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"symbolic link loop ({path} -> {os.readlink(path)})"
            return f"dangling symbolic link ({path} -> {os.readlink(path)}: {err.strerror})"
    if path.is_dir():
        return f"{path} is a folder named like a slide file, not a slide"
    return f"{path} is not a regular file"


def odd_entries(paths: list[Path]) -> dict[str, str]:
    """``{slide id: reason}`` of the entries of ``paths`` that are not slide files."""
    return {p.stem: reason for p in sorted(paths) if (reason := why_not_a_slide(p))}


def _from_paths(paths: list[Path]) -> pd.DataFrame:
    paths = sorted(paths)
    return pd.DataFrame({"slide_id": [p.stem for p in paths],
                         "path": [str(p) for p in paths],
                         "mpp": [float("nan")] * len(paths)})


def _from_csv(csv_path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(csv_path, dtype={"slide_id": str, "path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise FileFormatError(f"slide table {csv_path} is not a readable CSV: {err}") from err
    missing = [c for c in ("slide_id", "path") if c not in table.columns]
    if missing:
        raise FileFormatError(f"slide table {csv_path} lacks column(s) {missing}; expected "
                              f"slide_id,path[,mpp], found {list(table.columns)}")
    if table[["slide_id", "path"]].isna().any().any():
        bad = table.index[table[["slide_id", "path"]].isna().any(axis=1)].tolist()
        raise FileFormatError(f"slide table {csv_path}: empty slide_id/path on rows {bad}")
    if "mpp" not in table.columns:
        table["mpp"] = float("nan")
    try:
        table["mpp"] = pd.to_numeric(table["mpp"], errors="raise").astype(float)
    except (ValueError, TypeError) as err:
        raise FileFormatError(f"slide table {csv_path}: `mpp` must be numeric um/px: "
                              f"{err}") from err
    base = csv_path.parent
    table["path"] = [str(p if Path(p).is_absolute() else base / p) for p in table["path"]]
    table["slide_id"] = table["slide_id"].astype(str).str.strip()
    return table[list(COLUMNS)].reset_index(drop=True)


def read_slide_table(spec: str | Path) -> pd.DataFrame:
    """Slides to process from ``spec``: a slide file, a folder (searched recursively for
    ``SLIDE_EXTENSIONS``), a glob pattern, or a CSV with columns ``slide_id,path[,mpp]``
    (relative paths are relative to the CSV's folder).

    Raises :class:`ConfigError` when the spec matches nothing and
    :class:`FileFormatError` for a malformed CSV or duplicate slide ids (listed).
    """
    text = str(spec)
    path = Path(text).expanduser()
    skipped: dict[str, str] = {}
    if path.is_file() and path.suffix.lower() == ".csv":
        table = _from_csv(path)
    elif path.is_file():
        table = _from_paths([path])
    elif path.is_dir():
        named = [p for p in path.rglob("*") if p.suffix.lower() in SLIDE_EXTENSIONS]
        skipped = odd_entries(named)
        table = _from_paths([p for p in named if _is_slide_file(p)])
    elif glob.has_magic(text):
        matched = [Path(p) for p in glob.glob(str(path), recursive=True)]
        skipped = odd_entries([p for p in matched if p.suffix.lower() in SLIDE_EXTENSIONS])
        table = _from_paths([p for p in matched if p.is_file()])
    else:
        raise ConfigError(f"slides={text!r} is neither a file, a folder, a glob nor a CSV")
    if table.empty:
        odd = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
        raise ConfigError(f"slides={text!r} matches no slide (extensions: "
                          f"{', '.join(SLIDE_EXTENSIONS)})" + (f"; not slides: {odd}" if odd else ""))
    dup = table["slide_id"][table["slide_id"].duplicated(keep=False)]
    if len(dup):
        groups = {sid: table.loc[table["slide_id"] == sid, "path"].tolist()
                  for sid in sorted(set(dup))}
        raise FileFormatError(f"duplicate slide ids in {text!r} (slide ids must be unique): "
                              + "; ".join(f"{k}: {v}" for k, v in groups.items()))
    table.attrs["skipped"] = {k: v for k, v in skipped.items()
                              if k not in set(table["slide_id"])}
    return table
