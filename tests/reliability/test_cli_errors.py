"""Every entry point ends with one line naming the file and the fix, never a raw traceback:
exit 2 for usage (bad value, missing key, unwritable or not-a-folder output, unreadable input),
1 for a failed run (disk full, unexpected error)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from wsi_mil.cli.common import configure_logging, exit_on_error
from wsi_mil.errors import FileFormatError
from wsi_mil.io.features import write_features
from wsi_mil.reports.tile_scores import load_fold_model


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "wsi_mil.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cv_inputs(root):
    feats = root / "features"
    rows = []
    for i in range(10):
        write_features(feats / f"s{i}.h5", np.random.default_rng(i).normal(size=(4, 8)),
                       np.zeros((4, 3)), np.zeros((4, 2)), {"wsi_mil_version": "test"})
        rows.append({"slide_id": f"s{i}", "patient_id": f"p{i}", "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    pd.DataFrame({**pd.DataFrame(rows).drop(columns="label"), "time": np.arange(10.0) + 1,
                  "event": 0}).to_csv(root / "no_events.csv", index=False)
    bad = feats / "s3.h5"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated (an interrupted copy)
    return root / "cohort.csv", feats, bad


@pytest.mark.integration
def test_cli_errors_are_one_named_line_with_the_right_exit_code(tmp_path, cmu_slide_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cohort, feats, bad_h5 = _cv_inputs(tmp_path)
    cases = {  # args -> (exit code, text of the one line)
        ("tile", f"slides={cmu_slide_path}", f"output_dir={tmp_path / 'o1'}", "target_mpp=abc"):
            (2, "ConfigError: target_mpp='abc' is not a number (default 0.5): give e.g. "
                "target_mpp=0.5"),
        ("extract", f"slides={cmu_slide_path}", f"coords_dir={tmp_path}"):
            (2, "ConfigError: missing mandatory key(s) output_dir: give output_dir=<value>"),
        ("tile", f"slides={cmu_slide_path}", f"output_dir={a_file}"):
            (2, f"NotADirectoryError: a path component of {a_file}/mpp0.50_px224 is a file, "
                "not a folder; choose another output_dir or move that file away"),
        ("cv", f"cohort={cohort}", f"features_dir={feats}", f"output_dir={tmp_path / 'cv'}",
         "outer_folds=2", "inner_folds=2", "epochs=1"):
            (2, f"FileFormatError: {bad_h5} is not a readable h5 feature file"),
        ("cv", f"cohort={tmp_path / 'no_events.csv'}", "task=survival", f"features_dir={feats}",
         f"output_dir={tmp_path / 'cv2'}"):
            (2, "TargetError: survival cohort in "),
        ("cv", f"cohort={cohort}", f"features_dir={feats}", f"output_dir={tmp_path / 'cv3'}", "standardize=yes"):
            (2, "ConfigError: standardize='yes' is not true or false (default false): give standardize=true "
                "or standardize=false"),
    }
    procs = {args: _cli(*args) for args in cases}
    for args, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        code, text = cases[args]
        assert proc.returncode == code, (args, err[-2000:])
        assert "Traceback" not in err, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and text in last, (args, last)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_usage_error_naming_it(tmp_path, cmu_slide_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = _cli("tile", f"slides={cmu_slide_path}", f"output_dir={ro}")
        _, err = proc.communicate(timeout=300)
    finally:
        ro.chmod(0o700)
    assert proc.returncode == 2
    assert f"PermissionError: permission denied: {ro}/mpp0.50_px224" in err.splitlines()[-1]


@pytest.mark.parametrize(("error", "code", "text"), [
    (OSError(errno.ENOSPC, "No space left on device", "/out/s1.h5"), 1,
     "OSError: disk full while writing /out/s1.h5; free some space or choose another output_dir"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/run"), 2,
     "PermissionError: permission denied: /ro/run; choose a folder you can write to"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), 2,
     "OSError: read-only file system: /mnt/ro/x; choose an output_dir on a writable disk"),
    (KeyError("boom"), 1, "unexpected KeyError: 'boom' (a bug? the traceback is in the "
                          "command's log file; set WSI_MIL_TRACEBACK=1 to print it)"),
])
def test_os_and_unexpected_errors_become_one_line_and_an_exit_code(capsys, error, code, text):
    @exit_on_error
    def command(cfg):
        configure_logging(level="INFO")  # as setup_run: a stderr sink is there
        raise error

    with pytest.raises(SystemExit) as exit_info:
        command(OmegaConf.create({"output_dir": "/out"}))
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04K\x01."])
def test_an_unreadable_checkpoint_is_a_named_file_error(tmp_path, content):
    path = tmp_path / "r0_f0.pt"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=rf"{path}.*rerun `wsi-mil cv`|{path} holds a"):
        load_fold_model(path)
