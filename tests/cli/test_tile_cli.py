"""`wsi-mil tile`: exit codes, saved config, and kill-then-rerun equals an uninterrupted run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsi_mil.cli.main import main
from wsi_mil.io.coords import read_coords
from wsi_mil.io.ledger import StatusLedger
from wsi_mil.testing.synthetic_slides import write_synthetic_slide

N_SLIDES = 6


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_slides")
    for i in range(N_SLIDES):
        write_synthetic_slide(root / f"slide{i}.svs", width=4096, height=3072, seed=i,
                              tumor_fraction=0.2)
    return root


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "wsi_mil.cli.main", "tile", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _outputs(root: Path) -> dict[str, object]:
    """Coords arrays + attrs and preview bytes of every finished slide (temp files ignored)."""
    out = {}
    for path in sorted((root / "coords").glob("[!.]*.h5")):
        c = read_coords(path)
        out[path.name] = (c.coords.tolist(), c.coords_level0.tolist(), sorted((k, repr(v)) for k, v in c.attrs.items()))  # repr: nan == nan
    for path in sorted((root / "previews").glob("[!.]*.png")):
        out[path.name] = path.read_bytes()
    return out


def test_all_good_slides_exit_zero_and_save_the_resolved_config(tmp_path, slide_dir):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(slide_dir / "slide0.svs", one)
    code = main(["tile", f"slides={one}", f"output_dir={tmp_path / 'out'}", "tile_size=128",
                 "tissue.min_region_um2=1000", "previews=false"])
    root = tmp_path / "out" / "mpp0.50_px128"
    assert code == 0
    assert (root / "coords" / "slide0.h5").exists() and not (root / "previews").exists()
    config = (root / "config.yaml").read_text()
    assert "tile_size: 128" in config and "min_region_um2: 1000" in config
    assert (root / "tile.log").exists()
    assert read_coords(root / "coords" / "slide0.h5").attrs["tile_size"] == 128


def test_a_failed_slide_gives_exit_code_1_with_a_summary(tmp_path, slide_dir, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(slide_dir / "slide1.svs", folder)
    (folder / "bad.svs").write_text("hello")
    with pytest.raises(SystemExit) as exc:
        main(["tile", f"slides={folder}", f"output_dir={tmp_path / 'out'}"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "1 done, 0 skipped, 1 failed" in err and "FAILED bad" in err
    ledger = StatusLedger(tmp_path / "out" / "mpp0.50_px224")
    assert ledger.status("slide1") == "done" and ledger.status("bad") == "failed"


def test_configuration_errors_exit_with_code_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["tile", f"slides={tmp_path / 'nothing_here'}", f"output_dir={tmp_path}"])
    assert exc.value.code == 2


@pytest.mark.integration
def test_killing_mid_run_then_rerunning_gives_the_files_of_an_uninterrupted_run(
        tmp_path, slide_dir):
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    coords_dir = killed_out / "mpp0.50_px224" / "coords"
    proc = _cli(f"slides={slide_dir}", f"output_dir={killed_out}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if coords_dir.exists() and any(coords_dir.glob("[!.]*.h5")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    n_before = len(list(coords_dir.glob("[!.]*.h5")))
    assert 1 <= n_before < N_SLIDES, "the run must be interrupted after its first slide"

    rerun = _cli(f"slides={slide_dir}", f"output_dir={killed_out}")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    clean = _cli(f"slides={slide_dir}", f"output_dir={clean_out}")
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err.decode()[-2000:]

    killed = _outputs(killed_out / "mpp0.50_px224")
    reference = _outputs(clean_out / "mpp0.50_px224")
    assert len(reference) == 2 * N_SLIDES
    assert killed.keys() == reference.keys()
    for name in reference:  # coords, attrs (slide_path is the same file) and previews
        assert killed[name] == reference[name], name
    ledger = StatusLedger(killed_out / "mpp0.50_px224")
    assert ledger.counts()["failed"] == 0 and len(ledger) == N_SLIDES
    # the rerun keeps the done rows of finished slides (a slide killed between its coords file
    # and its ledger row is recorded as skipped)
    assert ledger.counts()["done"] >= N_SLIDES - 1 and ledger.counts()["failed"] == 0


def test_tools_entry_point_shows_the_project_config_section():
    tool = Path(__file__).parents[2] / "tools" / "tile_slides" / "tile_slides.py"
    result = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert "tile:" in result.stdout and "target_mpp" in result.stdout


def test_cli_help_lists_every_tiling_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tile", "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "target_mpp" in out and "min_tissue" in out
