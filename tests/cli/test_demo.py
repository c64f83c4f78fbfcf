"""`wsi-mil demo` runs the whole pipeline on a generated cohort (reduced size here)."""
import json

import pandas as pd
import pytest

from wsi_mil.cli.main import main


@pytest.mark.slow
@pytest.mark.integration
def test_reduced_demo_learns_the_planted_tumour_and_writes_every_report_file(tmp_path):
    out = tmp_path / "demo"
    code = main(["demo", f"output_dir={out}", "n_slides=20", "n_patients=16",
                 "slide_width=4096", "slide_height=3072", "outer_folds=4", "inner_folds=2",
                 "epochs=12", "classification_heads=[abmil,meanpool]", "survival_heads=[abmil]",
                 "n_tiles=100", "n_jobs=1", "num_workers=0", "n_heatmaps=1", "log_level=WARNING"])
    assert code == 0

    results = pd.read_csv(out / "runs" / "results.csv")
    abmil = results[(results.task == "classification") & (results["head"] == "abmil")]
    assert len(abmil) == 1 and abmil["mean"].iloc[0] >= 0.8, results.to_string()
    survival = results[results.task == "survival"]
    assert len(survival) == 1 and survival["metric"].iloc[0] == "c_index"

    # every stage left its ledger / outputs
    tiles_status = pd.read_csv(out / "tiles" / "mpp0.50_px224" / "status.csv")
    assert (tiles_status.status == "done").all() and len(tiles_status) == 20
    feats_status = pd.read_csv(out / "features" / "histo_stats" / "mpp0.50_px224" / "status.csv")
    assert (feats_status.status == "done").all() and len(feats_status) == 20
    for run in ("tumor/histo_stats/abmil", "tumor/histo_stats/meanpool", "survival/histo_stats/abmil"):
        run_dir = out / "runs" / run
        for name in ("config.yaml", "fold_plan.json", "predictions.csv", "folds.csv", "summary.json"):
            assert (run_dir / name).exists(), run_dir / name
        assert json.loads((run_dir / "summary.json").read_text())["n_folds"] == 4

    report = out / "report"
    assert (report / "report.html").stat().st_size > 10_000
    assert (report / "report.md").exists()
    figures = {p.name for p in (report / "figures").glob("*.png")}
    assert any(f.startswith("roc_") for f in figures), figures
    assert any(f.startswith("km_") for f in figures), figures
    assert any(f.startswith("tiling_previews") for f in figures), figures
    for head in ("abmil", "meanpool"):
        assert any(f.startswith("heatmap_tumor_") and f"_{head}_" in f for f in figures), figures
    md = (report / "report.md").read_text()
    for fig in figures:
        assert fig in md
