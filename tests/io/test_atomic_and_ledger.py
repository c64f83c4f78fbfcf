"""Atomic writes and the per-slide status ledger."""
import pytest

from wsi_mil.io.atomic import atomic_path, write_json_atomic
from wsi_mil.io.ledger import StatusLedger


def test_atomic_path_leaves_previous_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.h5"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".h5" and tmp.parent == tmp_path
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_atomic_path_replaces_target_on_success(tmp_path):
    target = tmp_path / "sub" / "x.json"
    write_json_atomic(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    assert len(list(target.parent.iterdir())) == 1


def test_ledger_round_trips_and_counts(tmp_path):
    ledger = StatusLedger(tmp_path)
    ledger.record("s1", "done", seconds=1.5)
    ledger.record("s2", "failed", reason="SlideReadError: truncated\nfile")
    again = StatusLedger(tmp_path)
    assert again.is_done("s1") and not again.is_done("s2")
    assert again.counts() == {"done": 1, "skipped": 0, "failed": 1}
    assert again.failed()[0].reason == "SlideReadError: truncated file"


def test_ledger_rejects_unknown_status(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        StatusLedger(tmp_path).record("s", "finished")


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    target = tmp_path / "report.html"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
