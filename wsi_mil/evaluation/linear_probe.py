"""Linear evaluation of frozen tile features (the reference's protocol and a modern default).

Protocols
---------
``reference``
    HistoSSLscaling ``tools/tile_level_tasks/linear_evaluation.py``: for each
    training portion, a seeded subsample of the training tiles, a
    ``StandardScaler`` fitted on it, and an ensemble of 30 ``SGDClassifier``
    (log loss, L2, ``learning_rate="adaptive"``, ``eta0=1e-4``, member ``i``
    seeded ``seed + i``) whose probabilities are averaged. The reference draws
    the subsample uniformly (``np.random.choice``); we stratify it by class and
    keep at least one tile per class, so tiny portions still see every class.
``logreg_cv``
    ``StandardScaler`` + ``LogisticRegressionCV`` (lbfgs, inverse
    regularisation C chosen on the grid 1e-4..1e2 (7 values) by stratified
    inner CV (5 folds, fewer if a class has fewer tiles) on the
    training tiles only, log-loss scoring). With fewer than 2 tiles in some
    class the CV is impossible and ``LogisticRegression(C=1)`` is fitted
    instead (logged).

Both are sklearn-style: passive ``__init__``, ``fit(x, y)``, ``predict_proba(x)``
returning (N, n_classes) columns for every class index, fitted state in ``*_``.
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from loguru import logger
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, SGDClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from wsi_mil.errors import ConfigError
from wsi_mil.evaluation.tile_metrics import classification_metrics

PROTOCOLS = ("reference", "logreg_cv")
REFERENCE_PORTIONS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
# Inverse L2 strengths searched by ``logreg_cv`` (features are standardised first).
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))


def stratified_subsample(
    labels: np.ndarray, portion: float, seed: int, min_per_class: int = 1
) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified ``portion`` of ``labels``.

    Each class keeps ``max(min_per_class, round(portion * n_class))`` tiles
    (capped at ``n_class``); ``portion=1`` returns every index.
    """
    if not 0.0 < float(portion) <= 1.0:
        raise ConfigError(f"portion must be in (0, 1], got {portion}")
    labels = np.asarray(labels)
    if portion == 1.0:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        n = min(idx.size, max(min_per_class, int(round(portion * idx.size))))
        chosen.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(chosen))


# sklearn >= 1.8 warns unless these are explicit (same behaviour: pure L2, scalar C_).
_LOGREG_CV_COMPAT = {
    key: value
    for key, value in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False))
    if key in inspect.signature(LogisticRegressionCV).parameters
}


def _full_proba(proba: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Scatter probabilities of the classes seen in training into all ``n_classes`` columns."""
    out = np.zeros((proba.shape[0], n_classes), dtype=np.float64)
    out[:, np.asarray(classes, dtype=np.int64)] = proba
    return out


class SGDEnsembleClassifier:
    """The reference protocol: StandardScaler + mean probability of seeded SGD logistic models."""

    def __init__(
        self,
        n_members: int = 30,
        eta0: float = 1e-4,
        alpha: float = 1e-4,
        max_iter: int = 1000,
        n_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        self.n_members = n_members
        self.eta0 = eta0
        self.alpha = alpha
        self.max_iter = max_iter
        self.n_classes = n_classes
        self.seed = seed

    def __repr__(self) -> str:
        return (f"SGDEnsembleClassifier(n_members={self.n_members}, eta0={self.eta0}, "
                f"alpha={self.alpha}, seed={self.seed})")

    def fit(self, x: np.ndarray, y: np.ndarray) -> SGDEnsembleClassifier:
        y = np.asarray(y, dtype=np.int64)
        self.n_classes_ = int(self.n_classes or y.max() + 1)
        self.scaler_ = StandardScaler().fit(x)
        xs = self.scaler_.transform(x)
        self.members_ = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for i in range(self.n_members):
                self.members_.append(
                    SGDClassifier(
                        loss="log_loss", penalty="l2", alpha=self.alpha,
                        learning_rate="adaptive", eta0=self.eta0, max_iter=self.max_iter,
                        early_stopping=False, random_state=self.seed + i,
                    ).fit(xs, y)
                )
        self.classes_ = self.members_[0].classes_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        xs = self.scaler_.transform(x)
        proba = np.mean([m.predict_proba(xs) for m in self.members_], axis=0)
        if len(self.classes_) == 1:  # one class seen: certain of it
            proba = np.ones((xs.shape[0], 1))
        return _full_proba(proba, self.classes_, self.n_classes_)


class LogRegCVClassifier:
    """StandardScaler + logistic regression with C chosen by stratified inner CV (train only)."""

    def __init__(
        self,
        cs: Sequence[float] | int = DEFAULT_CS,
        cv: int = 5,
        max_iter: int = 300,
        fallback_c: float = 1.0,
        n_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        self.cs = cs
        self.cv = cv
        self.max_iter = max_iter
        self.fallback_c = fallback_c
        self.n_classes = n_classes
        self.seed = seed

    def __repr__(self) -> str:
        return f"LogRegCVClassifier(cs={self.cs}, cv={self.cv}, seed={self.seed})"

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogRegCVClassifier:
        y = np.asarray(y, dtype=np.int64)
        self.n_classes_ = int(self.n_classes or y.max() + 1)
        self.scaler_ = StandardScaler().fit(x)
        xs = self.scaler_.transform(x)
        _, counts = np.unique(y, return_counts=True)
        folds = int(min(self.cv, counts.min()))
        cs = list(self.cs) if not isinstance(self.cs, int) else self.cs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if counts.size < 2:
                self.model_ = None
                self.C_ = float("nan")
            elif folds >= 2:
                self.model_ = LogisticRegressionCV(
                    Cs=cs, cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed),
                    scoring="neg_log_loss", max_iter=self.max_iter, **_LOGREG_CV_COMPAT,
                ).fit(xs, y)
                self.C_ = float(np.ravel(self.model_.C_)[0])
            else:
                logger.debug("{} tile(s) in the smallest class: no inner CV, C={}",
                             counts.min(), self.fallback_c)
                self.model_ = LogisticRegression(C=self.fallback_c, max_iter=self.max_iter).fit(xs, y)
                self.C_ = self.fallback_c
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        xs = self.scaler_.transform(x)
        if self.model_ is None:
            return _full_proba(np.ones((xs.shape[0], 1)), self.classes_, self.n_classes_)
        return _full_proba(self.model_.predict_proba(xs), self.model_.classes_, self.n_classes_)


def make_probe(protocol: str, n_classes: int, seed: int = 0, **kwargs) -> SGDEnsembleClassifier | LogRegCVClassifier:
    """The classifier of ``protocol`` (``reference`` | ``logreg_cv``)."""
    if protocol == "reference":
        return SGDEnsembleClassifier(n_classes=n_classes, seed=seed, **kwargs)
    if protocol == "logreg_cv":
        return LogRegCVClassifier(n_classes=n_classes, seed=seed, **kwargs)
    raise ConfigError(f"protocol={protocol!r}; valid: {list(PROTOCOLS)}")


def _check_xy(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64).ravel()
    if x.ndim != 2 or x.shape[0] != y.size or y.size == 0:
        raise ConfigError(f"{name} features must be (N, D) with N = len(labels) > 0; "
                          f"got {x.shape} and {y.size} labels")
    return x, y


def run_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    protocol: str = "logreg_cv",
    portions: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    class_names: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    ci_method: str = "percentile",
    probe_kwargs: dict | None = None,
    tile_scores: dict | None = None,
) -> pd.DataFrame:
    """Fit a probe on each (portion, seed) subsample of the train tiles, evaluate on the test tiles.

    ``tile_scores``: a dict filled with ``(portion, seed) -> (N_test, C)`` probabilities.

    Returns a long table with columns ``protocol, portion, seed, n_train, class,
    metric, value, ci_low, ci_high`` (see :mod:`wsi_mil.evaluation.tile_metrics`).
    The test tiles are never used for fitting, scaling or choosing C.
    """
    train_x, train_y = _check_xy(train_x, train_y, "train")
    test_x, test_y = _check_xy(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ConfigError(f"train dim {train_x.shape[1]} != test dim {test_x.shape[1]}")
    n_classes = int(max(train_y.max(), test_y.max()) + 1)
    if class_names is not None and len(class_names) < n_classes:
        raise ConfigError(f"{len(class_names)} class names for labels up to {n_classes - 1}")
    if class_names is not None:
        n_classes = len(class_names)
    tables = []
    for portion in portions:
        for seed in seeds:
            idx = stratified_subsample(train_y, portion, seed)
            probe = make_probe(protocol, n_classes, seed, **(probe_kwargs or {}))
            probe.fit(train_x[idx], train_y[idx])
            scores = probe.predict_proba(test_x)
            if tile_scores is not None:
                tile_scores[(float(portion), int(seed))] = scores
            table = classification_metrics(
                test_y, scores, class_names, n_bootstrap=n_bootstrap,
                confidence_level=confidence_level, seed=seed, ci_method=ci_method,
            )
            auc = table[(table["class"] == "macro") & (table["metric"] == "auc")]["value"].iloc[0]
            logger.info("{} portion={} seed={} n_train={} macro AUC={:.4f}",
                        protocol, portion, seed, idx.size, auc)
            table.insert(0, "n_train", idx.size)
            table.insert(0, "seed", seed)
            table.insert(0, "portion", float(portion))
            table.insert(0, "protocol", protocol)
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def linear_probe_scores_table(tile_scores: dict, test_ids: np.ndarray, test_y: np.ndarray,
                              class_names: Sequence[str]) -> pd.DataFrame:
    """Per-tile outputs of :func:`run_linear_probe`: portion, seed, tile_id, label, pred, p_<class>."""
    names = np.asarray([str(c) for c in class_names])
    frames = []
    for (portion, seed), probs in tile_scores.items():
        frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in names])
        frame.insert(0, "pred", names[probs.argmax(1)])
        frame.insert(0, "label", names[np.asarray(test_y)])
        frame.insert(0, "tile_id", np.asarray(test_ids).astype(str))
        frame.insert(0, "seed", seed)
        frame.insert(0, "portion", portion)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
