"""Hyperparameter and epoch selection on inner-validation curves."""
from __future__ import annotations

import warnings

import numpy as np

from wsi_mil.errors import ConfigError

TIEBREAKS = ("loss", "first")


def select(curves: np.ndarray, loss_curves: np.ndarray | None = None,
           tiebreak: str = "loss") -> tuple[int, int, float]:
    """(grid index, epochs, score) maximising the mean inner curve; curves (G, J, E).

    Ties (equal mean metric, common when a rank metric such as the AUC saturates
    at 1.0 on small validation folds after a few epochs): ``tiebreak="loss"``
    takes the tied (grid point, epochs) with the lowest mean inner-validation
    loss ``loss_curves (G, J, E)``, then the first; ``"first"`` (the reference's
    argmax) takes the first grid point, then the fewest epochs, which picks a
    barely trained refit whenever the metric saturates early.
    """
    if tiebreak not in TIEBREAKS:
        raise ConfigError(f"selection tie-break {tiebreak!r}; choose one of {TIEBREAKS}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        mean = np.nanmean(curves, axis=1)  # (G, E)
        loss = None if loss_curves is None else np.nanmean(loss_curves, axis=1)  # (G, E)
    if np.isnan(mean).all():
        return 0, curves.shape[2], float("nan")
    flat = int(np.nanargmax(mean))  # row-major: first grid point, then fewest epochs
    if tiebreak == "loss" and loss is not None:
        tied = np.flatnonzero(mean.ravel() == mean.ravel()[flat])  # row-major order
        tied_loss = loss.ravel()[tied]
        if np.isfinite(tied_loss).any():
            flat = int(tied[np.nanargmin(tied_loss)])  # first of the lowest
    g, e = divmod(flat, mean.shape[1])
    return g, e + 1, float(mean[g, e])
