"""A synthetic cohort of feature bags with a planted signal (tests, benches, demo).

Patients own one or several slides. Every tile feature is Gaussian noise;
a fraction of *witness* tiles is shifted along a class direction:

- classification: slides of a patient of class c > 0 get a fraction
  ``witness_fraction`` of tiles shifted by ``signal`` along direction c
  (class 0 has no witness tile), as in tumour-detection MIL tasks;
- survival: each patient has a latent risk r ~ N(0, 1); its slides get a
  witness fraction growing with r; times are Weibull (shape 2) with scale
  exp(-r) (higher risk = shorter survival; oracle c-index ~0.83), censored at random with ``censoring``.

Feature files are written in this package's h5 layout (default), the
reference ``features.npy`` layout or the TRIDENT layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from wsi_mil.version import __version__

FORMATS = ("wsi_mil", "reference", "trident")


@dataclass
class SyntheticCohort:
    cohort_csv: Path
    features_dir: Path
    table: pd.DataFrame
    directions: np.ndarray  # (n_directions, D) unit vectors of the planted signal
    risk: np.ndarray | None = None  # per-slide latent risk (survival)


def _write_bag(features_dir: Path, slide_id: str, x: np.ndarray, fmt: str, rng: np.random.Generator) -> None:
    n = x.shape[0]
    side = int(np.ceil(np.sqrt(n)))
    col, row = np.arange(n) % side, np.arange(n) // side
    if fmt == "reference":
        d = features_dir / slide_id
        d.mkdir(parents=True, exist_ok=True)
        meta = np.stack([np.full(n, 16), col, row], axis=1).astype(x.dtype)
        np.save(d / "features.npy", np.concatenate([meta, x], axis=1))
        return
    with h5py.File(features_dir / f"{slide_id}.h5", "w") as f:
        if fmt == "trident":
            f.create_dataset("features", data=x[None] if rng.random() < 0.5 else x)
            f.create_dataset("coords", data=np.stack([col, row], 1).astype(np.int64) * 224)
            return
        f.create_dataset("features", data=x)
        f.create_dataset("coords", data=np.stack([np.full(n, 16), col, row], 1).astype(np.int64))
        f.create_dataset("coords_level0", data=np.stack([col, row], 1).astype(np.int64) * 448)
        f.attrs.update({"wsi_mil_version": __version__, "encoder": "synthetic", "embed_dim": x.shape[1],
                        "slide_id": slide_id, "precision": str(x.dtype)})


def write_synthetic_cohort(
    out_dir: str | Path,
    task: str = "classification",
    n_patients: int = 40,
    slides_per_patient: tuple[int, int] = (1, 3),
    n_tiles: tuple[int, int] = (40, 120),
    dim: int = 32,
    n_classes: int = 2,
    witness_fraction: tuple[float, float] = (0.1, 0.3),
    signal: float = 2.0,
    censoring: float = 0.3,
    n_centers: int = 0,
    string_labels: bool = False,
    fmt: str = "wsi_mil",
    dtype: str = "float16",
    seed: int = 0,
) -> SyntheticCohort:
    """Write ``<out_dir>/features/*`` and ``<out_dir>/cohort.csv``; return their description."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r}; choose one of {FORMATS}")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    features_dir = out_dir / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    n_dir = n_classes if task == "classification" else 1
    directions = rng.normal(size=(n_dir, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rows, risks = [], []
    for p in range(n_patients):
        patient = f"P{p:04d}"
        label = int(rng.integers(0, n_classes)) if task == "classification" else 0
        risk = float(rng.normal()) if task == "survival" else 0.0
        time = float(np.exp(-risk) * rng.weibull(2.0) * 365) + 1.0
        event = int(rng.random() >= censoring)
        center = f"C{p % n_centers}" if n_centers else None
        for s in range(int(rng.integers(slides_per_patient[0], slides_per_patient[1] + 1))):
            slide_id = f"{patient}_S{s}"
            n = int(rng.integers(n_tiles[0], n_tiles[1] + 1))
            x = rng.normal(size=(n, dim)).astype(np.float32)
            if task == "classification" and label > 0:
                frac, direction = rng.uniform(*witness_fraction), directions[label]
            elif task == "survival":
                frac = witness_fraction[1] / (1 + np.exp(-2 * risk))
                direction = directions[0]
            else:
                frac = 0.0
                direction = directions[0]
            k = int(round(frac * n))
            if k:
                x[rng.choice(n, size=k, replace=False)] += signal * direction
            _write_bag(features_dir, slide_id, x.astype(dtype), fmt, rng)
            row = {"slide_id": slide_id, "patient_id": patient}
            if task == "classification":
                row["label"] = f"class_{label}" if string_labels else label
            else:
                row.update(time=round(time, 3), event=event)
            if center is not None:
                row["center_id"] = center
            rows.append(row)
            risks.append(risk)
    table = pd.DataFrame(rows)
    table["cohort"] = "SYNTH"
    csv = out_dir / "cohort.csv"
    table.to_csv(csv, index=False)
    return SyntheticCohort(csv, features_dir, table, directions,
                           np.asarray(risks) if task == "survival" else None)
