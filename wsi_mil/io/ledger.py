"""Per-slide status ledger of a pipeline stage (``status.csv``).

One row per slide: ``slide_id, status, reason, seconds, updated``. Status is
``done`` (output written), ``skipped`` (output already there on a rerun) or
``failed`` (reason recorded, batch went on). Rewritten atomically after every
slide, so a killed run keeps the rows of every finished slide.
"""
from __future__ import annotations

import csv
import io
import time
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
    """Reads, updates and atomically rewrites ``<folder>/status.csv``."""

    def __init__(self, folder: str | Path, name: str = LEDGER_NAME) -> None:
        self.path = Path(folder) / name
        self.rows: dict[str, LedgerRow] = {}
        if self.path.exists():
            with open(self.path, newline="") as f:
                for rec in csv.DictReader(f):
                    self.rows[rec["slide_id"]] = LedgerRow(
                        slide_id=rec["slide_id"],
                        status=rec["status"],
                        reason=rec.get("reason", "") or "",
                        seconds=float(rec.get("seconds") or 0.0),
                        updated=rec.get("updated", "") or "",
                    )

    def status(self, slide_id: str) -> str | None:
        row = self.rows.get(slide_id)
        return None if row is None else row.status

    def is_done(self, slide_id: str) -> bool:
        return self.status(slide_id) in ("done", "skipped")

    def record(self, slide_id: str, status: str, reason: str = "", seconds: float = 0.0,
               flush: bool = True) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        reason = " ".join(str(reason).split())  # one line per slide
        self.rows[slide_id] = LedgerRow(
            slide_id, status, reason, round(float(seconds), 3),
            time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        if flush:
            self.flush()

    def merge(self, other: StatusLedger) -> None:
        """Take every row of ``other`` (used to merge per-rank ledgers)."""
        self.rows.update(other.rows)

    def flush(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        writer.writeheader()
        for row in sorted(self.rows.values(), key=lambda r: r.slide_id):
            writer.writerow(row.__dict__)
        write_text_atomic(self.path, buf.getvalue())

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for row in self.rows.values():
            out[row.status] += 1
        return out

    def failed(self) -> list[LedgerRow]:
        return [r for r in self.rows.values() if r.status == "failed"]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"StatusLedger({str(self.path)!r}, {self.counts()})"
