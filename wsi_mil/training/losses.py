"""Training losses of the slide-level tasks.

- binary classification: BCE-with-logits on one logit per slide (B, 1);
- multiclass: cross-entropy on K logits (B, K);
- survival: negative Cox partial log-likelihood with **Breslow** handling of
  tied times, risk sets taken **over the batch** (as the reference
  implementation: a mini-batch is a sample of the cohort, and the risk set of
  an event i is every slide j of the batch with ``time_j >= time_i``)::

      loss = -1/B * sum_{i: event_i} [ eta_i - log sum_{j: t_j >= t_i} exp(eta_j) ]

  ``eta`` is the predicted risk (higher = shorter survival). Dividing by the
  batch size B (not by the number of events) matches the reference's
  ``reduction="mean"``, so its learning-rate grid keeps its meaning. A batch
  without an event gives a zero loss that still carries a (zero) gradient.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from wsi_mil.errors import ConfigError


def cox_loss(
    risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Breslow negative partial log-likelihood; ``risk``, ``time``, ``event`` are (B,) or (B, 1)."""
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"cox_loss reduction {reduction!r}; choose 'mean' or 'sum'")
    eta = risk.reshape(-1)  # (B,)
    if not eta.is_floating_point():
        eta = eta.float()
    t = time.reshape(-1).to(eta.device, torch.float64)
    e = event.reshape(-1).to(eta.device).bool()
    order = torch.argsort(t, descending=True, stable=True)
    eta_s, t_s, e_s = eta[order], t[order], e[order]
    # log sum_{j: t_j >= t_i} exp(eta_j): cumulative over decreasing times, then
    # every member of a tie group takes the value at the end of its group.
    log_cum = torch.logcumsumexp(eta_s, dim=0)  # (B,)
    _, counts = torch.unique_consecutive(t_s, return_counts=True)
    group_end = torch.repeat_interleave(torch.cumsum(counts, 0) - 1, counts)
    log_risk_set = log_cum[group_end]
    terms = (eta_s - log_risk_set) * e_s.to(eta.dtype)
    total = -terms.sum()
    return total / eta.numel() if reduction == "mean" else total


def make_loss(task: str, n_outputs: int) -> Callable[[torch.Tensor, dict], torch.Tensor]:
    """Loss of ``task`` taking model outputs (B, C) and a target dict of tensors.

    Targets: classification ``{"y": (B,) long}``; survival ``{"time", "event"}``.
    """
    if task == "survival":
        return lambda out, tgt: cox_loss(out[:, 0], tgt["time"], tgt["event"])
    if task != "classification":
        raise ConfigError(f"task {task!r}; choose 'classification' or 'survival'")
    if n_outputs == 1:
        return lambda out, tgt: F.binary_cross_entropy_with_logits(
            out[:, 0], tgt["y"].float()
        )
    return lambda out, tgt: F.cross_entropy(out, tgt["y"].long())
