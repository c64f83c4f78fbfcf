"""Tile-level extraction: a dataset of tile images -> ``tile_features.npy``, ids, labels.

Datasets: a folder with one subfolder per class (the NCT-CRC-HE-100K layout;
tile id = path relative to the folder, label = subfolder name) or a CSV with
columns ``path,label`` (paths relative to the CSV's folder; optional ``tile_id``).
Outputs (atomic) in ``<output_dir>/<encoder>/<dataset_name>/``: ``tile_features.npy``
(N, D), ``tile_ids.npy`` (N,), ``tile_labels.npy`` (N,) and ``meta.json``. An
existing output made with other settings raises :class:`StaleOutputError` unless
``overwrite=True``; with the same settings it is kept (skipped).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from loguru import logger
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from wsi_mil.encoders import Encoder, create_encoder
from wsi_mil.errors import ConfigError, FileFormatError, StaleOutputError
from wsi_mil.io.atomic import write_json_atomic
from wsi_mil.io.features import FEATURE_DTYPES, TILE_FEATURES, write_tile_features
from wsi_mil.io.paths import safe_name
from wsi_mil.pipeline.extract_stage import resolve_device
from wsi_mil.pipeline.provenance import library_versions
from wsi_mil.version import __version__

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MATCH_KEYS = ("encoder", "weights_sha256", "precision", "features_dtype", "n_tiles", "ids_sha1")


@dataclass
class TileDataset:
    name: str
    paths: list[Path]
    tile_ids: list[str]
    labels: list[str]


def read_tile_dataset(spec: str | Path, name: str | None = None) -> TileDataset:
    """A class-subfolder tree or a ``path,label`` CSV -> sorted tile list."""
    spec = Path(spec)
    if spec.is_dir():
        files = sorted(p for p in spec.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and p.parent != spec)
        if not files:
            raise ConfigError(f"dataset={spec} has no image ({IMAGE_EXTENSIONS}) in class "
                              "subfolders")
        ids = [p.relative_to(spec).as_posix() for p in files]
        labels = [p.relative_to(spec).parts[0] for p in files]
        return TileDataset(name or spec.name, files, ids, labels)
    if spec.is_file() and spec.suffix.lower() == ".csv":
        table = pd.read_csv(spec)
        missing = [c for c in ("path", "label") if c not in table.columns]
        if missing:
            raise FileFormatError(f"{spec}: missing column(s) {missing}; expected path,label"
                                  f"[,tile_id], found {list(table.columns)}")
        paths = [Path(p) if Path(p).is_absolute() else spec.parent / p for p in table["path"]]
        absent = [str(p) for p in paths if not p.exists()]
        if absent:
            raise FileFormatError(f"{spec}: {len(absent)} image(s) not found, e.g. {absent[:3]}")
        ids = (table["tile_id"].astype(str).tolist() if "tile_id" in table.columns
               else [str(p) for p in table["path"]])
        return TileDataset(name or spec.stem, paths, ids, table["label"].astype(str).tolist())
    raise ConfigError(f"dataset={str(spec)!r} is neither a folder of class subfolders nor a CSV")


class _ImageSet(Dataset):
    def __init__(self, paths: list[Path], encoder: Encoder) -> None:
        self.paths = paths
        self.prep = encoder.preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            rgb = np.array(im.convert("RGB"))  # writable, for torch.from_numpy
        return self.prep(rgb)[0]  # (3, S, S)


def _meta(encoder: Encoder, data: TileDataset, features_dtype: str) -> dict:
    ids_sha1 = hashlib.sha1("\n".join(data.tile_ids).encode()).hexdigest()
    return {"wsi_mil_version": __version__, "encoder": encoder.name,
            "embed_dim": int(encoder.embed_dim),
            "weights_sha256": encoder.weights_sha256 or "", "precision": encoder.precision,
            "mean": list(encoder.preprocessing.mean), "std": list(encoder.preprocessing.std),
            "input_size": int(encoder.preprocessing.input_size),
            "features_dtype": features_dtype, "n_tiles": len(data.tile_ids),
            "ids_sha1": ids_sha1, "dataset": data.name,
            "classes": sorted(set(data.labels)), "library_versions": library_versions()}


def run_tile_extraction(dataset: str | Path, output_dir: str | Path,
                        encoder_name: str = "histo_stats", weights: str | None = None,
                        batch_size: int = 64, num_workers: int = 2, device: str = "auto",
                        precision: str | None = None, features_dtype: str = "float32",
                        dataset_name: str | None = None, overwrite: bool = False,
                        encoder: Encoder | None = None) -> Path:
    """Encode every tile of ``dataset``; return the output folder."""
    if features_dtype not in FEATURE_DTYPES:
        raise ConfigError(f"features_dtype={features_dtype!r}; choose one of {FEATURE_DTYPES}")
    dev = resolve_device(device)
    data = read_tile_dataset(dataset, dataset_name)
    if encoder is None:
        encoder = create_encoder(encoder_name, weights=weights, device=dev, precision=precision)
    else:
        encoder = encoder.to(dev).eval()
    out = Path(output_dir) / safe_name(encoder.name) / safe_name(data.name)
    meta = _meta(encoder, data, features_dtype)
    meta_path = out / "meta.json"
    if (out / TILE_FEATURES).exists() and meta_path.exists() and not overwrite:
        old = json.loads(meta_path.read_text())
        bad = [f"{k}: {old.get(k)!r} != {meta[k]!r}" for k in MATCH_KEYS
               if str(old.get(k)) != str(meta[k])]
        if bad:
            raise StaleOutputError(f"{out} was made with other settings ({'; '.join(bad)}); "
                                   "pass overwrite=true or choose another output_dir")
        logger.info("{}: tile features already there with the same settings; skipped", out)
        return out
    loader = DataLoader(_ImageSet(data.paths, encoder), batch_size=int(batch_size),
                        num_workers=int(num_workers), pin_memory=dev.type == "cuda")
    chunks = []
    with torch.inference_mode():
        for images in loader:  # (B, 3, S, S)
            chunks.append(encoder(images.to(dev, non_blocking=True)).float().cpu().numpy())
    feats = np.concatenate(chunks).astype(features_dtype)  # (N, D)
    write_tile_features(out, feats, np.asarray(data.tile_ids), np.asarray(data.labels))
    write_json_atomic(meta_path, meta)
    logger.info("{}: {} tiles x {} features -> {}", data.name, len(feats), feats.shape[1], out)
    return out
