"""Extraction stage: encode the tiles of every slide, one feature file per slide.

``run_extraction`` reads the coords file of each slide, streams its tiles from
DataLoader workers (:mod:`wsi_mil.encoders.tile_stream`) into a frozen encoder
under ``torch.inference_mode`` and writes, atomically, either our h5
(``<output_dir>/<encoder>/<tiling>/<slide_id>.h5``) or the reference's
``<output_dir>/<encoder>/<cohort>/<slide_id>/features.npy`` (+ ``meta.json``).

Resumable: a slide whose output exists with matching attrs (encoder, weights,
tiling, coords fingerprint, precision, dtype) is skipped; an output made with
other settings raises :class:`StaleOutputError` before any work, unless
``overwrite=True``. A slide that fails is recorded in the ledger and the batch
goes on. Under ``torchrun`` slides are sharded across ranks
(:mod:`wsi_mil.pipeline.distributed`); each rank writes its own slides and
``status.rank{r}.csv``; rank 0 merges them into ``status.csv``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from loguru import logger

from wsi_mil.encoders import Encoder, create_encoder
from wsi_mil.encoders.tile_reader import BACKENDS, MODES, RESAMPLES
from wsi_mil.encoders.tile_stream import make_tile_loader, make_work_items
from wsi_mil.errors import ConfigError, StaleOutputError, WsiMilError
from wsi_mil.io.atomic import sweep_temp_files, write_json_atomic
from wsi_mil.io.coords import read_coords
from wsi_mil.io.features import (
    FEATURE_DTYPES,
    coords_sha1,
    read_feature_attrs,
    write_features,
    write_reference_features,
)
from wsi_mil.io.ledger import LEDGER_NAME, StatusLedger
from wsi_mil.io.locks import SlideLocks
from wsi_mil.io.paths import (
    features_dir,
    features_path,
    reference_features_path,
    safe_name,
    tiling_name,
)
from wsi_mil.pipeline import distributed as dist_utils
from wsi_mil.pipeline.provenance import library_versions
from wsi_mil.pipeline.tile_stage import record_odd_entries
from wsi_mil.version import __version__

LAYOUTS = ("wsi_mil", "reference")
# attrs that must agree for an existing output to be reused
MATCH_KEYS = ("encoder", "weights_sha256", "tile_size", "target_mpp", "dz_level",
              "coords_sha1", "precision", "features_dtype", "reader_mode", "resample")


@dataclass
class ExtractionResult:
    output_root: Path                     # folder of the ledger (and of the h5 files)
    counts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    left_to_others: dict[str, str] = field(default_factory=dict)  # slide -> lock holder


@dataclass
class _Slide:
    pos: int
    slide_id: str
    path: str
    coords_path: Path
    out_path: Path
    coords: np.ndarray | None = None
    coords_level0: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    out_stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the output when planned


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def _missing_coords_reason(cpath: Path, coords_folder: Path, slide_id: str,
                           tiling_rows: dict) -> str:
    """Why a slide has no coords file: the tiling ledger's reason when tiling failed.
    ``tiling_rows``: a cache, filled on first use with the tiling ledger's rows."""
    tiling_ledger = coords_folder.parent / LEDGER_NAME
    if not tiling_rows and tiling_ledger.is_file():
        tiling_rows.update(StatusLedger(coords_folder.parent).rows)
    row = tiling_rows.get(slide_id)
    if row is not None and row.status == "failed":
        return (f"tiling of this slide failed: {row.reason} (see {tiling_ledger}); fix it and "
                "rerun `wsi-mil tile`")
    if row is not None:
        return (f"no coords file {cpath} although {tiling_ledger} says {row.status!r} (deleted "
                "since?); rerun `wsi-mil tile` with overwrite=true")
    return f"no coords file {cpath} (run `wsi-mil tile` first)"


def _coords_folder(coords_root: Path) -> Path:
    """Accept the tiling root (with ``coords/``) or the coords folder itself."""
    return coords_root / "coords" if (coords_root / "coords").is_dir() else coords_root


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a torch device (cpu, cuda, cuda:0, auto)") \
            from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use device=cpu")
    return dev


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; choose one of {choices}")


def _expected_attrs(encoder: Encoder, coords_attrs: dict, coords: np.ndarray,
                    features_dtype: str, reader_mode: str, resample: str) -> dict[str, Any]:
    prep = encoder.preprocessing
    return {
        "wsi_mil_version": __version__,
        "encoder": encoder.name,
        "embed_dim": int(encoder.embed_dim),
        "weights_sha256": encoder.weights_sha256 or "",
        "weights_source": getattr(encoder, "weights_source", "") or "",
        "precision": getattr(encoder, "precision_used", encoder.precision),  # as run on its device
        "pooling": getattr(encoder, "pooling", ""),
        "mean": list(prep.mean),
        "std": list(prep.std),
        "input_size": int(prep.input_size),
        "tile_size": int(coords_attrs["tile_size"]),
        "target_mpp": float(coords_attrs["target_mpp"]),
        "slide_mpp": float(coords_attrs["slide_mpp"]),
        "dz_level": int(coords_attrs["dz_level"]),
        "tiling_params": str(coords_attrs.get("tiling_params", "")),
        "coords_sha1": coords_sha1(coords),
        "n_tiles": int(len(coords)),
        "features_dtype": features_dtype,
        "reader_mode": reader_mode,
        "resample": resample,
        "library_versions": library_versions(),
    }


def check_finite_features(feats: np.ndarray, features_dtype: str, coords: np.ndarray,
                          precision: str = "") -> str:
    """Why a batch of features (B, D) cannot be stored ('' if it can): NaN / inf values, or
    finite values beyond the storage dtype (float16 overflows to inf above 65504)."""
    bad = ~np.isfinite(feats)
    limit = float(np.finfo(features_dtype).max)
    if not bad.any():
        over = np.abs(feats) > limit
        if not over.any():
            return ""
        rows = np.flatnonzero(over.any(axis=1))
        return (f"{int(over.sum())} feature value(s) of {len(rows)} tile(s) exceed the "
                f"{features_dtype} range (|x| up to {float(np.abs(feats).max()):.3g} > {limit:.5g}), "
                f"e.g. tile {tuple(int(v) for v in coords[rows[0]])}; store them with "
                "features_dtype=float32")
    rows = np.flatnonzero(bad.any(axis=1))
    hint = (f" (precision={precision}: try precision=fp32)" if precision in ("fp16", "bf16")
            else "")
    return (f"the encoder returned {int(np.isnan(feats).sum())} NaN and "
            f"{int(np.isinf(feats).sum())} inf value(s) in {len(rows)} tile(s), e.g. tile "
            f"{tuple(int(v) for v in coords[rows[0]])} (dz level, col, row){hint}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-9
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def _existing_attrs(slide: _Slide, layout: str) -> dict[str, Any] | None:
    if not slide.out_path.exists():
        return None
    try:
        if layout == "reference":
            meta = slide.out_path.with_name("meta.json")
            # meta.json is written last: without it the features.npy is unfinished
            return json.loads(meta.read_text()) if meta.exists() else None
        return read_feature_attrs(slide.out_path)
    except (WsiMilError, OSError, ValueError) as err:
        logger.warning("{}: unreadable existing output {} ({}); recomputing",
                       slide.slide_id, slide.out_path, err)
        return None


def _mismatch(existing: dict, expected: dict) -> list[str]:
    return [f"{k}: {existing.get(k)!r} != {expected[k]!r}" for k in MATCH_KEYS
            if not _same(existing.get(k), expected[k])]


def _write(slide: _Slide, feats: np.ndarray, layout: str, features_dtype: str) -> None:
    if layout == "reference":
        meta = slide.out_path.with_name("meta.json")
        meta.unlink(missing_ok=True)  # written last: marks a complete features.npy
        write_reference_features(slide.out_path, feats.astype(features_dtype), slide.coords)
        write_json_atomic(meta, slide.attrs)
    else:
        write_features(slide.out_path, feats, slide.coords, slide.coords_level0,
                       slide.attrs, dtype=features_dtype)


def _slide_rows(slide_table: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(slide_table, pd.DataFrame):
        return slide_table
    from wsi_mil.io.slide_table import read_slide_table

    return read_slide_table(slide_table)


def run_extraction(
    slide_table: pd.DataFrame | str | Path,
    coords_root: str | Path,
    output_dir: str | Path,
    encoder_name: str = "histo_stats",
    weights: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    precision: str | None = None,
    features_dtype: str = "float16",
    layout: str = "wsi_mil",
    cohort: str = "default",
    overwrite: bool = False,
    reader_mode: str = "fast",
    resample: str = "dct",
    backend: str = "auto",
    chunk_tiles: int | None = None,
    channels_last: bool | None = None,
    encoder: Encoder | None = None,
    verify_tiles: int = 2,
) -> ExtractionResult:
    """Encode the tiles of every slide of ``slide_table`` (DataFrame slide_id, path or spec).

    ``coords_root``: tiling root (``.../mpp0.50_px224``) or its ``coords`` folder.
    ``encoder``: an already built encoder (then ``encoder_name``/``weights`` are ignored).
    ``chunk_tiles``: split slides into raster bands of this many tiles so several
    workers share one slide (None: one work item per slide, or one band per worker
    of the largest slide when ``num_workers`` > number of slides).
    """
    _check_choice("layout", layout, LAYOUTS)
    _check_choice("features_dtype", features_dtype, FEATURE_DTYPES)
    _check_choice("reader_mode", reader_mode, MODES)
    _check_choice("resample", resample, RESAMPLES)
    _check_choice("backend", backend, BACKENDS)
    if int(batch_size) < 1 or int(num_workers) < 0 or int(verify_tiles) < 0:
        raise ConfigError(f"batch_size must be >= 1, num_workers and verify_tiles >= 0, got "
                          f"{batch_size}, {num_workers} and {verify_tiles}")
    rank, world = dist_utils.init_from_env(device)
    dev = resolve_device(dist_utils.rank_device(device, rank))
    table = _slide_rows(slide_table)
    coords_folder = _coords_folder(Path(coords_root))
    if encoder is None:
        encoder = create_encoder(encoder_name, weights=weights, device=dev, precision=precision)
    else:
        encoder = encoder.to(dev).eval()
    use_cl = channels_last if channels_last is not None else (
        dev.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride
                                   for m in encoder.modules()))
    if use_cl:
        encoder = encoder.to(memory_format=torch.channels_last)

    # -- plan: read coords, decide done / todo / stale for every slide -------------------
    slides: list[_Slide] = []
    failures: dict[str, str] = {}
    tiling_rows: dict = {}
    tiling = None
    for pos, rec in enumerate(table.itertuples(index=False)):
        sid = str(rec.slide_id)
        cpath = coords_folder / f"{sid}.h5"
        slide = _Slide(pos, sid, str(rec.path), cpath, Path())
        try:
            cf = read_coords(cpath) if cpath.exists() else None
            if cf is None:
                raise ConfigError(_missing_coords_reason(cpath, coords_folder, sid, tiling_rows))
            if len(cf.coords) == 0:
                raise ConfigError(f"coords file {cpath} has no tile")
            slide.coords, slide.coords_level0 = cf.coords, cf.coords_level0
            slide.attrs = _expected_attrs(encoder, cf.attrs, cf.coords, features_dtype,
                                          reader_mode, resample)
            slide.attrs["slide_id"] = sid
            tiling = tiling or tiling_name(slide.attrs["target_mpp"], slide.attrs["tile_size"])
        except WsiMilError as err:
            failures[sid] = f"{type(err).__name__}: {err}"
        slides.append(slide)
    tiling = tiling or coords_folder.parent.name
    if layout == "reference":
        out_root = Path(output_dir) / safe_name(encoder.name) / cohort
    else:
        out_root = features_dir(output_dir, encoder.name, tiling)
    for s in slides:
        s.out_path = (reference_features_path(output_dir, encoder.name, cohort, s.slide_id)
                      if layout == "reference" else features_path(out_root, s.slide_id))

    todo, skipped, stale = [], [], []
    for s in slides:
        if s.slide_id in failures:
            continue
        s.out_stamp = _stamp(_finished_marker(s, layout))
        existing = None if overwrite else _existing_attrs(s, layout)
        if existing is None:
            todo.append(s)
        elif bad := _mismatch(existing, s.attrs):
            stale.append(f"{s.out_path} ({'; '.join(bad)})")
        else:
            skipped.append(s)
    if stale:
        raise StaleOutputError(
            f"{len(stale)} existing feature file(s) were made with other settings; pass "
            f"overwrite=true to recompute them or choose another output_dir: " + " | ".join(stale)
        )

    # -- shard and run ------------------------------------------------------------------
    # every rank must see the outputs as they were before anyone writes: same plan everywhere
    dist_utils.barrier(world)
    mine = dist_utils.shard_by_cost(todo, [len(s.coords) for s in todo], rank, world)
    ledger_name = "status.csv" if world == 1 else f"status.rank{rank}.csv"
    out_root.mkdir(parents=True, exist_ok=True)
    if world > 1:  # a rank ledger left by an earlier (crashed) run must not be merged again
        (out_root / ledger_name).unlink(missing_ok=True)
    sweep_temp_files(out_root)
    ledger = StatusLedger(out_root, name=ledger_name)
    locks = SlideLocks(out_root)
    locks.sweep()
    left = {s.slide_id: who for s in mine if (who := locks.holder(s.slide_id))}
    for sid, who in left.items():
        logger.info("{}: left to the process that holds its lock ({})", sid, who)
    mine = [s for s in mine if s.slide_id not in left]
    if rank == 0:
        record_odd_entries(table, ledger)
        for s in skipped:
            ledger.record(s.slide_id, "skipped", "output exists with the same settings",
                          flush=False)
        for sid, reason in failures.items():
            ledger.record(sid, "failed", reason, flush=False)
            logger.error("{}: {}", sid, reason)
        ledger.flush()
    logger.info("extract {} on {} (rank {}/{}): {} slides to do here, {} skipped, {} failed "
                "before reading -> {}", encoder.name, dev, rank, world, len(mine), len(skipped),
                len(failures), out_root)
    try:
        _encode_slides(mine, encoder, dev, ledger, layout, features_dtype, int(batch_size),
                       int(num_workers), reader_mode, resample, backend, chunk_tiles, use_cl,
                       int(verify_tiles), locks, left)
    finally:
        locks.release_all()

    session = dict(ledger.session)
    if world > 1:
        ledger = dist_utils.merge_rank_ledgers(out_root, rank, world)
        counts = ledger.counts()
        failed = {r.slide_id: r.reason for r in ledger.failed()}
    else:  # what this run did (a rerun's skipped slides keep their "done" rows)
        counts = ledger.session_counts()
        failed = {sid: ledger.rows[sid].reason for sid, st in session.items() if st == "failed"}
    if left:
        logger.warning("{} slide(s) left to other running processes (their lock files): {}",
                       len(left), ", ".join(sorted(left)[:10]))
    logger.info("extract done (rank {}): {}", rank, counts)
    return ExtractionResult(out_root, counts, failed, rank, world, left)


def _finished_marker(slide: _Slide, layout: str) -> Path:
    """The file written last for a slide: its h5, or the reference layout's meta.json."""
    return slide.out_path.with_name("meta.json") if layout == "reference" else slide.out_path


def _claim(slide: _Slide, locks: SlideLocks | None, ledger: StatusLedger,
           left: dict[str, str], layout: str = "wsi_mil") -> bool:
    """Take the slide's lock before encoding it; False when another process has it or has
    written its output since the plan (then it is not encoded twice)."""
    if locks is None:
        return True
    if who := locks.acquire(slide.slide_id):
        left[slide.slide_id] = who
        logger.info("{}: locked by {}; left to it", slide.slide_id, who)
        return False
    if _stamp(_finished_marker(slide, layout)) != slide.out_stamp:
        locks.release(slide.slide_id)
        ledger.record(slide.slide_id, "skipped", "written by another process meanwhile")
        return False
    return True


def _encode_batch(slides: list[_Slide], k: int, batch: dict, encoder: Encoder, dev: torch.device,
                  channels_last: bool, buffers: dict, received: dict, started: dict,
                  ledger: StatusLedger, layout: str, features_dtype: str,
                  locks: SlideLocks | None = None) -> bool:
    """Encode one batch of slide ``k``; write the slide once all its tiles are in.
    False if the slide failed (its reason is in the ledger)."""
    slide = slides[k]
    if locks is not None:
        locks.touch(slide.slide_id)
    tiles = batch["tiles"].to(dev, non_blocking=True)  # (B, T, T, 3) uint8
    with torch.inference_mode():
        images = encoder.preprocess(tiles)  # (B, 3, S, S)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = encoder(images).float().cpu().numpy()  # (B, D)
    if reason := check_finite_features(feats, features_dtype, slide.coords[batch["index"].numpy()],
                                       encoder.precision):
        buffers.pop(k, None)
        ledger.record(slide.slide_id, "failed", f"NonFiniteFeaturesError: {reason}")
        logger.error("{}: {}", slide.slide_id, reason)
        return False
    if k not in buffers:
        buffers[k] = np.empty((len(slide.coords), feats.shape[1]), np.float32)
        received[k] = 0
    buffers[k][batch["index"].numpy()] = feats
    received[k] += len(feats)
    if received[k] < len(slide.coords):
        return True
    try:
        _write(slide, buffers.pop(k), layout, features_dtype)
    except (WsiMilError, OSError) as err:
        ledger.record(slide.slide_id, "failed", f"{type(err).__name__}: {err}")
        logger.error("{}: cannot write features: {}", slide.slide_id, err)
        return False
    seconds = time.perf_counter() - started[k]
    ledger.record(slide.slide_id, "done", f"{len(slide.coords)} tiles", seconds)
    logger.info("{}: {} tiles -> {} ({:.1f} tiles/s)", slide.slide_id, len(slide.coords),
                slide.out_path.name, len(slide.coords) / max(seconds, 1e-9))
    return True


def _encode_slides(slides: list[_Slide], encoder: Encoder, dev: torch.device,
                   ledger: StatusLedger, layout: str, features_dtype: str, batch_size: int,
                   num_workers: int, reader_mode: str, resample: str, backend: str,
                   chunk_tiles: int | None, channels_last: bool, verify_tiles: int = 0,
                   locks: SlideLocks | None = None, left: dict[str, str] | None = None) -> None:
    """Encode ``slides``; every slide ends recorded in the ledger, or in ``left`` (another
    process holds its lock)."""
    if not slides:
        return
    left = {} if left is None else left

    def finished(k: int) -> bool:  # recorded by this process (the ledger also holds others')
        return ledger.session.get(slides[k].slide_id) in ("done", "skipped", "failed")

    if chunk_tiles is None and num_workers > len(slides):
        # let the workers share the slides: one band per worker of the largest slide
        # (each band boundary may decode one row of stored tiles twice)
        chunk_tiles = max(512, -(-max(len(s.coords) for s in slides) // num_workers))
    items = make_work_items([(k, s.path, s.coords, int(s.attrs["tile_size"]))
                             for k, s in enumerate(slides)], chunk_tiles, verify_tiles)
    loader = make_tile_loader(items, batch_size, num_workers, pin_memory=dev.type == "cuda",
                              mode=reader_mode, resample=resample, backend=backend)
    buffers: dict[int, np.ndarray] = {}
    received: dict[int, int] = {}
    started: dict[int, float] = {}
    dead: set[int] = set()
    try:
        for batch in loader:
            k = int(batch["slide"])
            if k in dead:
                continue
            if k not in started and not _claim(slides[k], locks, ledger, left, layout):
                dead.add(k)
                continue
            started.setdefault(k, time.perf_counter())
            if "error" in batch:
                dead.add(k)
                buffers.pop(k, None)
                ledger.record(slides[k].slide_id, "failed", batch["error"])
                logger.error("{}: {}", slides[k].slide_id, batch["error"])
            elif not _encode_batch(slides, k, batch, encoder, dev, channels_last, buffers,
                                   received, started, ledger, layout, features_dtype, locks):
                dead.add(k)
            if locks is not None and finished(k):
                locks.release(slides[k].slide_id)
    except RuntimeError as err:
        # A reader worker died (segfault / out of memory in a native library) or the model
        # failed: the slides in flight are recorded as failed, the others are retried.
        in_flight = [k for k in started if k not in dead and not finished(k)]
        if not in_flight:
            in_flight = [k for k in range(len(slides)) if k not in dead and not finished(k)]
        for k in in_flight:
            dead.add(k)
            ledger.record(slides[k].slide_id, "failed", f"RuntimeError while reading / encoding "
                          f"this slide: {str(err)[:300]}")
            logger.error("{}: {}", slides[k].slide_id, err)
            if locks is not None:
                locks.release(slides[k].slide_id)
        rest = [s for k, s in enumerate(slides) if k not in dead and not finished(k)]
        del loader
        _encode_slides(rest, encoder, dev, ledger, layout, features_dtype, batch_size,
                       num_workers, reader_mode, resample, backend, chunk_tiles, channels_last,
                       verify_tiles, locks, left)
        return
    for k, slide in enumerate(slides):
        if k not in dead and not finished(k):
            ledger.record(slide.slide_id, "failed", "incomplete: tiles missing from the reader")
