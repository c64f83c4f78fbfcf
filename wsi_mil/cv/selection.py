"""Hyperparameter and epoch selection on inner-validation curves."""
from __future__ import annotations

import warnings

import numpy as np


def select(curves: np.ndarray) -> tuple[int, int, float]:
    """(grid index, epochs, score) maximising the mean inner curve; curves (G, J, E)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        mean = np.nanmean(curves, axis=1)  # (G, E)
    if np.isnan(mean).all():
        return 0, curves.shape[2], float("nan")
    flat = int(np.nanargmax(mean))  # row-major: first grid point, then fewest epochs
    g, e = divmod(flat, mean.shape[1])
    return g, e + 1, float(mean[g, e])
