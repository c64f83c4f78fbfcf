"""Figures and documents of CV runs: ROC, Kaplan-Meier, heatmaps, tiling previews, report.

Figures are pyplot-free :class:`matplotlib.figure.Figure` objects rendered with
Agg, so no backend has to be chosen and no figure stays open.
"""
from wsi_mil.reports.build import make_report, results_table
from wsi_mil.reports.document import ReportFigure, ReportSection, write_report_documents
from wsi_mil.reports.heatmaps import make_heatmaps, plot_heatmap
from wsi_mil.reports.previews import list_previews, make_previews_figure
from wsi_mil.reports.roc import fold_aucs, make_roc_figure, plot_roc
from wsi_mil.reports.runs import RunData, find_run_dirs, read_run
from wsi_mil.reports.survival import make_kaplan_meier_figure, plot_kaplan_meier, risk_groups

__all__ = [
    "RunData", "ReportFigure", "ReportSection", "find_run_dirs", "fold_aucs", "list_previews",
    "make_heatmaps", "make_kaplan_meier_figure", "make_previews_figure", "make_report",
    "make_roc_figure", "plot_heatmap", "plot_kaplan_meier", "plot_roc", "read_run",
    "results_table", "risk_groups", "write_report_documents",
]
