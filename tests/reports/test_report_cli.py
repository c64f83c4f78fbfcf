import pytest
from report_run_builders import make_survival_run

from wsi_mil.cli.main import main


def test_report_command_writes_the_report_next_to_the_run(tmp_path, rng):
    run_dir = make_survival_run(tmp_path / "os", rng)
    assert main(["report", f"run_dir={run_dir}", "n_heatmaps=0"]) == 0
    out = run_dir / "report"
    assert (out / "report.html").exists() and (out / "report.md").exists()
    assert (out / "config.yaml").exists() and (out / "report.log").exists()
    assert len(list((out / "figures").glob("km_*.png"))) == 1


def test_report_command_needs_exactly_one_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", f"output_dir={tmp_path}"])
    assert exc.value.code == 2
    assert "run_dir" in capsys.readouterr().err
