"""Atomic writes: write to a temporary file in the target folder, then rename.

An interrupted run therefore leaves either the previous file or no file, never
a half-written one. Leftover ``*.tmp`` files are ignored by readers and
overwritten by the next run.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffix (``x.h5`` -> ``.x.<rand>.tmp.h5``)
    so libraries that infer the format from the suffix still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp_path
        _fsync(tmp_path)  # the data is on disk before the name points to it
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_h5_atomic(path: str | Path, fill: Callable[[Any], None]) -> Path:
    """Write an h5 file atomically: ``fill(h5py.File)`` builds it in memory, then plain bytes
    go to disk. A full disk (ENOSPC) or a read-only folder is then an ordinary ``OSError``
    of a Python write, never a half-closed HDF5 file (HDF5 crashed the interpreter at exit)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        fill(f)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
