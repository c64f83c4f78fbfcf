"""Corrupt stored tiles: what the lenient decoders let through, what the strict one and OpenSlide refuse.

    python dev_tools/fault_figures.py [--seeds 10]

A 40x synthetic slide of 12 x 9 stored JPEG tiles (108); per seed, 8 bytes are flipped in
each of 10 random stored tiles (the issue's recipe). Printed per seed: corrupted tiles that
tifffile/imagecodecs (the previous fast path) decodes without a word and their largest
grey-level error, the tiles the strict decoder (simplejpeg, as wsi_mil reads them)
rejects, the tiles OpenSlide rejects, and whether every tile OpenSlide rejects is rejected
(OpenSlide misses "extraneous bytes before marker 0xd9": it never finishes decompression).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import openslide

from wsi_mil.encoders.tiff_direct import TiffLevelSource
from wsi_mil.errors import CorruptTileError
from wsi_mil.testing.faults import flip_tile_bytes, stored_tiles
from wsi_mil.testing.synthetic_slides import write_synthetic_slide


def openslide_reads(path: Path, row: int, col: int) -> bool:
    try:
        openslide.OpenSlide(str(path)).read_region((col * 256, row * 256), 0, (256, 256))
        return True
    except openslide.OpenSlideError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    clean = write_synthetic_slide(root / "clean.svs", width=3072, height=2304, n_levels=1,
                                  seed=0).path
    offsets, counts, n_cols = stored_tiles(clean)
    with TiffLevelSource(clean, (3072, 2304)) as src:
        tables = src.page.jpegtables
        reference = [src.read_tile(*divmod(i, n_cols)) for i in range(len(offsets))]
    totals = np.zeros(4, int)
    print("seed  decoded_silently  max|err|  strict_rejects  openslide_rejects  covers_openslide")
    for seed in range(args.seeds):
        bad = root / f"bad{seed}.svs"
        shutil.copy(clean, bad)
        hit = np.random.default_rng(seed).choice(len(offsets), 10, replace=False)
        flip_tile_bytes(bad, hit.tolist(), n_bytes=8, seed=seed)
        data = bad.read_bytes()
        silent, err, strict, theirs, agree = 0, 0, 0, 0, True
        with TiffLevelSource(bad, (3072, 2304)) as src:
            for i in hit:
                tile = data[offsets[i]:offsets[i] + counts[i]]
                try:  # tifffile + imagecodecs: the previous fast path
                    lenient = src.page.decode(tile, int(i), jpegtables=tables)[0][0]
                    silent += 1
                    err = max(err, int(np.abs(lenient.astype(int) - reference[i]).max()))
                except Exception:  # noqa: BLE001 - a hard error: not silent
                    pass
                row, col = divmod(int(i), n_cols)
                try:
                    src.read_tile(row, col)
                    ok = True
                except CorruptTileError:
                    ok, strict = False, strict + 1
                ref_ok = openslide_reads(bad, row, col)
                theirs += not ref_ok
                agree &= ok <= ref_ok  # OpenSlide refuses => we refuse
        totals += (silent, strict, theirs, agree)
        print(f"{seed:4d}  {silent:16d}  {err:8d}  {strict:14d}  {theirs:17d}  {agree}")
    print(f"total: {totals[0]} of {10 * args.seeds} corrupted tiles decoded without an error "
          f"by tifffile/imagecodecs; the strict decoder "
          f"rejects {totals[1]}, OpenSlide {totals[2]}; every tile OpenSlide rejects is rejected "
          f"in {totals[3]} / {args.seeds} seeds")


if __name__ == "__main__":
    main()
