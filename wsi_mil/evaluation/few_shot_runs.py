"""Few-shot runs on files: a tile dataset or a slide cohort -> tables, supports, per-tile scores.

Stage function behind ``wsi-mil few-shot``; the maths is in
:mod:`wsi_mil.evaluation.few_shot`. Two inputs (:class:`FewShotData`):

- tile mode (:func:`load_tile_pool`): tile-feature folders split as in
  :func:`~wsi_mil.evaluation.tile_tasks.load_tile_task`; an optional
  ``tile_table`` CSV ``tile_id,slide_id[,patient_id]`` says which slide and
  patient each tile comes from (needed to sample by slide / patient and for
  the slide-level soft vote);
- slide mode (:func:`load_slide_pool`): per-slide tile features + a cohort CSV
  (``slide_id, patient_id, label``); every tile carries its slide's label
  (CITE's setting). Train / test by the cohort's ``split`` column, else a
  ``split_csv`` (``slide_id,split``), else a seeded patient-level stratified
  split. ``max_tiles_per_slide`` keeps a seeded subset of each slide's tiles.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger

from wsi_mil.errors import CohortError, ConfigError, FileFormatError, MissingFeaturesError
from wsi_mil.io.features import FeatureProvenance


@dataclass
class FewShotData:
    """Train and test tiles with their slides and patients (None when unknown)."""

    train_x: np.ndarray
    train_y: np.ndarray
    train_keys: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_keys: np.ndarray
    test_ids: np.ndarray
    class_names: list[str]
    provenance: FeatureProvenance = field(default_factory=FeatureProvenance)
    train_slides: np.ndarray | None = None
    train_patients: np.ndarray | None = None
    test_slides: np.ndarray | None = None
    test_patients: np.ndarray | None = None

    def units(self, sample_by: str) -> np.ndarray | None:
        """Sampling units of the train tiles: None (tiles), slides or patients."""
        if sample_by == "tile":
            return None
        units = {"slide": self.train_slides, "patient": self.train_patients}.get(sample_by)
        if sample_by not in ("slide", "patient"):
            raise ConfigError(f"sample_by={sample_by!r}; valid: tile, slide, patient")
        if units is None:
            raise ConfigError(f"sample_by={sample_by} needs the {sample_by} of every tile: give "
                              "tile_table=<CSV tile_id,slide_id[,patient_id]> or use a slide cohort")
        return units


def _tile_table(path: str | Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    table = pd.read_csv(path, dtype=str)
    if not {"tile_id", "slide_id"} <= set(table.columns):
        raise FileFormatError(f"tile_table {path} needs columns tile_id,slide_id[,patient_id]; "
                              f"found {list(table.columns)}")
    table = table.set_index("tile_id")
    missing = [t for t in ids if t not in table.index]
    if missing:
        raise FileFormatError(f"{len(missing)} tile(s) are not in tile_table {path}, e.g. {missing[:3]}")
    slides = table.loc[ids, "slide_id"].to_numpy().astype(str)
    patients = table.loc[ids, "patient_id"].to_numpy().astype(str) if "patient_id" in table else None
    return slides, patients


def load_tile_pool(
    features_dir: str | Path,
    test_features_dir: str | Path | None = None,
    split_csv: str | Path | None = None,
    test_fraction: float = 0.3,
    drop_classes: Sequence[str] = (),
    tile_table: str | Path | None = None,
    seed: int = 0,
) -> FewShotData:
    """Tile mode (see the module docstring)."""
    from wsi_mil.evaluation.tile_tasks import load_tile_task

    task = load_tile_task(features_dir, test_features_dir, split_csv, test_fraction, drop_classes,
                          seed=seed)
    data = FewShotData(task.train_x, task.train_y, task.train_keys, task.test_x, task.test_y,
                       task.test_keys, task.test_ids, task.class_names, task.provenance)
    if tile_table is not None:
        data.train_slides, data.train_patients = _tile_table(tile_table, task.train_ids)
        data.test_slides, data.test_patients = _tile_table(tile_table, task.test_ids)
    return data


def _patient_split(table: pd.DataFrame, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded, class-stratified split of patients; True = test slide."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    patients = table.groupby("patient_id", sort=True)["y"].first()
    test = []
    for cls in np.unique(patients.to_numpy()):
        ids = rng.permutation(patients.index[patients == cls].to_numpy())
        test += ids[: max(1, int(round(test_fraction * ids.size)))].tolist()
    return table["patient_id"].isin(test).to_numpy()


def load_slide_pool(
    features_dir: str | Path,
    cohort_csv: str | Path,
    features_source: str = "auto",
    label_column: str = "label",
    split_csv: str | Path | None = None,
    test_fraction: float = 0.3,
    max_tiles_per_slide: int | None = None,
    seed: int = 0,
) -> FewShotData:
    """Slide mode (see the module docstring): every tile labelled with its slide's label."""
    from wsi_mil.data.cohort import read_cohort
    from wsi_mil.evaluation.provenance import check_consistent
    from wsi_mil.io.feature_sources import (
        list_feature_slides,
        read_slide_features,
        read_slide_provenance,
        resolve_source,
    )

    cohort = read_cohort(cohort_csv, "classification", label_column)
    table = cohort.table.copy()
    raw = pd.read_csv(cohort_csv, dtype=str).set_index("slide_id")
    if split_csv is not None:
        split = pd.read_csv(split_csv, dtype=str)
        if not {"slide_id", "split"} <= set(split.columns):
            raise FileFormatError(f"split_csv {split_csv} needs columns slide_id,split")
        table["split"] = table["slide_id"].map(dict(zip(split["slide_id"], split["split"],
                                                        strict=True)))
    elif "split" in raw.columns:
        table["split"] = table["slide_id"].map(raw["split"])
    else:
        logger.warning("no split given: seeded patient-level stratified split, test_fraction={}",
                       test_fraction)
        table["split"] = np.where(_patient_split(table, test_fraction, seed), "test", "train")
    table = table[table["split"].isin(["train", "test"])]
    both = set(table.loc[table.split == "train", "patient_id"]) & set(
        table.loc[table.split == "test", "patient_id"])
    if both:
        raise CohortError(f"{len(both)} patient(s) have slides in train and test, e.g. {sorted(both)[:3]}")
    source = resolve_source(features_dir, features_source)
    available = list_feature_slides(features_dir, source)
    missing = sorted(set(table["slide_id"]) - available)
    if missing:
        logger.warning("{} cohort slide(s) have no features and are left out, e.g. {}",
                       len(missing), missing[:5])
    table = table[table["slide_id"].isin(available)]
    if table.empty:
        raise MissingFeaturesError(f"no slide of {cohort_csv} has features in {features_dir}")
    provs = [(sid, read_slide_provenance(features_dir, sid, source)) for sid in table["slide_id"]]
    check_consistent(provs, f"features of {features_dir}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "test": []}
    for row in table.itertuples():
        feats = np.asarray(read_slide_features(features_dir, row.slide_id, source), np.float32)
        if max_tiles_per_slide is not None and len(feats) > max_tiles_per_slide:
            feats = feats[np.sort(rng.choice(len(feats), int(max_tiles_per_slide), replace=False))]
        parts[row.split].append((feats, row.y, row.slide_id, row.patient_id))
    if not parts["train"] or not parts["test"]:
        raise ConfigError(f"empty train or test set ({len(parts['train'])} train, "
                          f"{len(parts['test'])} test slides)")

    def stack(items):
        x = np.concatenate([f for f, *_ in items])
        rep = [len(f) for f, *_ in items]
        y = np.repeat([i[1] for i in items], rep).astype(np.int64)
        slides = np.repeat([i[2] for i in items], rep).astype(str)
        patients = np.repeat([i[3] for i in items], rep).astype(str)
        idx = np.concatenate([np.arange(n) for n in rep])
        keys = np.char.add(np.char.add(slides, ":"), idx.astype(str))
        return x, y, slides, patients, keys

    tr_x, tr_y, tr_s, tr_p, tr_k = stack(parts["train"])
    te_x, te_y, te_s, te_p, te_k = stack(parts["test"])
    known = next((p for _, p in provs if p.known), provs[0][1])
    logger.info("few-shot cohort: {} train slides ({} tiles), {} test slides ({} tiles), classes {}",
                len(parts["train"]), len(tr_y), len(parts["test"]), len(te_y), cohort.classes)
    return FewShotData(tr_x, tr_y, tr_k, te_x, te_y, te_k, te_k,
                       [str(c) for c in cohort.classes], known, tr_s, tr_p, te_s, te_p)


def _supports_table(data: FewShotData, result, sample_by: str) -> pd.DataFrame:
    """One row per support unit and (k, seed): the audit trail of every support set."""
    units = data.units(sample_by)
    names = np.asarray(data.class_names)
    frames = []
    for (k, seed), idx in result.supports.items():
        unit = data.train_keys[idx] if units is None else units[idx]
        frame = pd.DataFrame({"unit": unit, "label": names[data.train_y[idx]]})
        frame = frame.groupby(["unit", "label"], sort=True).size().rename("n_tiles").reset_index()
        frames.append(frame.assign(k=k, seed=seed, sample_by=sample_by))
    table = pd.concat(frames, ignore_index=True)
    return table[["k", "seed", "sample_by", "unit", "label", "n_tiles"]]


def _write_tile_scores(path: Path, data: FewShotData, scores: dict) -> None:
    from wsi_mil.io.atomic import atomic_path

    arrays = {f"{m}_k{k}_s{s}": v for (m, k, s), v in scores.items()}
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, test_ids=data.test_ids.astype(str), test_y=data.test_y,
                            classes=np.asarray(data.class_names), **arrays)


def run_few_shot_files(
    data: FewShotData,
    output_dir: str | Path,
    aligned_text=None,
    cite_text=None,
    sample_by: str = "tile",
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = ("logreg",),
    metric: str = "balanced_accuracy",
    head_kwargs: dict | None = None,
    head_logit_scale: float | None = None,
    cite_kwargs: dict | None = None,
    probe_kwargs: dict | None = None,
    n_bootstrap: int = 200,
    confidence_level: float = 0.95,
    macro_over: str = "present",
    allow_mixed_models: bool = False,
    save_tile_scores: bool = True,
    image_projection: np.ndarray | None = None,
):
    """Run :func:`~wsi_mil.evaluation.few_shot.run_few_shot` on ``data`` and write every output.

    ``aligned_text`` (:class:`~wsi_mil.evaluation.text_side.ClassText` of the
    features' own encoder) gives the prototypes of ``text_init`` / ``zero_shot``
    (provenance-guarded); ``cite_text`` the frozen class texts of ``cite``.
    Writes ``few_shot`` (per seed), ``few_shot_summary``, ``few_shot_table``
    (tile level), ``few_shot_slide_table`` (soft vote, when slides are known),
    ``few_shot_supports.csv``, ``few_shot_slide_scores.csv`` and
    ``few_shot_tile_scores.npz``.
    """
    from wsi_mil.evaluation.few_shot import run_few_shot
    from wsi_mil.evaluation.provenance import check_same_model
    from wsi_mil.evaluation.tables import write_csv, write_table
    from wsi_mil.evaluation.text_side import resolve_logit_scale

    out = Path(output_dir)
    prototypes = class_text = None
    scale = resolve_logit_scale(head_logit_scale, None, "few-shot") if aligned_text is None else None
    if aligned_text is not None:
        check_same_model(data.provenance, aligned_text.model_provenance, allow_mixed_models,
                         "few-shot (text_init / zero_shot)")
        prototypes = aligned_text.prototypes_for(
            data.class_names, data.train_x.shape[1] if image_projection is None else None)
        scale = resolve_logit_scale(head_logit_scale, aligned_text.learned_logit_scale, "few-shot")
    if cite_text is not None:
        class_text = cite_text.prototypes_for(data.class_names)
        logger.info("CITE head: class texts {} from {}", class_text.shape, cite_text.side.name
                    if cite_text.side is not None else "precomputed embeddings")
    result = run_few_shot(
        data.train_x, data.train_y, data.test_x, data.test_y, ks=ks, seeds=seeds, methods=methods,
        class_names=data.class_names, prototypes=prototypes, image_projection=image_projection,
        head_kwargs={**(head_kwargs or {}), "logit_scale": scale}, probe_kwargs=probe_kwargs,
        train_ids=data.train_keys, test_ids=data.test_keys, train_units=data.units(sample_by),
        test_slides=data.test_slides, test_groups=data.test_patients, class_text=class_text,
        cite_kwargs=cite_kwargs, zero_shot_logit_scale=scale, n_bootstrap=n_bootstrap,
        confidence_level=confidence_level, macro_over=macro_over, keep_tile_scores=save_tile_scores,
    )
    write_table(result.per_seed, out / "few_shot")
    write_table(result.summary, out / "few_shot_summary")
    tile_table = result.table(metric, "tile")
    write_table(tile_table, out / "few_shot_table")
    logger.info("few-shot tile-level macro {} (mean, sd over {} seeds, 95% interval):\n{}", metric,
                len(seeds), tile_table.to_string(index=False))
    if data.test_slides is not None:
        slide_table = result.table(metric, "slide")
        write_table(slide_table, out / "few_shot_slide_table")
        write_csv(result.slide_scores, out / "few_shot_slide_scores.csv")
        logger.info("few-shot slide-level (soft vote) macro {}:\n{}", metric,
                    slide_table.to_string(index=False))
    write_csv(_supports_table(data, result, sample_by), out / "few_shot_supports.csv")
    if save_tile_scores:
        _write_tile_scores(out / "few_shot_tile_scores.npz", data, result.tile_scores)
    logger.info("few-shot tables written to {}", out)
    return result
