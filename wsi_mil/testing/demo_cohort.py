"""The demo's embedded cohort: synthetic 40x slides, patients, labels and survival.

Patients are alternately tumour-positive and tumour-negative; every slide of a
positive patient carries planted tumour regions (``tumor_fraction`` drawn in a
range), so ``label`` = tumour present is consistent per patient. Survival time
is driven by the tumour burden of the patient (mean tumour share of its
slides) with log-normal noise and random censoring, so a head that sees the
tumour also ranks survival.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from wsi_mil.errors import ConfigError
from wsi_mil.io.atomic import write_json_atomic
from wsi_mil.testing.synthetic_slides import write_synthetic_slide

MANIFEST = "cohort_manifest.json"


@dataclass
class DemoCohort:
    """``slides_csv``: slide_id, path, mpp; ``cohort_csv``: slide_id, patient_id, label,
    time, event, tumor_burden; ``slide_dir``: the .svs files."""

    slides_csv: Path
    cohort_csv: Path
    slide_dir: Path
    table: pd.DataFrame


def _plan(n_slides: int, n_patients: int, seed: int) -> pd.DataFrame:
    """One row per slide: patient, label, tumour fraction, survival (time in months, event)."""
    if not 2 <= n_patients <= n_slides <= 2 * n_patients:
        raise ConfigError(
            f"need 2 <= n_patients <= n_slides <= 2 * n_patients, got n_slides={n_slides}, "
            f"n_patients={n_patients}"
        )
    rng = np.random.default_rng(seed)
    n_double = n_slides - n_patients  # patients owning two slides
    rows = []
    for p in range(n_patients):
        label = p % 2  # balanced: positives and negatives alternate
        n_own = 2 if p < n_double else 1
        for s in range(n_own):
            fraction = float(rng.uniform(0.15, 0.5)) if label else 0.0
            rows.append(dict(slide_id=f"DEMO-{p:03d}-{s}", patient_id=f"P{p:03d}",
                             label=label, tumor_fraction=round(fraction, 4),
                             seed=int(rng.integers(0, 2**31 - 1))))
    table = pd.DataFrame(rows)
    burden = table.groupby("patient_id")["tumor_fraction"].transform("mean")
    noise = rng.normal(0.0, 0.35, n_patients)
    censor = rng.uniform(12.0, 120.0, n_patients)  # months of follow-up
    per_patient = {}
    for i, (pid, b) in enumerate(burden.groupby(table["patient_id"]).first().items()):
        event_time = 60.0 * np.exp(-5.0 * b + noise[i])
        per_patient[pid] = (min(event_time, censor[i]), int(event_time <= censor[i]))
    table["time"] = [round(per_patient[p][0], 3) for p in table["patient_id"]]
    table["event"] = [per_patient[p][1] for p in table["patient_id"]]
    table["tumor_burden"] = burden.round(4)
    return table


def write_demo_cohort(folder: str | Path, n_slides: int = 32, n_patients: int = 24,
                      width: int = 6144, height: int = 4608, mpp: float = 0.25,
                      seed: int = 0) -> DemoCohort:
    """Write (or reuse) the demo cohort under ``folder``: ``slides/*.svs``, ``slides.csv``,
    ``cohort.csv``. Slides are 40x (``mpp`` um/px) Aperio-style pyramidal JPEG TIFFs of
    ``width`` x ``height`` level-0 px. A rerun with the same arguments reuses every
    slide already written (the manifest records the arguments)."""
    folder = Path(folder)
    slide_dir = folder / "slides"
    slide_dir.mkdir(parents=True, exist_ok=True)
    args = dict(n_slides=n_slides, n_patients=n_patients, width=width, height=height,
                mpp=mpp, seed=seed)
    manifest = folder / MANIFEST
    reuse = manifest.exists() and json.loads(manifest.read_text()) == args
    table = _plan(n_slides, n_patients, seed)
    paths = []
    for row in tqdm(list(table.itertuples(index=False)), desc="demo slides", unit="slide"):
        path = slide_dir / f"{row.slide_id}.svs"
        if not (reuse and path.exists()):
            tmp = path.with_name(f".{path.stem}.tmp.svs")
            write_synthetic_slide(tmp, width=width, height=height, mpp=mpp,
                                  tumor_fraction=row.tumor_fraction, seed=row.seed)
            tmp.replace(path)
        paths.append(str(path.resolve()))
    table["path"] = paths
    slides_csv, cohort_csv = folder / "slides.csv", folder / "cohort.csv"
    table.assign(mpp=mpp)[["slide_id", "path", "mpp"]].to_csv(slides_csv, index=False)
    table[["slide_id", "patient_id", "label", "time", "event", "tumor_burden"]].to_csv(
        cohort_csv, index=False)
    write_json_atomic(manifest, args)
    return DemoCohort(slides_csv, cohort_csv, slide_dir, table)
