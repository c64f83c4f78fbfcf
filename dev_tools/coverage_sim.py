"""Coverage of the nominal 95% CV intervals, by simulation.

Usage: python dev_tools/coverage_sim.py [--n-sims 400] [--n-boot 1000] [--repeats 1 5] [--n-jobs 2]

Set-up (issue 11): n=60 patients, binary target from a logistic model on
``--n-features`` standard normal features (two carry signal), 5-fold
stratified CV repeated R times, each fold model an L2 logistic regression (liblinear) standing
in for the MIL head (the interval method is what is tested, not the head).
Target of an interval = the mean over the R x 5 fold models of their true AUC,
measured on 20,000 held-out samples from the same model.

Methods: ``patient_bootstrap`` (wsi_mil.cv.statistics.patient_bootstrap_ci,
the interval written to summary.json), ``corrected_t`` (Nadeau-Bengio
variance, unclipped here to count out-of-range bounds), and ``t_folds`` (the
old interval: Student t over folds at R=1, over repeat means at R>1).
Prints coverage (with its Monte-Carlo standard error), mean width and the
number of intervals reaching outside [0, 1].
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from wsi_mil.cv.statistics import corrected_t_interval, holdout_ratio, patient_bootstrap_ci
from wsi_mil.evaluation.metrics import MetricWarning, auc, repeated_cv_ci


def simulate(rng: np.random.Generator, n: int, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, beta.size))
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    return x, (rng.random(n) < p).astype(int)


def one_run(seed: int, n_repeats: int, args: argparse.Namespace, holdout: tuple[np.ndarray, np.ndarray]
            ) -> dict[str, tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    beta = np.zeros(args.n_features)
    beta[:2] = args.signal
    x, y = simulate(rng, args.n_patients, beta)
    x_out, y_out = holdout
    rows, fold_auc, true_auc, n_train, n_test, reps = [], [], [], [], [], []
    for r in range(n_repeats):
        cv = StratifiedKFold(5, shuffle=True, random_state=int(rng.integers(2**31 - 1)))
        for k, (tr, te) in enumerate(cv.split(x, y)):
            model = LogisticRegression(C=args.c, solver="liblinear").fit(x[tr], y[tr])
            score = model.decision_function(x[te])
            fold_auc.append(auc(y[te], score))
            true_auc.append(auc(y_out, model.decision_function(x_out)))
            n_train.append(tr.size)
            n_test.append(te.size)
            reps.append(r)
            rows.append(pd.DataFrame({"patient_id": te.astype(str), "repeat": r, "outer_fold": k,
                                      "target": y[te], "score": score}))
    preds = pd.concat(rows, ignore_index=True)
    target = float(np.mean(true_auc))
    boot = patient_bootstrap_ci(preds, "auc", n_boot=args.n_boot, seed=seed)
    nb = corrected_t_interval(np.array(fold_auc), holdout_ratio(np.array(n_train), np.array(n_test)))
    _, _, low, high = repeated_cv_ci(np.array(fold_auc), np.array(reps))
    return {"target": (target, target, target), "patient_bootstrap": (boot.estimate, boot.low, boot.high),
            "corrected_t": (nb.estimate, nb.low, nb.high), "t_folds": (boot.estimate, low, high)}


def _quiet_run(seed: int, n_repeats: int, args: argparse.Namespace, holdout: tuple[np.ndarray, np.ndarray]
               ) -> dict[str, tuple[float, float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return one_run(seed, n_repeats, args, holdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sims", type=int, default=400)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--n-patients", type=int, default=60)
    parser.add_argument("--n-features", type=int, default=5)
    parser.add_argument("--signal", type=float, default=0.8, help="coefficient of the two signal features")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the fold models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=2, help="processes (results do not depend on it)")
    args = parser.parse_args()
    beta = np.zeros(args.n_features)
    beta[:2] = args.signal
    holdout = simulate(np.random.default_rng([args.seed, 1]), 20_000, beta)
    print(f"n={args.n_patients} patients, 5-fold CV, {args.n_sims} simulations, {args.n_boot} bootstrap "
          f"replicates, nominal 95%")
    print(f"{'repeats':>7} {'method':<18} {'coverage':>8} {'mc_se':>6} {'width':>6} {'outside[0,1]':>12}")
    t0 = time.perf_counter()
    for n_repeats in args.repeats:
        results: dict[str, list] = {}
        runs = Parallel(n_jobs=args.n_jobs)(delayed(_quiet_run)(args.seed * 100_000 + s, n_repeats, args, holdout)
                                            for s in range(args.n_sims))
        for run in runs:
            for name, v in run.items():
                results.setdefault(name, []).append(v)
        target = np.array(results.pop("target"))[:, 0]
        for name, v in results.items():
            v = np.array(v)
            low, high = v[:, 1], v[:, 2]
            cover = float(np.mean((low <= target) & (target <= high)))
            se = float(np.sqrt(cover * (1 - cover) / len(target)))
            outside = int(np.sum((low < 0) | (high > 1)))
            print(f"{n_repeats:>7} {name:<18} {cover:>8.3f} {se:>6.3f} {np.mean(high - low):>6.3f} "
                  f"{outside:>12}")
    print(f"mean target AUC {np.mean(target):.3f}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
