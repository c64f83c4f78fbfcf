"""Per-slide lock files: two processes on one output folder never work on the same slide.

``<folder>/.locks/<slide_id>.lock`` is created with ``O_CREAT | O_EXCL`` (atomic,
also on NFS v3+) and holds ``{"host", "pid", "token", "started"}`` of the process
that owns it. A lock is *stale*, and may be taken over, when its owner is a dead
process of this host, or when it was not refreshed (:meth:`SlideLocks.touch`, on
every encoded batch) for ``stale_after_s`` seconds (an owner on another host
cannot be asked), or when it is unreadable and older than a minute (its creator
died between creating and writing it). A takeover renames the stale file away
first, so of two processes breaking one stale lock only one wins.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from wsi_mil.io.atomic import pid_alive
from wsi_mil.io.paths import safe_name

LOCK_DIR = ".locks"
STALE_AFTER_S = 2 * 3600.0
UNREADABLE_GRACE_S = 60.0
TOUCH_EVERY_S = 30.0


class SlideLocks:
    """Lock files of one output folder, owned by this process (picklable, no open handles)."""

    def __init__(self, folder: str | Path, stale_after_s: float = STALE_AFTER_S) -> None:
        self.folder = Path(folder) / LOCK_DIR
        self.stale_after_s = float(stale_after_s)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "token": uuid.uuid4().hex}
        self.held: set[str] = set()
        self._touched: dict[str, float] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{safe_name(key)}.lock"

    def _read(self, path: Path) -> dict | None:
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _age_s(self, path: Path) -> float:
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def is_stale(self, path: Path, holder: dict | None) -> bool:
        age = self._age_s(path)
        if holder is None:
            return age > UNREADABLE_GRACE_S
        if age > self.stale_after_s:
            return True
        if holder.get("host") == self.owner["host"]:
            return not pid_alive(int(holder.get("pid", -1)))
        return False

    @staticmethod
    def describe(holder: dict | None) -> str:
        if holder is None:
            return "a process that is still creating its lock"
        return (f"pid {holder.get('pid')} on {holder.get('host')} (since "
                f"{holder.get('started', '?')})")

    def holder(self, key: str) -> str | None:
        """Who else holds ``key`` right now (None: free, stale or ours)."""
        path = self.path(key)
        if not path.exists():
            return None
        holder = self._read(path)
        if holder is not None and holder.get("token") == self.owner["token"]:
            return None
        return None if self.is_stale(path, holder) else self.describe(holder)

    def acquire(self, key: str) -> str | None:
        """Take the lock of ``key``: None when this process holds it now, else who holds it."""
        if key in self.held:
            return None
        path = self.path(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read(path)
                if holder is not None and holder.get("token") == self.owner["token"]:
                    self.held.add(key)
                    return None
                if not self.is_stale(path, holder):
                    return self.describe(holder)
                self._break(path, holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.owner, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
            self.held.add(key)
            self._touched[key] = time.monotonic()
            return None
        return self.describe(self._read(path))

    def _break(self, path: Path, holder: dict | None) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile."""
        aside = path.with_name(f"{path.name}.stale.{self.owner['token']}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        taken = self._read(aside)
        if holder is not None and taken is not None and taken.get("token") != holder.get("token"):
            try:  # we moved someone's fresh lock: put it back (fails if a third took the name)
                os.link(aside, path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove the stale locks of the folder (e.g. of a killed run whose slide was finished
        before it died, so nobody would claim that lock again); returns how many."""
        n = 0
        for path in self.folder.glob("*.lock") if self.folder.is_dir() else ():
            holder = self._read(path)
            mine = holder is not None and holder.get("token") == self.owner["token"]
            if not mine and self.is_stale(path, holder):
                self._break(path, holder)
                n += 1
        return n

    def touch(self, key: str) -> None:
        """Show the owner is alive (at most every TOUCH_EVERY_S seconds)."""
        now = time.monotonic()
        if key in self.held and now - self._touched.get(key, 0.0) > TOUCH_EVERY_S:
            self._touched[key] = now
            try:
                os.utime(self.path(key))
            except FileNotFoundError:
                pass

    def release(self, key: str) -> None:
        if key not in self.held:
            return
        self.held.discard(key)
        path = self.path(key)
        holder = self._read(path)
        if holder is not None and holder.get("token") == self.owner["token"]:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def __repr__(self) -> str:
        return f"SlideLocks({str(self.folder)!r}, held={len(self.held)})"
