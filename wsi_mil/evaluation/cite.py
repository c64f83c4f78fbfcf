"""CITE-style few-shot head: frozen class-text embeddings, a learned image->text projection.

CITE (Zhang et al., MICCAI 2023, "Text-guided foundation model adaptation for
pathological image classification") classifies an image by the cosine of its
projected embedding with frozen class-text embeddings of a biomedical language
model (BioLinkBERT) that was never aligned with the image encoder; only the
projection (and prompts of the image encoder, which we keep frozen) is learned.

Here, on frozen tile features x (N, D_img) and class-text embeddings T (C, D_txt)
(:meth:`wsi_mil.evaluation.text_side.ClassText.prototypes_for` of any text
side: a Hugging Face text model or a CLIP encoder's own text tower)::

    logits = s * unit(x @ W) @ unit(T).T        W (D_img, D_txt) learned, T frozen
    s = exp(log_s), learned when ``learn_logit_scale`` (init ``logit_scale``)

trained with cross-entropy, Adam, ``steps`` mini-batches of ``batch_size``
support tiles drawn with replacement (the cost does not grow with the support:
slide-sampled supports hold thousands of tiles). Seeded and deterministic on CPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from wsi_mil.errors import ConfigError


class CiteHead(nn.Module):
    """``logits (B, C) = exp(log_scale) * unit(x (B, D_img) @ W) @ unit(T).T``; T frozen."""

    def __init__(self, in_dim: int, class_text: torch.Tensor, logit_scale: float,
                 learn_logit_scale: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, class_text.shape[1], bias=False)  # W: D_img -> D_txt
        self.register_buffer("class_text", nn.functional.normalize(class_text.float(), dim=-1))
        scale = torch.tensor(math.log(float(logit_scale)))
        if learn_logit_scale:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(self.proj(x), dim=-1)  # (B, D_txt)
        return self.log_scale.exp() * z @ self.class_text.T  # (B, C)


class CiteClassifier:
    """sklearn-style CITE head: ``fit(x, y)``, ``predict_proba(x)`` -> (N, C); see the module doc."""

    def __init__(self, class_text: np.ndarray, logit_scale: float = 10.0,
                 learn_logit_scale: bool = True, steps: int = 200, batch_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0) -> None:
        self.class_text = class_text
        self.logit_scale = logit_scale
        self.learn_logit_scale = learn_logit_scale
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed

    def __repr__(self) -> str:
        shape = None if self.class_text is None else tuple(np.shape(self.class_text))
        return (f"CiteClassifier(class_text={shape}, steps={self.steps}, lr={self.lr}, "
                f"logit_scale={self.logit_scale}, learn_logit_scale={self.learn_logit_scale}, "
                f"seed={self.seed})")

    def fit(self, x: np.ndarray, y: np.ndarray) -> CiteClassifier:
        if self.class_text is None:
            raise ConfigError("the CITE head needs class-text embeddings (C, D_txt)")
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        text = torch.as_tensor(np.asarray(self.class_text, dtype=np.float32))
        if int(yt.max()) >= text.shape[0]:
            raise ConfigError(f"labels up to {int(yt.max())} for {text.shape[0]} class texts")
        gen = torch.Generator().manual_seed(int(self.seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            self.head_ = CiteHead(xt.shape[1], text, self.logit_scale, self.learn_logit_scale)
        opt = torch.optim.Adam(self.head_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        batch = min(int(self.batch_size), len(yt))
        self.losses_ = []
        for _ in range(int(self.steps)):
            idx = torch.randint(0, len(yt), (batch,), generator=gen)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(self.head_(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            self.losses_.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.head_(torch.as_tensor(np.asarray(x, dtype=np.float32)))
        return torch.softmax(logits.double(), dim=-1).numpy()
