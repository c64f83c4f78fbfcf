"""One fit of a MIL head on a subset of a :class:`~wsi_mil.data.bags.BagStore`.

Adam with learning rate and weight decay; mini-batches of ``batch_size``
bags padded with a mask; ``n_tiles`` tiles sampled per slide and per epoch
(``tile_sampling``: ``"random"`` = a new sample every epoch, ``"fixed"`` = one
seeded sample per slide for every epoch and evaluation (the reference's rule),
``"first"`` = the first rows of the feature file; see :func:`~wsi_mil.data.bags.sample_tiles`).
With ``standardize``, features are scaled by the moments of this fit's
training tiles (:class:`~wsi_mil.data.scaling.FeatureScaler`), in training
and in its predictions.
Training batches are reshuffled each epoch and the last incomplete batch is
dropped when there is at least one full batch (as the reference). Evaluation
samples tiles with a generator seeded from ``seed`` only, so a prediction does
not depend on how many epochs were run before.

``precision="bf16"`` runs the head's forward (training and predictions)
under ``torch.autocast`` in bfloat16: matmuls in bf16 with float32
accumulation, weights, gradients' accumulation, Adam and losses in float32
(:func:`train_autocast`). ``"fp32"`` (default) runs everything in float32.

Determinism: everything random comes from ``seed`` (numpy generator for
sampling and batch order; torch seed for initialisation and dropout). Model
initialisation happens under a lock so that fits running in threads do not
interleave on torch's global generator.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wsi_mil.data.bags import BagStore, collate
from wsi_mil.data.cohort import Cohort
from wsi_mil.data.scaling import FeatureScaler
from wsi_mil.errors import ConfigError
from wsi_mil.evaluation import metrics
from wsi_mil.training.losses import cox_loss, make_loss

_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class FitParams:
    """Everything that defines one fit (besides the data)."""

    model: str
    hparams: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 16
    n_tiles: int | None = 1000
    tile_sampling: str = "random"
    seed: int = 0
    device: str = "cpu"
    standardize: bool = False  # scale features by moments of this fit's training tiles (FeatureScaler)
    precision: str = "fp32"  # fp32 | bf16: the head's forward under autocast (train_autocast)

    def __post_init__(self) -> None:
        check_train_precision(self.precision)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(
                f"bad fit parameters: epochs={self.epochs} (>=1), batch_size={self.batch_size} (>=1), "
                f"lr={self.lr} (>0), weight_decay={self.weight_decay} (>=0)"
            )


#: precisions a head trains in: bf16 (mixed: autocast matmuls) or fp32; fp16 would need loss scaling
TRAIN_PRECISIONS = ("fp32", "bf16")


def check_train_precision(precision: str) -> str:
    if precision not in TRAIN_PRECISIONS:
        hint = " (fp16 training needs loss scaling; use bf16)" if precision == "fp16" else ""
        raise ConfigError(f"precision {precision!r} is not one of {TRAIN_PRECISIONS}{hint}")
    return precision


def train_autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context a head's forward runs in: ``torch.autocast`` in bfloat16 for ``"bf16"``, else none.

    The caller casts the outputs to float32 before the loss or the scores.
    """
    if check_train_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@dataclass
class Targets:
    """Per-slide targets, aligned with the store rows."""

    task: str
    n_outputs: int
    y: np.ndarray | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    auc_classes: str = "all"  # multiclass macro AUC over all classes, or those "present" (reference)
    multiclass_scores: str = "probabilities"  # multiclass scores: softmax "probabilities" or raw "logits" (reference)

    @classmethod
    def from_cohort(cls, cohort: Cohort, auc_classes: str = "all",
                    multiclass_scores: str = "probabilities") -> Targets:
        if cohort.task == "survival":
            return cls("survival", 1, time=cohort.time, event=cohort.event)
        return cls("classification", cohort.n_outputs, y=cohort.y, auc_classes=auc_classes,
                   multiclass_scores=multiclass_scores)

    @property
    def metric_name(self) -> str:
        if self.task == "survival":
            return "c_index"
        return "auc" if self.n_outputs == 1 else "macro_auc"

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if self.task == "survival":
            return {"time": torch.from_numpy(self.time[idx]), "event": torch.from_numpy(self.event[idx])}
        return {"y": torch.from_numpy(self.y[idx])}

    def score(self, idx: np.ndarray, scores: np.ndarray) -> float:
        """The primary metric of predictions ``scores`` for rows ``idx``."""
        if self.task == "survival":
            return metrics.c_index(self.time[idx], scores, self.event[idx])
        if self.n_outputs == 1:
            return metrics.auc(self.y[idx], scores)
        return metrics.macro_ovr_auc(self.y[idx], scores, classes=self.auc_classes)

    def loss(self, idx: np.ndarray, scores: np.ndarray) -> float:
        """The training loss of predictions ``scores`` for rows ``idx`` (mean over slides; Cox:
        Breslow partial likelihood): the selection's tie-break between equal validation metrics."""
        idx = np.asarray(idx)
        if len(idx) == 0:
            return float("nan")
        if self.task == "survival":
            return float(cox_loss(torch.as_tensor(scores, dtype=torch.float64), torch.from_numpy(self.time[idx]),
                                  torch.from_numpy(self.event[idx])))
        y = self.y[idx].astype(int)
        if self.n_outputs == 1:
            p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
            return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))
        s = np.asarray(scores, dtype=np.float64)
        if self.multiclass_scores == "logits":
            log_p = s - s.max(1, keepdims=True)
            log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        else:
            log_p = np.log(np.clip(s, 1e-12, None))
        return float(-np.mean(log_p[np.arange(len(y)), y]))


@dataclass
class FitResult:
    model: torch.nn.Module
    val_curve: np.ndarray  # (epochs,) primary metric on the validation set after each epoch
    train_loss: np.ndarray  # (epochs,) mean training loss
    seconds: float
    scaler: FeatureScaler | None = None  # the fit's feature standardisation (params.standardize)
    val_loss: np.ndarray | None = None  # (epochs,) loss on the validation set after each epoch


def create_head(params: FitParams, in_dim: int, n_outputs: int) -> torch.nn.Module:
    """The MIL head of ``params``, initialised from ``params.seed``."""
    from wsi_mil.models import create_model

    with _INIT_LOCK:
        torch.manual_seed(params.seed)
        return create_model(params.model, in_dim, n_outputs, **params.hparams)


MULTICLASS_SCORES = ("probabilities", "logits")


def outputs_to_scores(out: torch.Tensor, task: str, multiclass_scores: str = "probabilities") -> np.ndarray:
    """Model outputs (B, C) -> scores: sigmoid (B,) binary, risk (B,) survival, and for a
    multiclass task softmax probabilities (B, C) or, with ``multiclass_scores="logits"``, the
    raw logits (B, C) (the reference scores its one-vs-rest AUC on logits; the argmax is the same)."""
    if multiclass_scores not in MULTICLASS_SCORES:
        raise ConfigError(f"multiclass_scores {multiclass_scores!r}; choose one of {MULTICLASS_SCORES}")
    out = out.detach().float().cpu()
    if task == "survival":
        return out[:, 0].numpy().astype(np.float64)
    if out.shape[1] == 1:
        return torch.sigmoid(out[:, 0]).numpy().astype(np.float64)
    if multiclass_scores == "logits":
        return out.numpy().astype(np.float64)
    return torch.softmax(out, dim=1).numpy().astype(np.float64)


@torch.no_grad()
def predict(model: torch.nn.Module, store: BagStore, idx: np.ndarray, task: str,
            n_tiles: int | None = 1000, tile_sampling: str = "random", seed: int = 0,
            batch_size: int = 16, device: str = "cpu", scaler: FeatureScaler | None = None,
            multiclass_scores: str = "probabilities", precision: str = "fp32") -> np.ndarray:
    """Scores of slides ``idx`` (see :func:`outputs_to_scores`); ``scaler``: the fit's standardisation;
    ``precision``: the fit's (:func:`train_autocast`)."""
    model.eval()
    rng = np.random.default_rng([seed, 7919])
    chunks = []
    for start in range(0, len(idx), batch_size):
        x, mask = collate(store, idx[start:start + batch_size], n_tiles, rng, tile_sampling, scaler)
        with train_autocast(precision, device):
            out = model(x.to(device), mask.to(device))
        chunks.append(outputs_to_scores(out, task, multiclass_scores))
    return np.concatenate(chunks) if chunks else np.zeros(0)


def fit(store: BagStore, targets: Targets, train_idx: np.ndarray, params: FitParams,
        val_idx: np.ndarray | None = None) -> FitResult:
    """Train a fresh head on ``train_idx``; if ``val_idx`` is given, score it after every epoch."""
    t0 = time.perf_counter()
    train_idx = np.asarray(train_idx)
    model = create_head(params, store.dim, targets.n_outputs).to(params.device)
    scaler = FeatureScaler.fit(store, train_idx) if params.standardize else None
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    loss_fn = make_loss(targets.task, targets.n_outputs)
    rng = np.random.default_rng(params.seed)
    torch_gen_seed = int(rng.integers(2**31))
    torch.manual_seed(torch_gen_seed)  # dropout etc. (process-local in worker processes)
    n_full = len(train_idx) // params.batch_size
    val_curve, val_loss, train_loss = [], [], []
    for _ in range(params.epochs):
        model.train()
        order = rng.permutation(train_idx)
        n_batches = n_full if n_full >= 1 else 1
        bounds = [(b * params.batch_size, (b + 1) * params.batch_size) for b in range(n_batches)]
        losses = []
        for lo, hi in bounds:
            batch = order[lo:hi]
            x, mask = collate(store, batch, params.n_tiles, rng, params.tile_sampling, scaler)
            with train_autocast(params.precision, params.device):
                out = model(x.to(params.device), mask.to(params.device))  # (B, C)
            out = out.float()
            tgt = {k: v.to(params.device) for k, v in targets.batch(batch).items()}
            loss = loss_fn(out, tgt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        train_loss.append(float(np.mean(losses)))
        if val_idx is not None and len(val_idx):
            scores = predict(model, store, np.asarray(val_idx), targets.task, params.n_tiles,
                             params.tile_sampling, params.seed, params.batch_size, params.device, scaler,
                             targets.multiclass_scores, params.precision)
            val_curve.append(targets.score(np.asarray(val_idx), scores))
            val_loss.append(targets.loss(np.asarray(val_idx), scores))
    return FitResult(model, np.asarray(val_curve, dtype=np.float64), np.asarray(train_loss),
                     time.perf_counter() - t0, scaler, np.asarray(val_loss, dtype=np.float64))
