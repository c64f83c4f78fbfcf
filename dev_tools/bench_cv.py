"""Benchmark the nested CV engine: wall time and memory of a full 5 x 5 nested CV.

Default workload (issue 5): 200 slides x 1,000 tiles x 768-d synthetic features
(float16 in memory), 4-point grid (lr {1e-3, 1e-4} x wd {0, 1e-4}), 5 outer x
5 inner folds, 20 epochs, for MeanPool and ABMIL. Prints, per head: wall time,
number of fits, peak memory of the whole process tree (sum of PSS, so pages of
the shared memory-mapped feature array count once; and sum of RSS), and the
ratio to the feature bytes; target: peak <= 1.3 x feature bytes + 1 GB.

``--time-fits`` is for machines too small or too busy to run it: it runs
``n_jobs`` inner fits in parallel worker processes (memory-mapped features,
as the real run) and then one refit, measures each fit's CPU seconds
(``time.process_time`` inside the worker: independent of other load on the
machine) and the tree memory, and extrapolates the full nested CV:
CPU = n_outer * (n_grid * n_inner * cpu_inner + cpu_refit); wall on an
otherwise idle machine ~= CPU / n_jobs (one torch thread per fit).

    nice python dev_tools/bench_cv.py --n-jobs 2
    nice python dev_tools/bench_cv.py --models abmil --time-fits
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _tree_memory_bytes() -> tuple[int, int]:
    """(sum of PSS, sum of RSS) of this process and its descendants, from /proc."""
    me = os.getpid()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {me}, [me]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    pss = rss = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


class PeakMemory:
    """Samples the process tree memory every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_pss, self.peak_rss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pss, rss = _tree_memory_bytes()
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timed_fit(store, targets, train, val, params, n_threads: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fit, measured inside the worker."""
    from wsi_mil.training.fit import fit

    torch.set_num_threads(n_threads)
    cpu, wall = time.process_time(), time.perf_counter()
    fit(store, targets, train, params, val_idx=val)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["meanpool", "abmil"])
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--backend", default="loky", choices=["loky", "threading"])
    ap.add_argument("--time-fits", action="store_true", help="time one inner fit + one refit and extrapolate")
    ap.add_argument("--measure-epochs", type=int, default=None,
                    help="--time-fits: run fits this long and scale CPU linearly to --epochs")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from loguru import logger

    logger.enable("wsi_mil")  # progress lines on stderr

    from wsi_mil.cv.engine import CVSettings, available_cores, grid_points, run_cv
    from wsi_mil.data.bags import BagStore
    from wsi_mil.data.cohort import read_cohort
    from wsi_mil.data.folds import make_fold_plan
    from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort
    from wsi_mil.training.fit import FitParams, Targets

    base_pss, base_rss = _tree_memory_bytes()
    print(f"baseline (python + torch, no features, no workers): PSS {base_pss / 2**20:.0f} MiB")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_cv_"))
    t0 = time.perf_counter()
    if (work / "data" / "cohort.csv").exists():  # reuse a --workdir from a previous run
        cohort_csv, features_dir = work / "data" / "cohort.csv", work / "data" / "features"
        print(f"reusing synthetic cohort in {work}")
    else:
        syn = write_synthetic_cohort(work / "data", n_patients=args.slides // 2, slides_per_patient=(2, 2),
                                     n_tiles=(args.tiles, args.tiles), dim=args.dim, seed=0)
        cohort_csv, features_dir = syn.cohort_csv, syn.features_dir
        print(f"synthetic cohort: {args.slides} slides x {args.tiles} tiles x {args.dim} "
              f"written in {time.perf_counter() - t0:.1f}s -> {work}")
    cohort = read_cohort(cohort_csv, "classification")
    plan = make_fold_plan(cohort, args.outer, args.inner, 1, seed=0)
    print(f"cores: {available_cores()}, n_jobs: {args.n_jobs}, backend: {args.backend}, "
          f"torch threads per fit: {max(1, available_cores() // args.n_jobs)}")
    for model in args.models:
        settings = CVSettings("classification", model, epochs=args.epochs, batch_size=16,
                              n_tiles=args.tiles, n_jobs=args.n_jobs, backend=args.backend)
        n_grid = len(grid_points(settings))
        n_fits = args.outer * (n_grid * args.inner + 1)
        memmap = work / f"{model}_features.npy" if args.n_jobs > 1 and args.backend == "loky" else None
        with PeakMemory() as mem:
            t_load = time.perf_counter()
            store = BagStore.from_dir(features_dir, cohort.slide_ids, memmap_path=memmap)
            t_load = time.perf_counter() - t_load
            t = time.perf_counter()
            if args.time_fits:
                from joblib import Parallel, delayed

                threads = max(1, available_cores() // args.n_jobs)
                targets = Targets.from_cohort(cohort)
                fold = plan.repeats[0][0]
                run_epochs = args.measure_epochs or args.epochs
                scale = args.epochs / run_epochs
                params = FitParams(model, lr=1e-3, epochs=run_epochs, batch_size=16, n_tiles=args.tiles)
                warm = FitParams(model, lr=1e-3, epochs=1, batch_size=2, n_tiles=args.tiles)
                Parallel(n_jobs=args.n_jobs, backend=args.backend)(  # imports, allocator, page cache
                    delayed(_timed_fit)(store, targets, fold.train[:4], None, warm, threads)
                    for _ in range(args.n_jobs))
                inner = Parallel(n_jobs=args.n_jobs, backend=args.backend)(
                    delayed(_timed_fit)(store, targets, tr, va, params, threads)
                    for tr, va in fold.inner[: args.n_jobs]
                )
                refit = Parallel(n_jobs=args.n_jobs, backend=args.backend)(
                    [delayed(_timed_fit)(store, targets, fold.train, None, params, threads)])[0]
                cpu_inner = float(np.mean([c for c, _ in inner])) * scale
                cpu_refit = refit[0] * scale
                cpu = args.outer * (n_grid * args.inner * cpu_inner + cpu_refit)
                wall = cpu / args.n_jobs
                what = (f"EXTRAPOLATED to an idle machine from {len(inner)} parallel inner fits of "
                        f"{run_epochs} epochs (CPU {cpu_inner:.1f}s each at {args.epochs} epochs, wall "
                        f"{np.mean([w for _, w in inner]):.1f}s here) + 1 refit (CPU {cpu_refit:.1f}s); "
                        f"total CPU {cpu:.0f}s")
            else:
                result = run_cv(cohort, store, plan, settings, work / f"run_{model}")
                wall = time.perf_counter() - t
                what = f"measured; mean AUC {result.summary['mean']:.3f}"
        feat = store.nbytes
        budget = 1.3 * feat + 2**30
        print(f"[{model}] nested {args.outer}x{args.inner}, grid {n_grid}, {args.epochs} epochs, {n_fits} fits: "
              f"wall {wall:.0f}s ({wall / 60:.1f} min) [{what}]; feature load {t_load:.1f}s")
        print(f"[{model}] features {feat / 2**20:.0f} MiB; peak tree PSS {mem.peak_pss / 2**20:.0f} MiB "
              f"(x{mem.peak_pss / feat:.2f} of features), peak tree RSS {mem.peak_rss / 2**20:.0f} MiB; "
              f"target <= {budget / 2**20:.0f} MiB -> {'OK' if mem.peak_pss <= budget else 'OVER'}")
        del store
        if memmap is not None:
            memmap.unlink(missing_ok=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
