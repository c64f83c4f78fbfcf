"""How much the demo's reported results depend on the seed.

Runs the default demo once (or reuses ``--workdir``'s), then re-runs the
demo's nested CV of every head with seeds 0-4 (a new patient-level fold plan,
initialisation, batch order and tile samples each time) on the same features,
with per-fit standardisation on (the demo's default) and off, and prints each
head's mean metric per seed and its range (max - min); the target is a range
<= 0.05 for every head the demo reports.

    python dev_tools/demo_stability.py --workdir /tmp/demo_stab
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SEEDS = (0, 1, 2, 3, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="demo output folder (created or reused)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--no-unscaled", action="store_true", help="skip the standardize=false comparison")
    args = ap.parse_args()
    from loguru import logger

    from wsi_mil.cli import cv, demo
    from wsi_mil.cli.common import load_stage_config
    from wsi_mil.io.paths import features_dir, tiling_name

    work = Path(args.workdir or tempfile.mkdtemp(prefix="demo_stability_"))
    cfg = load_stage_config("demo", {"output_dir": str(work), "log_level": "WARNING", "n_heatmaps": 0})
    t0 = time.perf_counter()
    if demo.run(cfg):
        raise SystemExit("the demo failed")
    logger.remove()
    print(f"demo (or its reuse) {time.perf_counter() - t0:.0f} s; features in {work / 'features'}")
    feats = features_dir(work / "features", str(cfg.encoder), tiling_name(float(cfg.target_mpp), int(cfg.tile_size)))
    variants = [True] if args.no_unscaled else [True, False]
    rows = []
    for standardize in variants:
        jobs = demo.cv_configs(cfg, work / "cohort" / "cohort.csv", feats, work / "stability", log_level="WARNING",
                               standardize=standardize)
        for task_name, head, job_cfg in jobs:
            means = []
            for seed in args.seeds:
                out = work / "stability" / f"standardize_{standardize}" / f"seed{seed}"
                job_cfg.output_dir, job_cfg.seed = str(out), seed
                if cv.run(job_cfg):
                    raise SystemExit(f"cv {head} seed {seed} failed")
                summary = json.loads((out / task_name / str(cfg.encoder) / head / "summary.json").read_text())
                means.append(summary["mean"])
            rows.append((standardize, task_name, head, summary["metric"], means))
            spread = max(means) - min(means)
            print(f"standardize={str(standardize).lower():5} {task_name:8} {head:9} {summary['metric']:8} "
                  + " ".join(f"{m:.3f}" for m in means) + f" | range {spread:.3f} "
                  + ("OK" if spread <= 0.05 else "OVER 0.05"), flush=True)
    print("\n| standardize | task | head | metric | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | range (max - min) |")
    print("|---|---|---|---|" + "---|" * len(args.seeds) + "---|")
    for standardize, task_name, head, metric, means in rows:
        print(f"| {str(standardize).lower()} | {task_name} | {head} | {metric} | "
              + " | ".join(f"{m:.3f}" for m in means) + f" | {max(means) - min(means):.3f} |")


if __name__ == "__main__":
    main()
