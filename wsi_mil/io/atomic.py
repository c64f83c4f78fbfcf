"""Atomic writes: write to a temporary file in the target folder, then rename.

An interrupted run therefore leaves either the previous file or no file, never
a half-written one. The temporary name is fixed per target and process,
``.<name>~<host>-<pid>.tmp<suffix>`` (``<host>``: 8 hex digits of the host name's
hash), so a process rewriting a target reuses it, and :func:`sweep_temp_files`
(called when a stage starts) removes those of dead processes of this host, those
of other hosts after a day, and the random-named ones of older versions after an
hour. Readers ignore names starting with a dot.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+~(?P<host>[0-9a-f]{8})-(?P<pid>\d+)(?:t\d+)?\.tmp(?:\.[^.]+)?$")
_LEGACY_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(?:\.[^.]+)?$")  # tempfile.mkstemp
OTHER_HOST_AGE_S = 24 * 3600.0
LEGACY_AGE_S = 3600.0


def temp_path(path: Path) -> Path:
    """The temporary name of ``path`` for this process (and thread, outside the main one)."""
    who = f"{HOST_TAG}-{os.getpid()}"
    if threading.current_thread() is not threading.main_thread():
        who += f"t{threading.get_native_id()}"
    return path.with_name(f".{path.name}~{who}.tmp{path.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files that interrupted writers left under ``folder``; returns them."""
    removed: list[Path] = []
    now = time.time()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            m = _TEMP.match(name)
            try:
                age = now - path.lstat().st_mtime
            except FileNotFoundError:
                continue
            if m is not None:
                dead = (not pid_alive(int(m["pid"])) if m["host"] == HOST_TAG
                        else age > OTHER_HOST_AGE_S)
            else:
                dead = _LEGACY_TEMP.match(name) is not None and age > LEGACY_AGE_S
            if dead:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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

    The temporary name (:func:`temp_path`) keeps the final suffix (``x.h5`` ->
    ``.x.h5~<host>-<pid>.tmp.h5``) so libraries that infer the format from the
    suffix still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_path(path)
    fd = os.open(tmp_path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield tmp_path
        _fsync(tmp_path)  # the data is on disk before the name points to it
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:  # a write error names no file
            raise type(err)(err.errno, err.strerror or str(err), str(path)) from err
        raise
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
