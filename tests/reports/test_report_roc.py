import re

import numpy as np
import pandas as pd
from report_run_builders import make_binary_run, make_multiclass_run
from sklearn.metrics import roc_auc_score

from wsi_mil.reports.roc import fold_aucs, make_roc_figure, plot_roc, roc_points
from wsi_mil.reports.runs import read_run


def _legend_fold_values(fig) -> list[list[float]]:
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    per_run = []
    for text in texts:
        values = []
        for line in text.splitlines()[1:]:
            values += [float(v) for v in re.findall(r"\d\.\d{3}", line.split("folds:")[-1])]
        per_run.append(values)
    return per_run


def _sklearn_fold_aucs(preds: pd.DataFrame, multiclass: bool) -> list[float]:
    out = []
    for _, part in preds.groupby(["repeat", "outer_fold"], sort=True):
        if multiclass:
            n_classes = sum(c.startswith("score_") for c in part.columns)
            if part["target"].nunique() < n_classes:  # undefined in sklearn and in the CV
                out.append(np.nan)
                continue
            probs = part[[c for c in part.columns if c.startswith("score_")]].to_numpy()
            probs = probs / probs.sum(1, keepdims=True)
            out.append(roc_auc_score(part["target"], probs, multi_class="ovr", average="macro",
                                     labels=list(range(probs.shape[1]))))
        else:
            out.append(roc_auc_score(part["target"], part["score"]))
    return out


def test_legend_lists_every_outer_fold_auc_equal_to_sklearn(tmp_path, rng):
    runs = [read_run(make_binary_run(tmp_path / name, rng, model=name))
            for name in ("abmil", "transmil")]
    fig = plot_roc(runs)
    legend = _legend_fold_values(fig)
    assert len(legend) == 2
    for run, values in zip(runs, legend, strict=True):
        expected = _sklearn_fold_aucs(run.predictions, multiclass=False)
        assert len(values) == len(expected) == 6
        np.testing.assert_allclose(values, np.round(expected, 3), atol=1e-9)
    first = fig.axes[0].get_legend().get_texts()[0].get_text()
    pooled = roc_auc_score(runs[0].predictions["target"], runs[0].predictions["score"])
    assert f"pooled AUC {pooled:.3f}" in first


def test_multiclass_fold_aucs_are_sklearn_one_vs_rest_macro(tmp_path, rng):
    run = read_run(make_multiclass_run(tmp_path / "mc", rng))
    got = fold_aucs(run.predictions)["auc"].to_numpy()
    n_complete = sum(p["target"].nunique() == 3
                     for _, p in run.predictions.groupby(["repeat", "outer_fold"]))
    assert 0 < n_complete < 6  # both the sklearn case and a fold lacking a class
    np.testing.assert_allclose(got, _sklearn_fold_aucs(run.predictions, multiclass=True))
    fpr, tpr = roc_points(run.predictions)
    assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and np.all(np.diff(tpr) >= 0)
    values = _legend_fold_values(plot_roc([run]))[0]
    np.testing.assert_allclose(values, np.round(got[np.isfinite(got)], 3), atol=1e-9)
    legend = plot_roc([run]).axes[0].get_legend().get_texts()[0].get_text()
    assert legend.count("n/a") == 6 - n_complete


def test_roc_figure_is_written_as_png(tmp_path, rng):
    run = read_run(make_binary_run(tmp_path / "abmil", rng))
    path = make_roc_figure([run], tmp_path / "out" / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob("*.tmp*"))
