"""Hand-built CV run dirs (the contract's layout), feature bags, coords, a slide.

Run dirs: predictions.csv, folds.csv, summary.json, models/r{r}_f{k}.pt. The
fold models are real ``create_model("abmil", ...)`` heads when the models
package is importable, else a tiny stand-in with ``tile_scores``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn

from wsi_mil.io.coords import write_coords

IN_DIM = 8
TILE_PX = 224
SLIDE_W, SLIDE_H = 1536, 1024
N_REPEATS, N_FOLDS, N_SLIDES = 2, 3, 18


class TinyHead(nn.Module):
    """Stand-in MIL head: linear tile scores, mean pooling."""

    def __init__(self, in_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.score = nn.Linear(in_dim, 1)
        self.out = nn.Linear(in_dim, n_outputs)

    def forward(self, x, mask=None):
        return self.out(x.mean(dim=1))  # (B, C)

    def tile_scores(self, x, mask=None):
        return self.score(x).squeeze(-1)  # (B, N)


def model_factory():
    """The package's create_model if it imports, else the stand-in."""
    try:
        from wsi_mil.models import create_model

        create_model("abmil", IN_DIM, 1)
        return create_model
    except Exception:  # noqa: BLE001 - models package not written yet
        return lambda name, in_dim, n_outputs, **hp: TinyHead(in_dim, n_outputs)


def save_fold_models(run_dir: Path, n_outputs: int) -> None:
    factory = model_factory()
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    for r in range(N_REPEATS):
        for k in range(N_FOLDS):
            model = factory("abmil", IN_DIM, n_outputs)
            torch.save({"model": "abmil", "in_dim": IN_DIM, "n_outputs": n_outputs,
                        "hparams": {}, "state_dict": model.state_dict()},
                       run_dir / "models" / f"r{r}_f{k}.pt")


def _fold_assignment(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for r in range(N_REPEATS):
        folds = rng.permutation(np.arange(N_SLIDES) % N_FOLDS)
        for i in range(N_SLIDES):
            rows.append({"slide_id": f"s{i:02d}", "patient_id": f"p{i:02d}", "repeat": r,
                         "outer_fold": int(folds[i])})
    return pd.DataFrame(rows)


def _write_run(run_dir: Path, predictions: pd.DataFrame, folds: pd.DataFrame,
               summary: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    folds.to_csv(run_dir / "folds.csv", index=False)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text("model: abmil\n")
    return run_dir


def _folds_table(metric: str, values: np.ndarray, extra: dict | None = None) -> pd.DataFrame:
    rows = []
    for r in range(N_REPEATS):
        for k in range(N_FOLDS):
            row = {"repeat": r, "outer_fold": k, metric: float(values[r * N_FOLDS + k]),
                   "lr": 1e-4, "weight_decay": 1e-4, "epochs": 5, "n_train": 12, "n_test": 6}
            row.update({key: v[r * N_FOLDS + k] for key, v in (extra or {}).items()})
            rows.append(row)
    return pd.DataFrame(rows)


def summary(cohort: str, model: str, metric: str, features_dir: Path | None = None) -> dict:
    """A summary.json as ``wsi_mil.cv.outputs.aggregate`` writes it (subset)."""
    task = "survival" if metric == "c_index" else "classification"
    return {"task": task, "cohort": cohort, "encoder": "histo_stats", "model": model,
            "mode": "mil", "metric": metric, "mean": 0.8, "sd": 0.05, "ci95_low": 0.7,
            "ci95_high": 0.9, "n_folds": 6, "hparams": {"hidden_dim": 8}, "grid": {},
            "selected": {"lr": {"mode": 1e-4, "values": [1e-4] * 6}},
            "other_metrics": {"accuracy": {"mean": 0.75, "sd": 0.1}} if task != "survival" else {},
            "features_dir": str(features_dir) if features_dir else None}


def make_binary_run(run_dir: Path, rng: np.random.Generator, model: str = "abmil",
                    features_dir: Path | None = None) -> Path:
    preds = _fold_assignment(rng)
    target = np.tile(np.arange(N_SLIDES) % 2, N_REPEATS)
    preds["target"] = target
    preds["score"] = 1 / (1 + np.exp(-(2 * target - 1 + rng.normal(0, 1.2, len(preds)))))
    folds = _folds_table("auc", rng.uniform(0.6, 0.9, N_REPEATS * N_FOLDS))
    run = _write_run(run_dir, preds, folds, summary("tumor", model, "auc", features_dir))
    save_fold_models(run, 1)
    return run


def make_multiclass_run(run_dir: Path, rng: np.random.Generator, n_classes: int = 3) -> Path:
    preds = _fold_assignment(rng)
    target = np.tile(np.arange(N_SLIDES) % n_classes, N_REPEATS)
    preds["target"] = target
    logits = rng.normal(0, 1, (len(preds), n_classes)) + 1.5 * np.eye(n_classes)[target]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for c in range(n_classes):
        preds[f"score_{c}"] = probs[:, c]
    folds = _folds_table("auc", rng.uniform(0.6, 0.9, N_REPEATS * N_FOLDS))
    return _write_run(run_dir, preds, folds, summary("subtype", "meanpool", "auc"))


def make_survival_run(run_dir: Path, rng: np.random.Generator,
                      features_dir: Path | None = None) -> Path:
    preds = _fold_assignment(rng)
    risk = rng.normal(0, 1, N_SLIDES)
    preds["time"] = np.tile(rng.exponential(10 * np.exp(-risk)), N_REPEATS) + 0.1
    preds["event"] = np.tile(rng.random(N_SLIDES) < 0.7, N_REPEATS).astype(int)
    preds["score"] = np.tile(risk, N_REPEATS) + rng.normal(0, 0.3, len(preds))
    medians = rng.normal(0, 0.3, N_REPEATS * N_FOLDS)
    folds = _folds_table("c_index", rng.uniform(0.55, 0.8, N_REPEATS * N_FOLDS),
                         extra={"train_risk_median": medians})
    run = _write_run(run_dir, preds, folds, summary("os", "abmil", "c_index", features_dir))
    save_fold_models(run, 1)
    return run


def write_slide(path: Path) -> Path:
    """A small pyramidal JPEG TIFF (the package's synthetic slide when available)."""
    try:
        from wsi_mil.testing.synthetic_slides import write_synthetic_slide
    except ImportError:
        write_synthetic_slide = None
    if write_synthetic_slide is not None:
        return write_synthetic_slide(path, width=SLIDE_W, height=SLIDE_H, mpp=0.5,
                                     tile_px=256, n_levels=2, tumor_fraction=0.2).path
    import tifffile

    img = np.full((SLIDE_H, SLIDE_W, 3), 230, np.uint8)
    img[200:800, 300:1200] = (150, 80, 160)
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(256, 256), photometric="rgb", compression="jpeg")
    return path


@dataclass
class TilingData:
    slide_path: Path
    tiling_root: Path
    coords_dir: Path
    features_dir: Path
    slide_table: Path


def write_tiling_and_features(root: Path, rng: np.random.Generator) -> TilingData:
    """One slide file shared by every slide id; coords + feature h5 + previews per slide."""
    slide_path = write_slide(root / "slides" / "synthetic.tiff")
    tiling_root = root / "mpp0.50_px224"
    coords_dir = tiling_root / "coords"
    features_dir = root / "histo_stats" / "mpp0.50_px224"
    for d in (coords_dir, features_dir, tiling_root / "previews"):
        d.mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(0, SLIDE_W - TILE_PX + 1, TILE_PX),
                         np.arange(0, SLIDE_H - TILE_PX + 1, TILE_PX))
    coords_level0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    coords = np.concatenate([np.full((len(coords_level0), 1), 11), coords_level0 // TILE_PX], 1)
    from PIL import Image

    for i in range(N_SLIDES):
        slide_id = f"s{i:02d}"
        write_coords(coords_dir / f"{slide_id}.h5", coords, coords_level0,
                     {"tile_size": TILE_PX, "target_mpp": 0.5, "slide_mpp": 0.5, "dz_level": 11,
                      "downsample": 1.0, "slide_path": str(slide_path),
                      "slide_width": SLIDE_W, "slide_height": SLIDE_H})
        with h5py.File(features_dir / f"{slide_id}.h5", "w") as f:
            f["features"] = rng.normal(0, 1, (len(coords), IN_DIM)).astype(np.float16)
            f["coords"] = coords
            f["coords_level0"] = coords_level0
            f.attrs.update({"encoder": "histo_stats", "tile_size": TILE_PX, "target_mpp": 0.5,
                            "slide_mpp": 0.5, "slide_id": slide_id})
        if i < 3:
            Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(
                tiling_root / "previews" / f"{slide_id}.png")
    table = root / "slides.csv"
    pd.DataFrame({"slide_id": [f"s{i:02d}" for i in range(N_SLIDES)],
                  "path": [str(slide_path)] * N_SLIDES}).to_csv(table, index=False)
    return TilingData(slide_path, tiling_root, coords_dir, features_dir, table)
