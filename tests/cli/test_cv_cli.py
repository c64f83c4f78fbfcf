"""`wsi-mil cv` and `wsi-mil results`: in-process runs, a joblib multirun, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from wsi_mil.cli.main import main
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort

FAST = ["mode=kfold", "outer_folds=2", "epochs=2", "n_tiles=16", "batch_size=8", "encoder=synth"]


@pytest.fixture
def synth(tmp_path):
    return write_synthetic_cohort(tmp_path / "data", n_patients=12, dim=8, n_tiles=(10, 30), seed=0)


def args(synth, out, *extra):
    return [f"cohort={synth.cohort_csv}", f"features_dir={synth.features_dir}", f"output_dir={out}", *FAST, *extra]


def test_cv_writes_a_run_directory_and_results_aggregates_it(synth, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["cv", *args(synth, out, "model=meanpool")]) == 0
    run = out / "classification" / "synth" / "meanpool"
    for name in ("config.yaml", "fold_plan.json", "predictions.csv", "folds.csv", "summary.json", "cv.log",
                 "models/r0_f1.pt"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "meanpool" and summary["encoder"] == "synth" and summary["n_folds"] == 2
    assert main(["results", f"runs_dir={out}"]) == 0
    table = pd.read_csv(out / "results.csv")
    assert table.loc[0, "head"] == "meanpool" and table.loc[0, "n_folds"] == 2
    assert (out / "results.md").read_text().startswith("| task | cohort | encoder | head")
    assert "meanpool" in capsys.readouterr().out


def test_slides_without_features_exit_with_a_named_error(synth, tmp_path, capsys):
    missing = synth.table.slide_id.iloc[3]
    (synth.features_dir / f"{missing}.h5").unlink()
    with pytest.raises(SystemExit) as err:
        main(["cv", *args(synth, tmp_path / "runs", "model=meanpool")])
    assert err.value.code == 2
    assert "MissingFeaturesError" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_joblib_multirun_over_two_heads(synth, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "wsi_mil.cli.main", "cv", "-m", "model=meanpool,abmil",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *args(synth, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for head in ("meanpool", "abmil"):
        summary = json.loads((out / "classification" / "synth" / head / "summary.json").read_text())
        assert summary["model"] == head


@pytest.mark.parametrize("head", ["meanpool", "chowder", "abmil", "dsmil", "transmil", "hipt_mil"])
def test_every_head_config_builds_its_model(head):
    from importlib import resources

    import torch
    import yaml

    from wsi_mil.models import create_model

    conf = yaml.safe_load(resources.files("wsi_mil.conf").joinpath(f"model/{head}.yaml").read_text())
    assert conf["name"] == head and isinstance(conf["grid"], dict)
    model = create_model(head, 8, 1, **conf["hparams"])
    assert model(torch.randn(2, 25, 8), torch.ones(2, 25, dtype=torch.bool)).shape == (2, 1)


def test_slurm_launcher_config_is_documented_yaml():
    from importlib import resources

    import yaml

    text = resources.files("wsi_mil.conf").joinpath("hydra/launcher/slurm.yaml").read_text()
    conf = yaml.safe_load(text)
    assert conf["defaults"] == ["submitit_slurm"] and "hydra-submitit-launcher" in text


def test_reference_protocol_runs_end_to_end_with_the_reference_head_and_fixed_tiles(synth, tmp_path):
    out = tmp_path / "runs"
    assert main(["cv", *args(synth, out, "model=transmil", "protocol=reference", "report=false")]) == 0
    summary = json.loads((out / "classification" / "synth" / "transmil" / "summary.json").read_text())
    assert summary["model"] == "transmil_ref" and summary["protocol"] == "reference"
    assert (summary["tile_sampling"], summary["feature_dtype"], summary["n_tiles"]) == ("fixed", "float32", 1000)
    assert summary["n_folds"] == 2
