"""A linear head on frozen image features, initialised from class prompt embeddings (CITE-style).

The head is a cosine classifier: ``logits = logit_scale * unit(x) @ W.T + b``
with ``W`` (C, D_img) and ``b`` (C,). With ``init="text"``, ``W`` starts at
the class prototypes (:func:`wsi_mil.evaluation.zero_shot.make_class_prototypes`)
and ``b = 0``, so before any step the head *is* the zero-shot classifier; it
is then fine-tuned on the k shots. ``init="random"`` starts ``W`` at random
unit rows (the same norm as the text prototypes, seeded) and is trained
identically: the few-shot table compares the two.

Projection into the image space
-------------------------------
wsi_mil's CLIP-style encoders return image embeddings already projected into
the joint image-text space (``Encoder.forward``), so the prototypes (C, D_joint)
are used directly (``image_projection=None``). If the features are the image
tower's pre-projection output (D_img), pass the image projection
``P`` (D_img, D_joint) with ``joint = x @ P`` (open_clip ``visual.proj``, HF
``visual_projection.weight.T``); since ``t . (x P) = x . (P t)`` the initial
weights are ``W = T @ P.T`` (C, D_img), i.e. the text prototypes pulled back to
the image space. The cosine normalisation is then applied to ``x`` (not to
``x P``), so the initial head equals zero-shot up to a per-tile positive scale,
which leaves its predictions unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wsi_mil.errors import ConfigError

INITS = ("text", "random")


class CosineLinearHead(nn.Module):
    """``logits (B, C) = logit_scale * unit(x (B, D)) @ weight.T + bias``."""

    def __init__(self, weight: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())  # (C, D)
        self.bias = nn.Parameter(torch.zeros(weight.shape[0]))  # (C,)
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x, dim=-1)  # (B, D)
        return self.logit_scale * x @ self.weight.T + self.bias  # (B, C)


def initial_weights(
    init: str,
    n_classes: int,
    dim: int,
    prototypes: np.ndarray | None = None,
    image_projection: np.ndarray | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Initial ``W`` (C, D_img): text prototypes (pulled back by the projection) or random."""
    if init not in INITS:
        raise ConfigError(f"init={init!r}; valid: {list(INITS)}")
    if init == "random":
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(n_classes, dim, generator=gen)
        return nn.functional.normalize(w, dim=-1)
    if prototypes is None:
        raise ConfigError("init='text' needs the class prototypes (C, D_joint)")
    protos = torch.as_tensor(np.asarray(prototypes, dtype=np.float32))
    if image_projection is not None:
        proj = torch.as_tensor(np.asarray(image_projection, dtype=np.float32))  # (D_img, D_joint)
        if proj.shape[1] != protos.shape[1]:
            raise ConfigError(f"image_projection {tuple(proj.shape)} does not map into the "
                              f"prototypes' space (D_joint={protos.shape[1]})")
        protos = protos @ proj.T  # (C, D_img)
        protos = protos / protos.norm(dim=-1, keepdim=True).mean()  # keep the scale ~1
    if protos.shape != (n_classes, dim):
        raise ConfigError(f"prototypes of shape {tuple(protos.shape)} for {n_classes} classes of "
                          f"features of dim {dim}; pass image_projection when D_img != D_joint")
    return protos


class LinearHeadClassifier:
    """Few-shot cosine linear head, fine-tuned full-batch with Adam (sklearn-style).

    ``fit(x, y)`` trains ``epochs`` full-batch steps of cross-entropy;
    ``predict_proba(x)`` -> (N, n_classes). Deterministic given ``seed``.
    """

    def __init__(
        self,
        init: str = "text",
        prototypes: np.ndarray | None = None,
        image_projection: np.ndarray | None = None,
        n_classes: int | None = None,
        logit_scale: float = 100.0,
        epochs: int = 50,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.init = init
        self.prototypes = prototypes
        self.image_projection = image_projection
        self.n_classes = n_classes
        self.logit_scale = logit_scale
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed

    def __repr__(self) -> str:
        return (f"LinearHeadClassifier(init={self.init!r}, epochs={self.epochs}, lr={self.lr}, "
                f"logit_scale={self.logit_scale}, seed={self.seed})")

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearHeadClassifier:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        n_classes = int(self.n_classes or (
            len(self.prototypes) if self.prototypes is not None else int(yt.max()) + 1))
        weight = initial_weights(self.init, n_classes, xt.shape[1], self.prototypes,
                                 self.image_projection, self.seed)
        self.head_ = CosineLinearHead(weight, self.logit_scale)
        opt = torch.optim.Adam(self.head_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.losses_ = []
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(self.head_(xt), yt)
            loss.backward()
            opt.step()
            self.losses_.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.head_(torch.as_tensor(np.asarray(x, dtype=np.float32)))
        return torch.softmax(logits.double(), dim=-1).numpy()
