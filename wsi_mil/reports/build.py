"""``make_report``: every figure that can be made from what a CV run left on disk.

ROC curves need classification runs, Kaplan-Meier curves survival runs with
``train_risk_median`` in ``folds.csv``, heatmaps the fold models plus feature
files and slides, previews a tiling root. Whatever cannot be made is logged
and listed under "Not made" in the report, with the reason.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from loguru import logger

from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.io.paths import safe_name
from wsi_mil.reports.document import ReportFigure, ReportSection, write_report_documents
from wsi_mil.reports.heatmaps import make_heatmaps
from wsi_mil.reports.previews import find_tiling_root, list_previews, make_previews_figure
from wsi_mil.reports.roc import fold_aucs, make_roc_figure
from wsi_mil.reports.runs import (
    TASK_BINARY,
    TASK_MULTICLASS,
    TASK_SURVIVAL,
    RunData,
    find_run_dirs,
    read_runs,
    unique_keys,
)
from wsi_mil.reports.survival import make_kaplan_meier_figure
from wsi_mil.reports.tile_scores import ModelFactory, read_slides

# summary.json keys shown in the results table, in this order (when present)
RESULT_COLUMNS = ["task_name", "cohort", "task", "encoder", "model", "mode", "metric", "mean", "sd",
                  "ci95_low", "ci95_high", "n_folds", "n_slides", "n_patients", "seconds"]


def results_table(runs: Sequence[RunData]) -> pd.DataFrame:
    """One row per run from its ``summary.json``: the headline columns, the other
    metrics' means (``<metric>_mean``) and the run folder."""
    rows = []
    for run in runs:
        summary = dict(run.summary)
        if isinstance(summary.get("ci95"), dict):
            summary.setdefault("ci95_low", summary["ci95"].get("low"))
            summary.setdefault("ci95_high", summary["ci95"].get("high"))
        if run.config.get("task_name"):
            summary.setdefault("task_name", run.config["task_name"])
        row = {key: summary[key] for key in RESULT_COLUMNS if key in summary}
        row["model"] = row.get("model") or run.head
        for name, values in (summary.get("other_metrics") or {}).items():
            if isinstance(values, dict) and "mean" in values:
                row[f"{name}_mean"] = values["mean"]
        row["run_dir"] = run.run_dir.name
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    first = [c for c in RESULT_COLUMNS if c in table.columns]
    metric_means = [c for c in table.columns if c not in RESULT_COLUMNS and c != "run_dir"]
    return table[first + metric_means + ["run_dir"]]


def _collect_results(sources: Sequence[Path], runs: Sequence[RunData]) -> pd.DataFrame:
    """The package's results table (``wsi_mil.cv.results.collect_results``) of the
    sources, else :func:`results_table` of the loaded runs."""
    try:
        from wsi_mil.cv.results import collect_results
    except ImportError:
        return results_table(runs)
    try:
        tables = [collect_results(source) for source in sources]
    except WsiMilError as err:
        logger.warning("report: results table from summary.json files instead ({})", err)
        return results_table(runs)
    tables = [t for t in tables if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else results_table(runs)


def _roc_groups(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Classification runs by (cohort, binary / multiclass): heads compared on one figure."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        if run.task_kind in (TASK_BINARY, TASK_MULTICLASS):
            name = run.task_name
            key = f"{name} ({run.task_kind})" if name else str(run.task_kind)
            groups.setdefault(key, []).append(run)
    return groups


def _default_output_dir(sources: Sequence[Path], run_dirs: Sequence[Path]) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / "report"
    return Path(sources[0]) / "report"


def make_report(runs: str | Path | Sequence[str | Path], output_dir: str | Path | None = None,
                features_dir: str | Path | None = None,
                slides: str | Path | pd.DataFrame | None = None,
                coords_dir: str | Path | None = None, tiling_root: str | Path | None = None,
                n_heatmaps: int = 2, n_previews: int = 4,
                results: pd.DataFrame | None = None, title: str = "wsi_mil report",
                km_repeat: int | None = None, thumbnail_px: int = 1024,
                model_factory: ModelFactory | None = None) -> Path:
    """Write figures, ``report.md`` and ``report.html``; return the HTML path.

    ``runs``: a run dir, a folder of run dirs (searched recursively), or a list.
    ``output_dir``: default ``<run_dir>/report`` (one run) or ``<runs>/report``.
    ``features_dir``: feature h5 folder for heatmaps; default each run's
    ``summary.json`` ``features_dir``. ``slides``: slide table spec / DataFrame
    (else the ``slide_path`` attr of the coords files in ``coords_dir``).
    ``tiling_root``: for previews; default the parent of ``coords_dir``.
    ``n_heatmaps``: slides per end (top- and lowest-scored) per head.
    ``results``: a ready results table; default ``collect_results`` of
    ``wsi_mil.cv.results`` (else one row per ``summary.json``).
    ``km_repeat``: repeat of the Kaplan-Meier curves (None = first);
    ``thumbnail_px``: longest side of the heatmap thumbnails;
    ``model_factory``: ``(name, in_dim, n_outputs, **hparams) -> head``, default
    ``wsi_mil.models.create_model``.
    """
    sources = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if not sources:
        raise ConfigError("make_report needs at least one run dir or runs folder")
    run_dirs = find_run_dirs(sources)
    if not run_dirs:
        raise ConfigError(f"no CV run dir (folder with predictions.csv) under {sources}")
    output_dir = Path(output_dir) if output_dir else _default_output_dir(sources, run_dirs)
    fig_dir = output_dir / "figures"
    loaded, skipped = read_runs(run_dirs)
    keys = {run.run_dir: key for run, key in zip(loaded, unique_keys(loaded), strict=True)}
    logger.info("report: {} run dir(s) -> {}", len(loaded), output_dir)

    sections: list[ReportSection | None] = [
        _roc_section(loaded, fig_dir, skipped),
        _km_section(loaded, keys, fig_dir, km_repeat, skipped),
    ]
    if n_heatmaps > 0:
        sections.append(_heatmap_section(loaded, keys, fig_dir, skipped, features_dir, slides,
                                         coords_dir, n_heatmaps, thumbnail_px, model_factory))
    else:
        skipped.append("heatmaps: n_heatmaps=0")
    if n_previews > 0:
        root = Path(tiling_root) if tiling_root else find_tiling_root(coords_dir)
        sections.append(_preview_section(root, fig_dir, n_previews, skipped))
    else:
        skipped.append("tiling previews: n_previews=0")
    made = [section for section in sections if section is not None]

    table = results if results is not None else _collect_results(sources, loaded)
    for reason in skipped:
        logger.info("report: not made: {}", reason)
    _, html_path = write_report_documents(output_dir, title, made, table, skipped)
    logger.info("report: wrote {} and report.md ({} figures)", html_path,
                sum(len(section.figures) for section in made))
    return html_path


def _roc_section(runs: Sequence[RunData], fig_dir: Path, skipped: list[str]
                 ) -> ReportSection | None:
    section = ReportSection("ROC curves", "Pooled outer-fold test predictions; the legend lists "
                            "the AUC of every outer fold.")
    for task, group in _roc_groups(runs).items():
        path = make_roc_figure(group, fig_dir / f"roc_{safe_name(task)}.png",
                               title=f"ROC: {task}")
        caption = "; ".join(
            f"{r.label}: mean fold AUC {fold_aucs(r.predictions)['auc'].mean():.3f}" for r in group
        )
        section.figures.append(ReportFigure(f"ROC: {task}", path, caption))
    if not section.figures:
        skipped.append("ROC curves: no classification run")
        return None
    return section


def _km_section(runs: Sequence[RunData], keys: dict[Path, str], fig_dir: Path,
                repeat: int | None, skipped: list[str]) -> ReportSection | None:
    section = ReportSection("Kaplan-Meier curves", "High- vs low-risk test slides; the cut-off "
                            "of each outer fold is the median risk on its training part (never "
                            "the test fold). Log-rank test from lifelines.")
    survival = [run for run in runs if run.task_kind == TASK_SURVIVAL]
    if not survival:
        skipped.append("Kaplan-Meier curves: no survival run")
    for run in survival:
        try:
            path, res = make_kaplan_meier_figure(run, fig_dir / f"km_{keys[run.run_dir]}.png",
                                                 repeat=repeat)
        except WsiMilError as err:
            skipped.append(f"Kaplan-Meier {run.label}: {err}")
            continue
        section.figures.append(ReportFigure(
            f"Kaplan-Meier: {run.task_name} / {run.label}" if run.task_name
            else f"Kaplan-Meier: {run.label}", path,
            f"repeat {res.repeat}: {res.n_high} high-risk, {res.n_low} low-risk slides; "
            f"log-rank p = {res.p_value:.3g}"))
    return section if section.figures else None


def _heatmap_section(runs: Sequence[RunData], keys: dict[Path, str], fig_dir: Path,
                     skipped: list[str], features_dir: str | Path | None,
                     slides: str | Path | pd.DataFrame | None, coords_dir: str | Path | None,
                     n_heatmaps: int, thumbnail_px: int, model_factory: ModelFactory | None,
                     ) -> ReportSection | None:
    if slides is not None and not isinstance(slides, pd.DataFrame):
        try:
            slides = read_slides(slides)
        except WsiMilError as err:
            logger.warning("report: slide table {}: {}", slides, err)
            skipped.append(f"heatmaps: slide table {slides}: {type(err).__name__}: {err}")
            return None
    if slides is None and coords_dir is None:
        skipped.append("heatmaps: slide paths unknown (give slides= or coords_dir=)")
        return None
    section = ReportSection("Heatmaps", "Per-tile scores of each head (attention weights, tile "
                            "scores or contributions) over the thumbnail, for the top- and "
                            "lowest-scored test slides; colours scaled per slide.")
    for run in runs:
        if not (run.run_dir / "models").is_dir():
            skipped.append(f"heatmaps {run.label}: no models/ folder (cv save_models=false?)")
            continue
        feats = features_dir or run.summary.get("features_dir")
        if not feats or not Path(feats).is_dir():
            skipped.append(f"heatmaps {run.label}: no features_dir (got {feats!r})")
            continue
        outputs, reasons = make_heatmaps(
            run, feats, fig_dir, slides=slides, coords_dir=coords_dir, n_per_end=n_heatmaps,
            thumbnail_px=thumbnail_px, model_factory=model_factory, file_key=keys[run.run_dir])
        skipped += [f"heatmap {reason}" for reason in reasons]
        where = run.task_name or run.run_dir.name
        section.figures += [ReportFigure(
            f"{where} / {run.label}: {o.slide_id} ({o.rank}-scored)", o.path,
            f"slide score {o.slide_score:.3g}, model r{o.repeat}_f{o.outer_fold}")
            for o in outputs]
    return section if section.figures else None


def _preview_section(root: Path | None, fig_dir: Path, n_previews: int, skipped: list[str]
                     ) -> ReportSection | None:
    previews = list_previews(root) if root else {}
    if not previews:
        skipped.append(f"tiling previews: none found (tiling_root={root})")
        return None
    path = make_previews_figure(previews, fig_dir / "tiling_previews.png", n_max=n_previews)
    shown = ", ".join(list(previews)[:n_previews])
    return ReportSection("Tiling previews", figures=[
        ReportFigure("Tiling previews", path, f"slides: {shown}")])
