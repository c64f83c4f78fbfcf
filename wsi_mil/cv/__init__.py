"""Slide-level cross-validation: settings, the nested-CV engine, selection,
statistics, run outputs and the results table.

Tile-level and vision-language tasks live in :mod:`wsi_mil.evaluation`.
"""
