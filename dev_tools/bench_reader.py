"""Tiles/s of the tile reader on a 40,000 x 30,000 synthetic 40x JPEG slide at 20x / 224 px.

Usage: python dev_tools/bench_reader.py [--cache-dir DIR] [--levels auto|1] [--sample-a N]
                                        [--procs 1,2] [--resample dct]

Measures, over the tissue tiles of the slide (coords from the tiling library):
  (a) DeepZoomGenerator.get_tile per tile (the reference's path), on a fixed
      subsample of ``--sample-a`` tiles (per-tile rate);
  (b) wsi_mil's TileReader (fast mode) over every tissue tile;
  (c) the decode-once limit: every stored JPEG tile that a tissue tile touches,
      decoded once at full scale with libjpeg-turbo, nothing else;
with 1 and 2 processes (each its own slide handle; tiles split into raster
bands), and prints b/a and b/c. Targets: b >= 5 a and b >= 0.8 c.

``--levels auto`` writes the usual 2x pyramid (20x is then read from the stored
2x level); ``--levels 1`` writes level 0 only, as in a 4x (Aperio) pyramid where
20x must come from 40x (then b uses DCT scaling, and c is the full-scale decode).
The slide is written once into the cache folder and reused.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator

from wsi_mil.encoders.tiff_direct import TiffLevelSource
from wsi_mil.encoders.tile_reader import TileReader, plan_tiles, read_order
from wsi_mil.slides import open_slide
from wsi_mil.testing.synthetic_slides import write_synthetic_slide
from wsi_mil.tiling.params import TilingParams
from wsi_mil.tiling.tile import tile_slide

TILE = 224


def make_slide(cache_dir: Path, width: int, height: int, levels: str) -> Path:
    path = cache_dir / f"bench_reader_{width}x{height}_levels-{levels}.svs"
    if not path.exists():
        t0 = time.perf_counter()
        write_synthetic_slide(path, width=width, height=height, mpp=0.25, flavor="aperio",
                              tumor_fraction=0.2, seed=1, mask_downsample=32,
                              n_levels=None if levels == "auto" else int(levels))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")
    return path


def tissue_coords(path: Path) -> np.ndarray:
    """Tissue tiles at 0.5 um/px (the tiling library), cached next to the slide."""
    cached = path.with_suffix(".coords.npy")
    if cached.exists():
        return np.load(cached)
    with open_slide(path) as reader:
        tiling = tile_slide(reader, TilingParams(target_mpp=0.5, tile_size=TILE))
    coords = tiling.grid.coords[read_order(tiling.grid.coords)]
    np.save(cached, coords)
    return coords


def _run_get_tile(args: tuple[str, np.ndarray]) -> int:
    path, coords = args
    dz = DeepZoomGenerator(openslide.OpenSlide(path), TILE, 0, False)
    for level, col, row in coords:
        np.asarray(dz.get_tile(int(level), (int(col), int(row))))
    return len(coords)


def _run_reader(args: tuple[str, np.ndarray, str]) -> int:
    path, coords, resample = args
    n = 0
    with TileReader(path, coords, TILE, resample=resample) as reader:
        for _ in reader.iter_tiles():
            n += 1
    return n


def stored_tiles(path: str, coords: np.ndarray) -> tuple[int, list[tuple[int, int]]]:
    """(level, sorted stored tiles (row, col)) that the tissue tiles' regions touch."""
    osr = openslide.OpenSlide(path)
    plan = plan_tiles(osr, coords, TILE)
    level = int(plan.level[0])
    src = TiffLevelSource(path, osr.level_dimensions[level])
    tw, th = src.tile_w_px, src.tile_h_px
    keys = set()
    for (x, y), (w, h) in zip(plan.xy_level.astype(int), plan.size_level, strict=True):
        for r in range(y // th, (y + h - 1) // th + 1):
            for c in range(x // tw, (x + w - 1) // tw + 1):
                keys.add((r, c))
    src.close()
    return level, sorted(keys)


def _run_decode(args: tuple[str, tuple[int, int], list[tuple[int, int]]]) -> int:
    path, level_size, keys = args
    with TiffLevelSource(path, level_size) as src:
        for r, c in keys:
            src.read_tile(r, c)
    return len(keys)


def timed(pool, func, jobs) -> float:
    t0 = time.perf_counter()
    if pool is None:
        for job in jobs:
            func(job)
    else:
        pool.map(func, jobs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default="/tmp/wsi_mil_bench_extract")
    ap.add_argument("--width", type=int, default=40000)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--levels", default="auto", help="auto (2x pyramid) or 1 (level 0 only)")
    ap.add_argument("--sample-a", type=int, default=300, help="tiles timed for get_tile")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--resample", default="dct")
    args = ap.parse_args()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = str(make_slide(cache, args.width, args.height, args.levels))
    coords = tissue_coords(Path(path))
    osr = openslide.OpenSlide(path)
    level, keys = stored_tiles(path, coords)
    level_size = osr.level_dimensions[level]
    sample = coords[np.linspace(0, len(coords) - 1, min(args.sample_a, len(coords))).astype(int)]
    print(f"slide {path}: {osr.dimensions[0]}x{osr.dimensions[1]} px, levels "
          f"{osr.level_dimensions}; {len(coords)} tissue tiles at dz level {coords[0, 0]} "
          f"read from level {level}, touching {len(keys)} stored tiles; resample="
          f"{args.resample}")
    for procs in (int(p) for p in args.procs.split(",")):
        ctx = mp.get_context("fork")
        pool = ctx.Pool(procs) if procs > 1 else None
        bands = np.array_split(np.arange(len(coords)), procs)
        t_a = timed(pool, _run_get_tile, [(path, sample[b]) for b in
                                           np.array_split(np.arange(len(sample)), procs)])
        t_b = timed(pool, _run_reader, [(path, coords[b], args.resample) for b in bands])
        key_bands = np.array_split(np.arange(len(keys)), procs)
        t_c = timed(pool, _run_decode, [(path, level_size, [keys[i] for i in b])
                                        for b in key_bands])
        if pool is not None:
            pool.close()
            pool.join()
        a, b = len(sample) / t_a, len(coords) / t_b
        c = len(coords) / t_c  # tiles/s if reading cost only the stored-tile decodes
        print(f"[{procs} proc] (a) get_tile {a:8.1f} tiles/s | (b) TileReader {b:8.1f} "
              f"tiles/s | (c) decode-once limit {c:8.1f} tiles/s ({len(keys) / t_c:.0f} "
              f"stored tiles/s) | b/a = {b / a:5.2f} (target >= 5) | b/c = {b / c:4.2f} "
              f"(target >= 0.8)")


if __name__ == "__main__":
    main()
