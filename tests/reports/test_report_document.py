import re

import pandas as pd
from PIL import Image
from report_run_builders import (
    make_binary_run,
    make_multiclass_run,
    make_survival_run,
    model_factory,
)

from wsi_mil.reports import make_report
from wsi_mil.reports.document import markdown_table
from wsi_mil.reports.previews import list_previews, make_previews_figure


def _check_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()


def test_report_has_every_figure_and_a_self_contained_html(tmp_path, rng, tiling):
    runs = tmp_path / "runs"
    make_binary_run(runs / "tumor" / "histo_stats" / "abmil", rng, "abmil", tiling.features_dir)
    make_binary_run(runs / "tumor" / "histo_stats" / "chowder", rng, "chowder",
                    tiling.features_dir)
    make_multiclass_run(runs / "subtype" / "histo_stats" / "meanpool", rng)
    make_survival_run(runs / "os" / "histo_stats" / "abmil", rng, tiling.features_dir)
    html_path = make_report(runs, tmp_path / "report", slides=tiling.slide_table,
                            coords_dir=tiling.coords_dir, n_heatmaps=1, thumbnail_px=256,
                            model_factory=model_factory())
    out = tmp_path / "report"
    assert html_path == out / "report.html"
    figures = sorted((out / "figures").glob("*.png"))
    names = [p.name for p in figures]
    assert "roc_tumor_binary.png" in names and "roc_subtype_multiclass.png" in names
    assert "tiling_previews.png" in names
    assert sum(n.startswith("km_") for n in names) == 1
    # two heads with models + features (abmil, chowder) + survival abmil, top and bottom each
    assert sum(n.startswith("heatmap_") for n in names) == 6
    for path in figures:
        _check_png(path)
    assert not list(out.rglob("*.tmp*"))

    html = html_path.read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == len(figures) and all(s.startswith("data:image/png;base64,")
                                                for s in sources)
    assert "href=" not in html and "<table" in html and "chowder" in html
    markdown = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(f"figures/{n}" for n in names)
    results = markdown.split("## Results")[1].split("## ROC")[0]
    assert "mean" in results and all(h in results for h in ("abmil", "chowder", "meanpool"))
    # the meanpool run has no models and no features_dir: listed, not fatal
    assert "Not made" in markdown and "meanpool" in markdown.split("## Not made")[1]


def test_report_of_one_run_defaults_to_its_report_folder(tmp_path, rng):
    run_dir = make_binary_run(tmp_path / "abmil", rng)
    html_path = make_report(run_dir, n_heatmaps=0)
    assert html_path == run_dir / "report" / "report.html"
    assert (run_dir / "report" / "report.md").exists()
    text = html_path.read_text()
    assert "no survival run" in text and "tiling previews: none found" in text


def test_previews_are_collected_from_the_tiling_root(tmp_path, tiling):
    previews = list_previews(tiling.tiling_root)
    assert list(previews) == ["s00", "s01", "s02"]
    assert list(list_previews(tiling.tiling_root, ["s01", "s09"])) == ["s01"]
    _check_png(make_previews_figure(previews, tmp_path / "p.png", n_max=2))


def test_markdown_table_escapes_pipes_and_blanks_nan():
    table = pd.DataFrame({"model": ["a|b"], "mean": [float("nan")], "n": [3]})
    assert markdown_table(table).splitlines()[-1] == "| a\\|b |  | 3 |"


def test_runs_of_the_same_head_get_distinct_file_keys(tmp_path, rng):
    from wsi_mil.reports.runs import read_run, unique_keys

    a = read_run(make_binary_run(tmp_path / "a" / "abmil", rng))
    b = read_run(make_binary_run(tmp_path / "b" / "abmil", rng))
    s = read_run(make_survival_run(tmp_path / "os" / "abmil", rng))
    assert unique_keys([a, b, s]) == ["tumor_histo_stats_abmil", "tumor_histo_stats_abmil_2",
                                      "os_histo_stats_abmil"]


def test_a_broken_run_dir_is_listed_and_the_others_reported(tmp_path, rng):
    make_binary_run(tmp_path / "runs" / "abmil", rng)
    broken = tmp_path / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "predictions.csv").write_text("")
    odd = tmp_path / "runs" / "odd"
    odd.mkdir()
    pd.DataFrame({"slide_id": ["a"], "repeat": [0], "outer_fold": [0], "x": [1]}).to_csv(
        odd / "predictions.csv", index=False)
    html = make_report(tmp_path / "runs", n_heatmaps=0).read_text()
    assert "predictions.csv is empty" in html and "expected slide_id" in html
    assert (tmp_path / "runs" / "report" / "figures" / "roc_tumor_binary.png").exists()


def test_an_unreadable_slide_table_skips_heatmaps_not_the_report(tmp_path, rng):
    run_dir = make_binary_run(tmp_path / "abmil", rng, features_dir=tmp_path)
    bad = tmp_path / "slides.csv"
    bad.write_text("slide_id,path\na,x.svs\na,y.svs\n")
    html = make_report(run_dir, slides=bad).read_text()
    assert "heatmaps: slide table" in html and "roc_tumor_binary" not in html  # embedded
    assert (run_dir / "report" / "figures" / "roc_tumor_binary.png").exists()


def test_fallback_results_table_has_headline_columns_only(tmp_path, rng):
    from wsi_mil.reports import results_table
    from wsi_mil.reports.runs import read_run

    runs = [read_run(make_binary_run(tmp_path / "abmil", rng)),
            read_run(make_survival_run(tmp_path / "os", rng))]
    table = results_table(runs)
    assert list(table.columns) == ["cohort", "task", "encoder", "model", "mode", "metric", "mean",
                                   "sd", "ci95_low", "ci95_high", "n_folds", "accuracy_mean",
                                   "run_dir"]
    assert table["model"].tolist() == ["abmil", "abmil"]
