"""Print tile-level evaluation numbers on synthetic features with a planted class signal.

    /work/venv/bin/python dev_tools/bench_tile_tasks.py [--dim 64] [--signal 1.5] [--text-noise 1.0]

Linear probe (both protocols, several training portions) and the few-shot table
(logreg, random-init head, text-init head, CITE-style head on an unaligned random
"text" space, zero-shot) at k = 1, 4, 16 over 5 seeds, with the 95% interval of
the seed mean (test bootstrap, same resamples for every seed).
Numbers are printed, never asserted.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wsi_mil.evaluation.few_shot import run_few_shot
from wsi_mil.evaluation.linear_probe import run_linear_probe
from wsi_mil.evaluation.tables import wide_macro_table
from wsi_mil.testing.synthetic_tiles import make_synthetic_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=200)
    parser.add_argument("--n-classes", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--signal", type=float, default=1.5)
    parser.add_argument("--text-noise", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tiles = make_synthetic_tiles(args.n_per_class, args.n_classes, args.dim, args.signal,
                                 args.text_noise, seed=0)
    (trx, try_), (tex, tey) = tiles.part("train"), tiles.part("test")
    print(f"synthetic tiles: {len(try_)} train / {len(tey)} test, {args.n_classes} classes, "
          f"dim {args.dim}, signal {args.signal}, text noise {args.text_noise}")
    for protocol in ("reference", "logreg_cv"):
        t0 = time.perf_counter()
        table = run_linear_probe(trx, try_, tex, tey, protocol=protocol, portions=(0.05, 0.2, 1.0),
                                 class_names=tiles.class_names, n_bootstrap=200)
        wide = wide_macro_table(table, ["portion", "n_train"])
        ci = table[(table["class"] == "macro") & (table["metric"] == "auc")][["ci_low", "ci_high"]]
        wide["auc_ci95"] = [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in ci.to_numpy()]
        print(f"\nlinear probe, protocol={protocol} ({time.perf_counter() - t0:.1f} s)")
        print(wide[["portion", "n_train", "auc", "auc_ci95", "balanced_accuracy", "f1"]]
              .to_string(index=False, float_format="%.3f"))
    t0 = time.perf_counter()
    class_text = np.random.default_rng(1).normal(size=(args.n_classes, 48))  # unaligned "text"
    result = run_few_shot(trx, try_, tex, tey, ks=(1, 4, 16), seeds=range(args.seeds),
                          methods=("logreg", "random_init", "text_init", "cite", "zero_shot"),
                          class_names=tiles.class_names, prototypes=tiles.text_prototypes,
                          class_text=class_text, n_bootstrap=100)
    print(f"\nfew-shot macro balanced accuracy, mean (sd) [95% CI] over {args.seeds} seeds "
          f"({time.perf_counter() - t0:.1f} s); chance = {1 / args.n_classes:.3f}")
    for metric in ("balanced_accuracy", "auc"):
        table = result.table(metric)
        cols = ["k"]
        for method in ("logreg", "random_init", "text_init", "cite", "zero_shot"):
            table[method] = [f"{m:.3f} ({s:.3f}) [{lo:.3f}, {hi:.3f}]" if m == m else "" for m, s, lo, hi
                             in table[[f"{method}_{x}" for x in ("mean", "sd", "ci_low", "ci_high")]]
                             .to_numpy()]
            cols.append(method)
        print(f"\nfew-shot macro {metric}")
        print(table[cols].to_string(index=False))


if __name__ == "__main__":
    main()
