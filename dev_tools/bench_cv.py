"""Benchmark the nested-CV engines: engine=batched against engine=loop on identical work.

Workloads (synthetic features with a planted signal, classification):

- default (issue 10): 200 slides x 1,000 tiles x 768-d, 5 x 5 nested, 4-point
  grid (lr {1e-3, 1e-4} x wd {0, 1e-4}), batch 16. For each head, both engines
  run the *same* unit of work, outer fold 0 of the same plan (20 inner fits +
  1 refit, same seeds, minibatches and tile samples), one after the other in
  this process; the ratio loop / batched is printed, with the batched engine's
  time split (batch assembly, train steps, optimizer, per-epoch evaluation),
  its achieved matmul throughput (FLOPs of the head counted by
  ``torch.utils.flop_counter`` on one epoch, forward + backward, scaled by the
  epochs run) against a plain ``torch.bmm`` of the first layer's shapes
  timed in the same run, and its peak memory (PSS of the process) against
  1.3 x feature bytes + 1 GB. ``--full`` also runs the whole nested CV
  end to end with the batched engine.
- ``--small`` (issue 10): 100 bags x 5-50 instances x 128-d, ABMIL at the
  defaults (50 epochs): the whole nested CV end to end with each engine (the
  loop with ``n_jobs=1``, its default, and with one single-threaded worker
  process per core, its best setting for small fits), and
  the batched run's arithmetic floor: its head FLOPs (counted on a second run)
  over the rate of a plain ``torch.bmm`` of the stacked first layer's shapes,
  hence the largest loop / batched ratio that matmul rate allows.
  ``--precision bf16`` runs both engines with the heads' matmuls in bfloat16
  (the floor then uses a bfloat16 ``torch.bmm``). ``--ablate`` instead runs
  the batched small-bag CV in this process as shipped, then without each of
  the allocator setting (``reuse_freed_memory``), the fused Adam kernel, the
  sigmoid-based tanh, the stacked weights' transposed layout (the previous
  ``(M, out, in)`` parameters, sliced on every call) and, under bf16, the
  one-time cast of each batch, then as shipped again (drift check;
  ``dev_tools/ablate_cv.py``).

    python dev_tools/bench_cv.py --models meanpool --epochs 50 --full
    python dev_tools/bench_cv.py --models abmil chowder dsmil --epochs 3 [--loop-jobs 2]
    python dev_tools/bench_cv.py --small
    python dev_tools/bench_cv.py --small --precision bf16
    python dev_tools/bench_cv.py --small --ablate [--precision bf16]
    python dev_tools/bench_cv.py --small --device cuda --precision bf16   # + GPU busy %
"""
from __future__ import annotations

import argparse
import contextlib
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


class _Sampler:
    """Calls ``sample()`` every ``interval`` seconds in a thread while the context is open."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakMemory(_Sampler):
    """Peak PSS and RSS of the process tree, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.peak_pss = self.peak_rss = 0

    def sample(self) -> None:
        pss, rss = _tree_memory_bytes()
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)


class GpuBusy(_Sampler):
    """``nvidia-smi``'s utilisation of this process's GPU (% of time a kernel ran), every ``interval`` s."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(interval)
        self.samples: list[float] = []
        self._index = str(torch.cuda.current_device())

    def sample(self) -> None:
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "-i", self._index, "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            self.samples.append(float(out.stdout.strip().splitlines()[0]))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else float("nan")


def _bmm_gflops(streams: int, rows: int, dim: int, width: int, repeats: int = 3,
                dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of torch.bmm forward + weight gradient on the first layer's shapes."""
    x, w = torch.randn(streams, rows, dim, dtype=dtype), torch.randn(streams, dim, width, dtype=dtype)
    g = torch.randn(streams, rows, width, dtype=dtype)
    torch.bmm(x, w)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.bmm(x, w)
        torch.bmm(x.transpose(1, 2), g)
        best = min(best, time.perf_counter() - t)
    return 2 * 2 * streams * rows * dim * width / best / 1e9


def _count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _one_fold(run, engine_fn) -> float:
    t = time.perf_counter()
    engine_fn(run, [(0, 0)])
    return time.perf_counter() - t


def _make_run(cohort, store, plan, settings, run_dir):
    from wsi_mil.cv.run_state import CVRun
    from wsi_mil.cv.settings import _data_fingerprint, grid_points
    from wsi_mil.training.fit import Targets

    fp = {**settings.fingerprint(), "data": _data_fingerprint(cohort, plan, settings)}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return CVRun(cohort, store, plan, settings, Targets.from_cohort(cohort), grid_points(settings), Path(run_dir), fp)


def _flops_per_fold(run, epochs_refit: int) -> float:
    """Head FLOPs of outer fold 0 (inner block + refit), counted on one epoch and scaled."""
    from wsi_mil.cv.engine import Stream, _inner_block
    from wsi_mil.training.fit_stacked import fit_stacked

    one = _make_run(run.cohort, run.store, run.plan, _replace(run.settings, epochs=1), run.run_dir / "flops")
    inner = _count_flops(lambda: _inner_block(one, [(0, 0)], "flop count")) if run.settings.mode == "nested" else 0.0
    fold = run.plan.repeats[0][0]
    params = one.params(one.points[0], 1, 0)
    refit = _count_flops(lambda: fit_stacked(run.store, run.targets, [Stream(fold.train, None, 1)], params,
                                             np.array([[1e-3]]), np.array([[0.0]]), np.array([[1]])))
    return inner * run.settings.epochs + refit * epochs_refit


def _small_floor(cohort, store, plan, settings, work, args, t_batched: float) -> float:
    """Seconds the batched small-bag CV needs for its matmuls alone, printed with what it is made of.

    The head FLOPs of the whole batched run (counted by ``torch.utils.flop_counter`` on a second run,
    forward + backward, training + per-epoch validation + refits, packing's padding rows included)
    over the rate of a plain ``torch.bmm`` of the stacked first layer's shapes (all inner models x a
    16-bag batch of mean size x dim x 128) timed in this run.
    """
    from wsi_mil.cv.engine import run_cv
    from wsi_mil.cv.settings import grid_points

    out = work / "small_flops"
    shutil.rmtree(out, ignore_errors=True)
    flops = _count_flops(lambda: run_cv(cohort, store, plan, _replace(settings, engine="batched"), out))
    models = len(grid_points(settings)) * args.outer * args.inner
    rows = int(round(settings.batch_size * float(np.mean(store.n_tiles))))
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    rate = _bmm_gflops(models, rows, args.dim, 128, dtype=dtype)
    floor = flops / rate / 1e9
    print(f"[small] head FLOPs {flops / 1e12:.2f} TFLOP; plain {str(dtype)[6:]} torch.bmm ({models} x {rows} x "
          f"{args.dim} x 128, "
          f"fwd + weight grad) {rate:.0f} GFLOP/s -> arithmetic floor {floor:.1f} s; batched "
          f"{flops / t_batched / 1e9:.0f} GFLOP/s = {100 * floor / t_batched:.0f}% of it")
    return floor


def _replace(settings, **kw):
    from dataclasses import replace

    return replace(settings, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["meanpool", "abmil"])
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="also the whole nested CV, batched engine, end to end")
    ap.add_argument("--no-loop", action="store_true", help="skip the loop engine (no ratio)")
    ap.add_argument("--loop-jobs", type=int, default=1,
                    help="n_jobs of the loop on the 768-d workload (--small runs 1 and one per core)")
    ap.add_argument("--small", action="store_true", help="100 bags x 5-50 x 128-d, ABMIL, whole CV, both engines")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="the heads' precision in both engines (bf16: autocast matmuls)")
    ap.add_argument("--ablate", action="store_true",
                    help="with --small: the batched CV as shipped and without each of this round's speed-ups")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (then GPU busy %% is sampled with nvidia-smi)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from loguru import logger

    logger.enable("wsi_mil")
    logger.remove()
    import sys

    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {message}")

    from wsi_mil.cv.engine import CVSettings, _run_batched, available_cores, run_cv
    from wsi_mil.cv.loop import _run_loop
    from wsi_mil.data.bags import BagStore
    from wsi_mil.data.cohort import read_cohort
    from wsi_mil.data.folds import make_fold_plan
    from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort

    torch.set_num_threads(available_cores())
    base_pss, _ = _tree_memory_bytes()
    print(f"cores {available_cores()}, torch threads {torch.get_num_threads()}; "
          f"python + torch baseline PSS {base_pss / 2**20:.0f} MiB")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_cv_"))
    if args.small:
        args.slides, args.dim, args.models = 100, 128, ["abmil"]
    tag = "small" if args.small else f"{args.slides}x{args.tiles}x{args.dim}"
    data = work / f"data_{tag}"
    if (data / "cohort.csv").exists():
        cohort_csv, features_dir = data / "cohort.csv", data / "features"
    else:
        t0 = time.perf_counter()
        n_tiles = (5, 50) if args.small else (args.tiles, args.tiles)
        syn = write_synthetic_cohort(data, n_patients=args.slides // 2, slides_per_patient=(2, 2),
                                     n_tiles=n_tiles, dim=args.dim, seed=0)
        cohort_csv, features_dir = syn.cohort_csv, syn.features_dir
        print(f"synthetic cohort {tag} written in {time.perf_counter() - t0:.0f} s")
    cohort = read_cohort(cohort_csv, "classification")
    plan = make_fold_plan(cohort, args.outer, args.inner, 1, seed=0)
    store = BagStore.from_dir(features_dir, cohort.slide_ids)
    feat = store.nbytes
    print(f"features {feat / 2**20:.0f} MiB ({store.features.dtype}); memory target "
          f"<= 1.3 x features + 1 GiB = {(1.3 * feat + 2**30) / 2**20:.0f} MiB")
    for model in args.models:
        settings = CVSettings("classification", model, epochs=args.epochs, batch_size=16, n_tiles=args.tiles,
                              precision=args.precision, device=args.device)
        if args.small and args.ablate:
            from ablate_cv import ablate  # dev_tools/ablate_cv.py

            ablate(cohort, store, plan, settings, work)
            continue
        if args.small:
            # the loop as shipped (n_jobs=1: one process, all cores' threads) and at its best here
            # (one single-threaded worker process per core): small fits do not use 2 threads well
            runs = [("batched", 1)] + ([] if args.no_loop else [("loop", 1)] + (
                [("loop", available_cores())] if available_cores() > 1 else []))
            loops = {}
            for engine, n_jobs in runs:
                out = work / f"small_{engine}"
                shutil.rmtree(out, ignore_errors=True)
                gpu = args.device == "cuda" and engine == "batched"
                t = time.perf_counter()
                with GpuBusy() if gpu else contextlib.nullcontext() as busy:
                    res = run_cv(cohort, store, plan, _replace(settings, engine=engine, n_jobs=n_jobs), out)
                wall = time.perf_counter() - t
                print(f"[small {model} {engine} {args.precision}"
                      + (f" n_jobs={n_jobs}" if engine == "loop" else "")
                      + f"] whole nested {args.outer}x{args.inner}, {args.epochs} epochs: "
                      f"wall {wall:.1f} s, mean AUC {res.summary['mean']:.3f}"
                      + (f", GPU busy {busy.mean:.0f}% (target >= 90%)" if busy is not None else ""), flush=True)
                if engine == "batched":
                    t_b = wall
                    floor = _small_floor(cohort, store, plan, settings, work, args, t_b) if args.device == "cpu" else None
                else:
                    loops[n_jobs] = wall
            for n_jobs, wall in loops.items():
                print(f"[small {model}] loop (n_jobs={n_jobs}) / batched = {wall / t_b:.1f}x"
                      + (f"; at most {wall / floor:.1f}x at the arithmetic floor above" if floor else ""))
            continue
        root = work / f"run_{model}"
        shutil.rmtree(root, ignore_errors=True)
        run = _make_run(cohort, store, plan, settings, root / "batched")
        with PeakMemory() as mem, (GpuBusy() if args.device == "cuda" else contextlib.nullcontext()) as busy:
            t_b = _one_fold(run, _run_batched)
        if busy is not None:
            print(f"[{model}]   GPU busy {busy.mean:.0f}% of the batched run ({len(busy.samples)} samples; "
                  f"target >= 90%)")

        import json

        fold_json = json.loads((root / "batched" / "folds" / "r0_f0.json").read_text())
        sel_epochs = int(fold_json["row"]["epochs"])
        tm = dict(run.timings)
        flops = _flops_per_fold(run, sel_epochs)
        s_streams = args.inner
        peak = _bmm_gflops(s_streams, 16 * args.tiles, args.dim, 128,
                           dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
        achieved = flops / t_b / 1e9
        other = tm.get("assemble", 0) + tm.get("optimizer", 0)
        print(f"[{model}] outer fold 0 ({len(run.points) * args.inner} inner fits + 1 refit, {args.epochs} epochs): batched {t_b:.1f} s")
        print(f"[{model}]   split: assemble {tm.get('assemble', 0):.1f} s, train steps {tm.get('train', 0):.1f} s, "
              f"optimizer {tm.get('optimizer', 0):.1f} s, evaluation {tm.get('evaluate', 0):.1f} s; "
              f"assembly + optimizer = {100 * other / t_b:.0f}% of the run, evaluation "
              f"{100 * tm.get('evaluate', 0) / t_b:.0f}% (its own forward passes included)")
        print(f"[{model}]   head FLOPs {flops / 1e12:.2f} TFLOP -> {achieved:.1f} GFLOP/s; plain {args.precision} torch.bmm of "
              f"the first layer's shapes ({s_streams} x {16 * args.tiles} x {args.dim} x 128, fwd + weight grad) "
              f"{peak:.1f} GFLOP/s -> {100 * achieved / peak:.0f}% of it")
        print(f"[{model}]   peak PSS {mem.peak_pss / 2**20:.0f} MiB (x{mem.peak_pss / feat:.2f} of features; "
              f"target {(1.3 * feat + 2**30) / 2**20:.0f} MiB -> "
              f"{'OK' if mem.peak_pss <= 1.3 * feat + 2**30 else 'OVER'})")
        if not args.no_loop:
            loop_run = _make_run(cohort, store, plan, _replace(settings, engine="loop", n_jobs=args.loop_jobs),
                                 root / "loop")
            t_l = _one_fold(loop_run, _run_loop)
            lj = json.loads((root / "loop" / "folds" / "r0_f0.json").read_text())
            same = lj["row"]["epochs"] == fold_json["row"]["epochs"] and lj["row"]["lr"] == fold_json["row"]["lr"]
            print(f"[{model}]   loop (n_jobs={args.loop_jobs}) {t_l:.1f} s on the same fold -> loop / batched = "
                  f"{t_l / t_b:.1f}x; "
                  f"same selection: {same}; test AUC batched {fold_json['row']['auc']:.4f}, "
                  f"loop {lj['row']['auc']:.4f}")
        if args.full:
            t = time.perf_counter()
            res = run_cv(cohort, store, plan, settings, root / "full")
            print(f"[{model}] whole nested {args.outer}x{args.inner} CV, {args.epochs} epochs, batched: "
                  f"wall {time.perf_counter() - t:.1f} s, mean AUC {res.summary['mean']:.3f}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
