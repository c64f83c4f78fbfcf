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


def test_two_ledgers_on_one_folder_keep_each_others_rows(tmp_path):
    a, b = StatusLedger(tmp_path), StatusLedger(tmp_path)  # two processes, each from memory
    a.record("s1", "done", "10 tiles", 1.0)
    b.record("s2", "done", "20 tiles", 2.0)
    a.record("s3", "failed", "x")
    assert StatusLedger(tmp_path).counts() == {"done": 2, "skipped": 0, "failed": 1}


def test_a_rerun_keeps_the_done_row_and_counts_its_skip_in_the_session(tmp_path):
    StatusLedger(tmp_path).record("s1", "done", "12 tiles", 3.5)
    rerun = StatusLedger(tmp_path)
    rerun.record("s1", "skipped", "output exists with the same settings")
    other = StatusLedger(tmp_path)
    other._dirty["s1"] = other.rows["s1"].__class__("s1", "skipped")  # a stale process's skip
    other.flush()
    row = StatusLedger(tmp_path).rows["s1"]
    assert (row.status, row.reason, row.seconds) == ("done", "12 tiles", 3.5)
    assert rerun.session_counts() == {"done": 0, "skipped": 1, "failed": 0}


def test_temporary_names_are_fixed_per_target_and_process_and_swept_when_dead(tmp_path):
    import os
    import time

    from wsi_mil.io.atomic import HOST_TAG, sweep_temp_files, temp_path

    target = tmp_path / "s1.h5"
    assert temp_path(target) == temp_path(target)
    assert temp_path(target).name == f".s1.h5~{HOST_TAG}-{os.getpid()}.tmp.h5"
    mine = temp_path(target)
    mine.write_text("in progress")
    dead = tmp_path / f".s2.h5~{HOST_TAG}-999999999.tmp.h5"  # no such pid
    dead.write_text("left by a killed run")
    other_host = tmp_path / ".s3.h5~0123abcd-1.tmp.h5"
    other_host.write_text("maybe still writing")
    legacy_old, legacy_new = tmp_path / ".s4.ab12cd34.tmp.h5", tmp_path / ".s5.ef56gh78.tmp.h5"
    legacy_old.write_text("x")
    legacy_new.write_text("x")
    hours_ago = time.time() - 2 * 3600
    os.utime(legacy_old, (hours_ago, hours_ago))
    assert sorted(p.name for p in sweep_temp_files(tmp_path)) == sorted([legacy_old.name, dead.name])
    assert mine.exists() and other_host.exists() and legacy_new.exists()


def test_a_slide_lock_is_exclusive_and_a_dead_owners_lock_is_taken_over(tmp_path):
    import json
    import os
    import time

    from wsi_mil.io.locks import SlideLocks

    first, second = SlideLocks(tmp_path), SlideLocks(tmp_path)
    assert first.acquire("s1") is None and first.acquire("s1") is None  # re-entrant
    assert f"pid {os.getpid()}" in second.acquire("s1")  # held by a live process
    first.release("s1")
    assert second.acquire("s1") is None
    path = second.path("s1")
    path.write_text(json.dumps({**second.owner, "pid": 999999999, "token": "dead"}))
    assert SlideLocks(tmp_path).acquire("s1") is None  # the owner died: taken over
    path.write_text("")  # a creator that died before writing its lock...
    assert "still creating" in SlideLocks(tmp_path).acquire("s1")  # ...is waited for a while
    old = time.time() - 120
    os.utime(path, (old, old))
    third = SlideLocks(tmp_path)
    assert third.acquire("s1") is None
    third.release_all()
    assert not path.exists()
