"""End-to-end extraction tiles/s against reader-only and encoder-only, in the same run.

Usage: python dev_tools/bench_extraction.py [--cache-dir DIR] [--n-tiles 256] [--repeats 2]
                                            [--batch-size 32] [--num-workers 1]

Encoder: timm ``vit_small_patch16_224`` at random init (saved once as a local
safetensors file and loaded through ``create_encoder("timm:...", weights=...)``)
on CPU. Tiles: the first ``--n-tiles`` tissue tiles (raster order) at 20x / 224 px
of the 40,000 x 30,000 synthetic 40x slide of ``bench_reader.py`` (same cache).

- reader-only: the extraction DataLoader (same workers, batches) drained without encoding;
- encoder-only: preprocess + forward on tiles already in memory;
- end-to-end: ``run_extraction`` (planning, reading, encoding, writing the h5).
Encoder-only and end-to-end runs alternate (``--repeats``); medians are compared.
Prints tiles/s and end-to-end / min(reader, encoder) (target >= 0.9).

``--precision``: only the CPU precision check (issue 12): encoder-only tiles/s of
the same ViT at fp32, at the default (``precision=None``: what ``create_encoder``
resolves on this CPU) and with bf16 autocast forced (what the old default did on
CPU), on random uint8 tiles; prints whether the CPU has native bf16.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsi_mil.encoders import create_encoder
from wsi_mil.encoders.tile_stream import make_tile_loader, make_work_items
from wsi_mil.io.coords import write_coords

TILE = 224


def _bench_reader_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_reader", Path(__file__).with_name("bench_reader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vit_weights(cache: Path) -> Path:
    path = cache / "vit_small_patch16_224_random.safetensors"
    if not path.exists():
        import timm
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def precision_check(cache: Path, n_tiles: int, batch_size: int) -> None:
    """CPU tiles/s of one ViT: fp32, the default, and forced bf16 autocast."""
    from wsi_mil.encoders.base import cpu_native_precisions

    weights = str(vit_weights(cache))
    gen = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (n_tiles, TILE, TILE, 3), dtype=torch.uint8, generator=gen)

    def tiles_per_s(encoder, forced: str | None = None) -> float:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(forced or "")
        with torch.inference_mode():
            encoder(encoder.preprocess(tiles[:2]))  # warm-up
            t0 = time.perf_counter()
            for start in range(0, n_tiles, batch_size):
                x = encoder.preprocess(tiles[start:start + batch_size])
                if dtype is None:
                    encoder(x)
                else:
                    with torch.autocast("cpu", dtype=dtype):
                        encoder.embed(x)
            return n_tiles / (time.perf_counter() - t0)

    native = cpu_native_precisions()
    print(f"CPU: capability {torch.backends.cpu.get_cpu_capability()}, native lower precisions "
          f"{list(native) or 'none'}; torch threads {torch.get_num_threads()}; {n_tiles} tiles, "
          f"batch {batch_size}, timm vit_small_patch16_224")
    fp32 = create_encoder("timm:vit_small_patch16_224", weights=weights, precision="fp32")
    default = create_encoder("timm:vit_small_patch16_224", weights=weights, precision=None)
    default.default_precision = "bf16"  # as a card recommending bf16 (uni2_h)
    default.precision = default.precision_on("cpu")
    rows = [("fp32", tiles_per_s(fp32)),
            (f"default (card bf16 -> runs {default.precision})", tiles_per_s(default)),
            ("bf16 autocast forced (the old CPU default)", tiles_per_s(fp32, "bf16"))]
    for label, tps in rows:
        print(f"  {label:45s} {tps:8.1f} tiles/s  ({tps / rows[0][1]:4.2f} x fp32)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default="/tmp/wsi_mil_bench_extract")
    ap.add_argument("--n-tiles", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs (median)")
    ap.add_argument("--precision", action="store_true",
                    help="only compare CPU fp32 with the default precision (encoder-only)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if args.precision:
        precision_check(cache, args.n_tiles, args.batch_size)
        return
    br = _bench_reader_module()
    slide = br.make_slide(cache, 40000, 30000, "auto")
    coords = br.tissue_coords(slide)[: args.n_tiles]
    n = len(coords)
    encoder = create_encoder("timm:vit_small_patch16_224", weights=str(vit_weights(cache)),
                             device="cpu", precision="fp32")
    print(f"{n} tiles of {slide.name}; encoder {encoder!r}; batch {args.batch_size}, "
          f"{args.num_workers} reader worker(s), torch threads {torch.get_num_threads()}")

    items = make_work_items([(0, slide, coords, TILE)])
    t0 = time.perf_counter()
    tiles = []
    for batch in make_tile_loader(items, args.batch_size, args.num_workers):
        tiles.append(batch["tiles"])
    reader_tps = n / (time.perf_counter() - t0)
    tiles = torch.cat(tiles)  # (N, T, T, 3) uint8

    from wsi_mil.pipeline.extract_stage import run_extraction

    def encoder_only() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for start in range(0, n, args.batch_size):
                encoder(encoder.preprocess(tiles[start:start + args.batch_size]))
            return n / (time.perf_counter() - t0)

    def end_to_end(tmp: Path) -> float:
        t0 = time.perf_counter()
        result = run_extraction(table, tiling, tmp / "features", encoder=encoder,
                                batch_size=args.batch_size, num_workers=args.num_workers,
                                device="cpu", overwrite=True)
        assert result.counts["done"] == 1, result
        return n / (time.perf_counter() - t0)

    with torch.inference_mode():
        encoder(encoder.preprocess(tiles[:2]))  # warm-up
    enc_runs, e2e_runs = [], []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tiling = Path(tmp) / "mpp0.50_px224"
        write_coords(tiling / "coords" / "bench.h5", coords, coords[:, 1:] * TILE * 2,
                     {"tile_size": TILE, "target_mpp": 0.5, "slide_mpp": 0.25,
                      "dz_level": int(coords[0, 0])})
        table = pd.DataFrame({"slide_id": ["bench"], "path": [str(slide)], "mpp": [np.nan]})
        for _ in range(args.repeats):  # alternate, so a change of machine load hits both
            enc_runs.append(encoder_only())
            e2e_runs.append(end_to_end(Path(tmp)))
    encoder_tps, e2e_tps = float(np.median(enc_runs)), float(np.median(e2e_runs))
    print("encoder-only runs:", " ".join(f"{v:.1f}" for v in enc_runs),
          "| end-to-end runs:", " ".join(f"{v:.1f}" for v in e2e_runs))
    slower = min(reader_tps, encoder_tps)
    print(f"reader-only {reader_tps:8.1f} tiles/s | encoder-only {encoder_tps:8.1f} tiles/s | "
          f"end-to-end {e2e_tps:8.1f} tiles/s | end-to-end / slower = {e2e_tps / slower:4.2f} "
          f"(target >= 0.9)")


if __name__ == "__main__":
    main()
