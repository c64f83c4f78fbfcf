"""Peak memory of slide zero-shot (MI-Zero) against cohort size: streaming vs loading every slide.

    python dev_tools/bench_zero_shot_rss.py [--slides 100 1000] [--tiles 1000] [--dim 256]

Writes ``max(--slides)`` synthetic slides (wsi_mil h5, float16 features) once,
then for each cohort size runs ``run_zero_shot_slides`` in a fresh process
(``stream``) and, for contrast, the old way of holding every slide's features
before scoring (``load_all``), and prints each process's peak RSS
(``ru_maxrss``). Streaming peak RSS stays flat as the cohort grows; loading
everything grows with it. Numbers are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_CLASSES = 2


def write_cohort(root: Path, n_slides: int, n_tiles: int, dim: int) -> None:
    from wsi_mil.io.features import write_features

    rng = np.random.default_rng(0)
    feats_dir = root / "features"
    coords = np.zeros((n_tiles, 3), np.int64)
    attrs = {"wsi_mil_version": "bench", "encoder": "bench_clip", "weights_sha256": "0" * 64}
    for i in range(n_slides):
        feats = rng.normal(size=(n_tiles, dim)).astype(np.float16)
        write_features(feats_dir / f"s{i:05d}.h5", feats, coords, coords[:, :2], attrs,
                       dtype="float16")
    protos = rng.normal(size=(N_CLASSES, dim)).astype(np.float32)
    np.save(root / "prototypes.npy", protos)


def child(root: Path, n_slides: int, mode: str) -> None:
    from wsi_mil.evaluation.text_side import ClassText
    from wsi_mil.evaluation.zero_shot import mizero_slide_scores
    from wsi_mil.evaluation.zero_shot_runs import run_zero_shot_slides
    from wsi_mil.io.feature_sources import read_slide_features
    from wsi_mil.io.features import FeatureProvenance

    ids = [f"s{i:05d}" for i in range(n_slides)]
    cohort = root / f"cohort_{n_slides}.csv"
    pd.DataFrame({"slide_id": ids, "patient_id": ids,
                  "label": [["A", "B"][i % 2] for i in range(n_slides)]}).to_csv(cohort, index=False)
    protos = np.load(root / "prototypes.npy")
    start = time.perf_counter()
    if mode == "stream":
        text = ClassText(prototypes=protos, provenance=FeatureProvenance("bench_clip", "0" * 64))
        run_zero_shot_slides(root / "features", cohort, text, root / f"out_{mode}_{n_slides}",
                             top_ks=(1, 10, "all"), logit_scale=100.0, n_bootstrap=100)
    else:  # the previous implementation: every slide's features held before scoring
        slides = {sid: np.asarray(read_slide_features(root / "features", sid), np.float32)
                  for sid in ids}
        mizero_slide_scores(slides, protos, (1, 10, "all"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"mode": mode, "slides": n_slides, "peak_rss_mib": round(peak_mib, 1),
                      "seconds": round(time.perf_counter() - start, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--tiles", type=int, default=1000, help="tiles per slide")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=["stream", "load_all"])
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), args.child[2])
        return
    with tempfile.TemporaryDirectory(prefix="bench_zs_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_cohort(root, max(args.slides), args.tiles, args.dim)
        size_mib = sum(p.stat().st_size for p in (root / "features").glob("*.h5")) / 2**20
        print(f"{max(args.slides)} slides x {args.tiles} tiles x {args.dim} (float16): "
              f"{size_mib:.0f} MiB on disk, written in {time.perf_counter() - start:.1f} s; "
              f"float32 in memory: {max(args.slides) * args.tiles * args.dim * 4 / 2**20:.0f} MiB")
        print(f"{'mode':<9} {'slides':>6} {'peak RSS MiB':>13} {'seconds':>8}")
        for mode in args.modes:
            for n in sorted(args.slides):
                proc = subprocess.run([sys.executable, __file__, "--child", str(root), str(n), mode],
                                      capture_output=True, text=True, check=True)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{mode:<9} {n:>6} {res['peak_rss_mib']:>13.1f} {res['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
