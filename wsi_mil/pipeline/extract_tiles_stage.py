"""Tile-level extraction: a dataset of tile images -> ``tile_features.npy``, ids, labels.

Datasets: a folder with one subfolder per class (the NCT-CRC-HE-100K layout;
tile id = path relative to the folder, label = subfolder name) or a CSV with a
``path`` column (paths relative to the CSV's folder), an optional ``label`` and
an optional ``tile_id`` (default: the path as written). Without ``label`` the
images are only embedded (e.g. the images of a ``path,caption[,group]``
captions CSV for ``wsi-mil retrieval``); a path listed several times (several
captions) is encoded once.

Outputs (atomic) in ``<output_dir>/<encoder>/<dataset_name>/``: ``tile_features.npy``
(N, D), ``tile_ids.npy`` (N,), ``tile_labels.npy`` (N,) (empty strings when
unlabelled), ``tile_sources.npy`` (N,) (absolute image paths: what identifies a
tile across datasets) and ``meta.json`` (encoder, weights, ``labels_sha1``, ...).

Reuse: an existing output made with other encoding settings (encoder, weights,
precision, dtype, tiles) raises :class:`StaleOutputError` unless
``overwrite=True``; with the same settings the features are kept. The label
table is part of the key too: when only the labels changed (a relabelled CSV),
``tile_labels.npy`` and ``meta.json`` are rewritten without encoding again.
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
from wsi_mil.io.features import (
    FEATURE_DTYPES,
    TILE_FEATURES,
    TILE_LABELS,
    TILE_SOURCES,
    write_tile_array,
    write_tile_features,
)
from wsi_mil.io.paths import safe_name
from wsi_mil.pipeline.extract_stage import resolve_device
from wsi_mil.pipeline.provenance import library_versions
from wsi_mil.version import __version__

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MATCH_KEYS = ("encoder", "weights_sha256", "precision", "features_dtype", "n_tiles", "ids_sha1")
LABEL_KEYS = ("labels_sha1", "labelled", "classes")


@dataclass
class TileDataset:
    name: str
    paths: list[Path]
    tile_ids: list[str]
    labels: list[str] | None  # None: unlabelled (images embedded only)

    @property
    def sources(self) -> list[str]:
        """Absolute image paths (the tiles' identity across datasets)."""
        return [p.resolve().as_posix() for p in self.paths]


def _sha1_lines(values: list[str]) -> str:
    return hashlib.sha1("\n".join(values).encode()).hexdigest()


def _dedupe(spec: Path, ids: list[str], paths: list[Path], labels: list[str] | None
            ) -> tuple[list[str], list[Path], list[str] | None]:
    """One row per tile id (a path with several captions is listed several times)."""
    first: dict[str, int] = {}
    for i, tid in enumerate(ids):
        if tid in first:
            j = first[tid]
            if paths[i].resolve() != paths[j].resolve() or (
                    labels is not None and labels[i] != labels[j]):
                raise FileFormatError(f"{spec}: tile id {tid!r} is listed twice with a different "
                                      "path or label")
        else:
            first[tid] = i
    if len(first) < len(ids):
        logger.info("{}: {} repeated row(s) of the same tile encoded once", spec, len(ids) - len(first))
    keep = list(first.values())
    return ([ids[i] for i in keep], [paths[i] for i in keep],
            None if labels is None else [labels[i] for i in keep])


def read_tile_dataset(spec: str | Path, name: str | None = None) -> TileDataset:
    """A class-subfolder tree or a ``path[,label][,tile_id]`` CSV -> tile list."""
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
        table = pd.read_csv(spec, dtype={"path": str, "tile_id": str, "label": str})
        if "path" not in table.columns:
            raise FileFormatError(f"{spec}: missing column 'path'; expected path[,label]"
                                  f"[,tile_id], found {list(table.columns)}")
        paths = [Path(p) if Path(p).is_absolute() else spec.parent / p for p in table["path"]]
        absent = [str(p) for p in paths if not p.exists()]
        if absent:
            raise FileFormatError(f"{spec}: {len(absent)} image(s) not found, e.g. {absent[:3]}")
        ids = (table["tile_id"].astype(str).tolist() if "tile_id" in table.columns
               else [str(p) for p in table["path"]])
        labels = None
        if "label" in table.columns:
            if table["label"].isna().any():
                raise FileFormatError(f"{spec}: {int(table['label'].isna().sum())} row(s) without "
                                      "a label; fill them or drop the label column to only embed")
            labels = table["label"].astype(str).tolist()
        else:
            logger.info("{}: no label column: the images are embedded without labels", spec)
        ids, paths, labels = _dedupe(spec, ids, paths, labels)
        return TileDataset(name or spec.stem, paths, ids, labels)
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


def _labels(data: TileDataset) -> list[str]:
    return data.labels if data.labels is not None else [""] * len(data.tile_ids)


def _meta(encoder: Encoder, data: TileDataset, features_dtype: str) -> dict:
    return {"wsi_mil_version": __version__, "encoder": encoder.name,
            "embed_dim": int(encoder.embed_dim),
            "weights_sha256": encoder.weights_sha256 or "", "precision": encoder.precision,
            "mean": list(encoder.preprocessing.mean), "std": list(encoder.preprocessing.std),
            "input_size": int(encoder.preprocessing.input_size),
            "features_dtype": features_dtype, "n_tiles": len(data.tile_ids),
            "ids_sha1": _sha1_lines(data.tile_ids), "dataset": data.name,
            "labelled": data.labels is not None, "labels_sha1": _sha1_lines(_labels(data)),
            "classes": sorted(set(data.labels or [])), "library_versions": library_versions()}


def _reuse(out: Path, meta: dict, data: TileDataset) -> bool:
    """True when the existing output's features can be kept (labels refreshed if they changed)."""
    old = json.loads((out / "meta.json").read_text())
    bad = [f"{k}: {old.get(k)!r} != {meta[k]!r}" for k in MATCH_KEYS
           if str(old.get(k)) != str(meta[k])]
    if bad:
        raise StaleOutputError(f"{out} was made with other settings ({'; '.join(bad)}); "
                               "pass overwrite=true or choose another output_dir")
    if not (out / TILE_SOURCES).exists():
        write_tile_array(out, TILE_SOURCES, np.asarray(data.sources, dtype=str))
    if all(str(old.get(k)) == str(meta[k]) for k in LABEL_KEYS):
        logger.info("{}: tile features already there with the same settings; skipped", out)
        return True
    write_tile_array(out, TILE_LABELS, np.asarray(_labels(data), dtype=str))
    write_json_atomic(out / "meta.json", {**old, **{k: meta[k] for k in LABEL_KEYS}})
    logger.info("{}: same tiles and encoder, new labels (classes {}): labels rewritten, features "
                "kept", out, meta["classes"])
    return True


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
        _reuse(out, meta, data)
        return out
    loader = DataLoader(_ImageSet(data.paths, encoder), batch_size=int(batch_size),
                        num_workers=int(num_workers), pin_memory=dev.type == "cuda")
    chunks = []
    with torch.inference_mode():
        for images in loader:  # (B, 3, S, S)
            chunks.append(encoder(images.to(dev, non_blocking=True)).float().cpu().numpy())
    feats = np.concatenate(chunks).astype(features_dtype)  # (N, D)
    write_tile_features(out, feats, np.asarray(data.tile_ids), np.asarray(_labels(data)),
                        np.asarray(data.sources))
    write_json_atomic(meta_path, meta)
    logger.info("{}: {} tiles x {} features -> {}", data.name, len(feats), feats.shape[1], out)
    return out
