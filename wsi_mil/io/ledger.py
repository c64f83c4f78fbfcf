"""Per-slide status ledger of a pipeline stage (``status.csv``).

One row per slide: ``slide_id, status, reason, seconds, updated``. Status is
``done`` (output written), ``skipped`` (output already there on a rerun) or
``failed`` (reason recorded, batch went on). Rewritten atomically after every
slide, so a killed run keeps the rows of every finished slide.

Several processes may share one ledger (two runs on one output folder, torchrun
ranks): :meth:`StatusLedger.flush` holds an exclusive file lock
(``.status.csv.lock``), re-reads the file and writes it back with only this
process's new rows changed, so no other process's row is lost. A ``skipped``
never replaces a ``done`` row: a rerun keeps the slide's tile count and timing.
:meth:`StatusLedger.session_counts` says what this process did.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wsi_mil.io.atomic import write_text_atomic

LEDGER_NAME = "status.csv"
FIELDS = ("slide_id", "status", "reason", "seconds", "updated")
STATUSES = ("done", "skipped", "failed")


@dataclass
class LedgerRow:
    slide_id: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    updated: str = ""


class StatusLedger:
    """Reads, updates and atomically rewrites ``<folder>/status.csv`` (merged under a lock)."""

    def __init__(self, folder: str | Path, name: str = LEDGER_NAME) -> None:
        self.path = Path(folder) / name
        self.rows: dict[str, LedgerRow] = self._read()
        self._dirty: dict[str, LedgerRow] = {}
        self.session: dict[str, str] = {}  # slide_id -> status recorded by this process

    def _read(self) -> dict[str, LedgerRow]:
        rows: dict[str, LedgerRow] = {}
        if not self.path.exists():
            return rows
        with open(self.path, newline="") as f:
            for rec in csv.DictReader(f):
                if not rec.get("slide_id") or rec.get("status") not in STATUSES:
                    continue
                try:
                    seconds = float(rec.get("seconds") or 0.0)
                except ValueError:
                    seconds = 0.0
                rows[rec["slide_id"]] = LedgerRow(
                    slide_id=rec["slide_id"], status=rec["status"],
                    reason=rec.get("reason", "") or "", seconds=seconds,
                    updated=rec.get("updated", "") or "",
                )
        return rows

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(f".{self.path.name}.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def status(self, slide_id: str) -> str | None:
        row = self.rows.get(slide_id)
        return None if row is None else row.status

    def is_done(self, slide_id: str) -> bool:
        return self.status(slide_id) in ("done", "skipped")

    def record(self, slide_id: str, status: str, reason: str = "", seconds: float = 0.0,
               flush: bool = True) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.session[slide_id] = status
        if status == "skipped" and self.status(slide_id) == "done":
            return  # keep the row of the run that made the output (tile count, seconds)
        reason = " ".join(str(reason).split())  # one line per slide
        row = LedgerRow(slide_id, status, reason, round(float(seconds), 3),
                        time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.rows[slide_id] = self._dirty[slide_id] = row
        if flush:
            self.flush()

    def merge(self, other: StatusLedger) -> None:
        """Take every row of ``other`` (used to merge per-rank ledgers)."""
        for row in other.rows.values():
            if not (row.status == "skipped" and self.status(row.slide_id) == "done"):
                self.rows[row.slide_id] = self._dirty[row.slide_id] = row

    def flush(self) -> None:
        """Write this process's new rows into the file, keeping every other row on disk."""
        with self._locked():
            rows = self._read()
            for sid, row in self._dirty.items():
                old = rows.get(sid)
                if not (row.status == "skipped" and old is not None and old.status == "done"):
                    rows[sid] = row
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=FIELDS)
            writer.writeheader()
            for row in sorted(rows.values(), key=lambda r: r.slide_id):
                writer.writerow(row.__dict__)
            write_text_atomic(self.path, buf.getvalue())
        self.rows = rows
        self._dirty.clear()

    def counts(self) -> dict[str, int]:
        """Rows per status in the ledger."""
        out = {s: 0 for s in STATUSES}
        for row in self.rows.values():
            out[row.status] += 1
        return out

    def session_counts(self) -> dict[str, int]:
        """What this process recorded, per status (a rerun's ``skipped`` slides count here
        although their ``done`` rows stay)."""
        out = {s: 0 for s in STATUSES}
        for status in self.session.values():
            out[status] += 1
        return out

    def failed(self) -> list[LedgerRow]:
        return [r for r in self.rows.values() if r.status == "failed"]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"StatusLedger({str(self.path)!r}, {self.counts()})"
