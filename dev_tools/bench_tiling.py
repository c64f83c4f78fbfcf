"""Seconds to tile a 40,000 x 30,000 px synthetic 40x slide (mask + coords; previews apart).

Usage: python dev_tools/bench_tiling.py [--cache-dir DIR] [--width W --height H] [--repeats N]

The slide is written once (tile by tile, ~1 min) and reused from the cache folder.
Prints the median over ``--repeats`` runs of: low-res read, tissue mask, grid, total,
and the preview separately. Nothing is asserted: compare the numbers with the goal
(< 2 s for mask + coords).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from wsi_mil.io.slide_table import read_slide_table
from wsi_mil.pipeline.tile_stage import run_tiling
from wsi_mil.slides import open_slide
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling.grid import make_tile_grid
from wsi_mil.tiling.lowres import read_lowres
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.preview import make_preview
from wsi_mil.tiling.tissue import make_tissue_mask


def _slide(cache_dir: Path, width: int, height: int) -> Path:
    path = cache_dir / f"bench_synthetic_{width}x{height}_mpp0.25.svs"
    if not path.exists():
        start = time.perf_counter()
        write_synthetic_slide(path, width=width, height=height, mpp=0.25, flavor="aperio",
                              tumor_fraction=0.2, seed=1, mask_downsample=32)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
    return path


def _time_once(path: Path, params: TilingParams) -> dict[str, float]:
    times = {}
    t0 = time.perf_counter()
    with open_slide(path) as reader:
        t1 = time.perf_counter()
        lowres = read_lowres(reader, params.tissue.mask_mpp)
        t2 = time.perf_counter()
        mask = make_tissue_mask(lowres.rgb, params.tissue, lowres.mpp)
        t3 = time.perf_counter()
        grid = make_tile_grid(mask, lowres.downsample_xy, reader.dimensions, reader.mpp,
                              reader.level_downsamples, reader.get_best_level_for_downsample,
                              params.target_mpp, params.tile_size, params.mpp_tolerance,
                              params.min_tissue, params.full_tiles_only)
        t4 = time.perf_counter()
        make_preview(lowres.rgb, mask, grid, lowres.downsample_xy).save(
            Path(tempfile.gettempdir()) / "bench_tiling_preview.png")
        t5 = time.perf_counter()
    times.update(open=t1 - t0, lowres_read=t2 - t1, tissue_mask=t3 - t2, grid=t4 - t3,
                 total_mask_coords=t4 - t0, preview=t5 - t4, n_tiles=len(grid),
                 mask_px=mask.size)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "wsi_mil_bench")
    parser.add_argument("--width", type=int, default=40_000)
    parser.add_argument("--height", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = _slide(args.cache_dir, args.width, args.height)
    params = TilingParams(target_mpp=0.5, tile_size=224)
    runs = [_time_once(path, params) for _ in range(args.repeats)]
    stage = []  # the whole stage for one slide: open, mask, grid, coords h5 (no preview)
    with tempfile.TemporaryDirectory() as out:
        table = read_slide_table(path)
        for _ in range(args.repeats):
            start = time.perf_counter()
            run_tiling(table, out, params, overwrite=True, previews=False)
            stage.append(time.perf_counter() - start)
    print(f"slide {args.width} x {args.height} px @ 0.25 um/px, target 0.5 um/px, 224 px tiles, "
          f"{int(runs[0]['n_tiles'])} tiles kept, mask {int(runs[0]['mask_px'])} px; "
          f"median of {args.repeats} runs:")
    for key in ("open", "lowres_read", "tissue_mask", "grid", "total_mask_coords", "preview"):
        print(f"  {key:<18} {statistics.median(r[key] for r in runs):8.3f} s")
    print(f"  {'run_tiling stage':<18} {statistics.median(stage):8.3f} s  (coords h5 written, "
          "no preview)")


if __name__ == "__main__":
    main()
