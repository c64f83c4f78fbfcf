"""MUSK (Xiang et al., Nature 2025): BEiT-3 multiway ViT-L/16 at 384 px, image + text.

Our own compact BEiT-3 (torchscale's architecture, MIT) with the official key
layout of ``lilab-stanford/MUSK`` (``musk.modeling.musk_large_patch16_384``):
``beit3.{text_embed, vision_embed, encoder.{embed_positions, layers, layer_norm}}``,
``vision_head``, ``language_head``, ``logit_scale``. Every encoder layer holds two
experts (``A``: vision, ``B``: language) for its attention projections, layer
norms and feed-forward (sub-LN, pre-norm); positions start at 2 (fairseq).
(torchscale itself pins timm 0.6.13 and fairscale 0.4.0, which conflict with
this package's timm >= 1.0, so it is not a dependency.)

Two image embeddings (``embedding=``):

- ``"mil"`` (default, the MIL / linear-probe feature, 2048-d): MUSK's
  ``ms_aug=True, with_head=False, out_norm=False``: the CLS token at 1x
  concatenated with the mean CLS of the four 384-px quarters of the image
  upsampled (bicubic) to 768 px;
- ``"joint"`` (1024-d): ``ms_aug=False, with_head=True, out_norm=True``, the
  normalised image embedding in the image-text space (zero-shot, retrieval).

:meth:`MuskEncoder.encode_image_joint` always returns the joint embedding;
:meth:`MuskEncoder.encode_text` the normalised text embedding (XLM-R
sentencepiece tokenizer, ``tokenizer.spm``, at most 100 tokens).

Weights: hub ``xiangjx/musk`` (``model.safetensors``, gated) or a local file /
folder. Preprocessing (model card): ``Resize(384, bicubic)`` -> ``CenterCrop(384)``,
Inception mean/std 0.5. The tokenizer file is looked for beside the weights
(``tokenizer.spm``, as in the MUSK repository's ``musk/models/``) or given with
``tokenizer=/path/to/tokenizer.spm``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_mil.encoders.base import Encoder, Preprocessing, finalize
from wsi_mil.encoders.registry import register_encoder
from wsi_mil.encoders.vision_language import (
    TwoEmbeddingEncoder,
    check_factory_options,
    find_tokenizer,
    joint_variant,
)
from wsi_mil.encoders.weights import (
    load_strict,
    read_arch_overrides,
    read_state_dicts,
    resolve_weights,
    strip_prefixes,
    unwrap_state_dict,
)
from wsi_mil.errors import ConfigError

HUB_ID = "xiangjx/musk"
LICENSE = "CC-BY-NC-ND-4.0, gated (xiangjx/musk): academic non-commercial use"
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
TOKENIZER_FILES = ("tokenizer.spm", "sentencepiece.bpe.model", "tokenizer.model")
MAX_TEXT_LEN = 100
# musk_large_patch16_384: EncoderConfig(img_size=384, patch_size=16, vocab_size=64010,
# multiway=True, encoder_embed_dim=1024, encoder_attention_heads=16,
# encoder_ffn_embed_dim=4096, encoder_layers=24, max_source_positions=1024)
LARGE = dict(img_size=384, patch_size=16, vocab_size=64010, embed_dim=1024, num_heads=16,
             ffn_dim=4096, depth=24, max_text_positions=1024, layernorm_eps=1e-5)


class Multiway(nn.Module):
    """Two experts with the same shape: ``A`` for image tokens, ``B`` for text tokens."""

    def __init__(self, make) -> None:
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: torch.Tensor, way: str) -> torch.Tensor:
        return (self.A if way == "A" else self.B)(x)


class MultiwayAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.k_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.v_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.q_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.out_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(dim, eps=eps))  # sub-LN

    def forward(self, x: torch.Tensor, way: str,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)  # (B, H, N, Dh)

        q, k, v = heads(self.q_proj(x, way)), heads(self.k_proj(x, way)), heads(self.v_proj(x, way))
        mask = None
        if key_padding_mask is not None:  # (B, N), True = padding: no attention to it
            mask = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, Dh)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(self.inner_attn_ln(out, way), way)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=eps)  # sub-LN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = F.gelu(x.float()).type_as(x)
        return self.fc2(self.ffn_layernorm(x))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.self_attn = MultiwayAttention(dim, num_heads, eps)
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
        self.ffn = Multiway(lambda: FeedForward(dim, ffn_dim, eps))
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def forward(self, x: torch.Tensor, way: str, padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x, way), way, padding)
        return x + self.ffn(self.final_layer_norm(x, way), way)


class MultiwayEncoder(nn.Module):
    def __init__(self, n_vision_positions: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim, eps = cfg["embed_dim"], cfg["layernorm_eps"]
        self.embed_positions = nn.Module()
        self.embed_positions.A = nn.Embedding(n_vision_positions, dim)
        self.embed_positions.B = nn.Embedding(cfg["max_text_positions"], dim)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, cfg["num_heads"], cfg["ffn_dim"], eps) for _ in range(cfg["depth"]))
        self.layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def forward(self, x: torch.Tensor, way: str, padding: torch.Tensor | None = None) -> torch.Tensor:
        table = self.embed_positions.A if way == "A" else self.embed_positions.B
        positions = torch.arange(2, x.shape[1] + 2, device=x.device)  # fairseq: from 2
        x = x + table(positions)[None]
        if padding is not None:
            x = x * (1 - padding.unsqueeze(-1).type_as(x))
        for layer in self.layers:
            x = layer(x, way, padding)
        return self.layer_norm(x, way)


class VisionEmbedding(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # pre-training only
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ConfigError(f"MUSK takes {self.img_size} px images, got {tuple(images.shape[-2:])}")
        x = self.proj(images).flatten(2).transpose(1, 2)  # (B, P, D)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + P, D)


class BEiT3(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.text_embed = nn.Embedding(cfg["vocab_size"], cfg["embed_dim"])
        self.vision_embed = VisionEmbedding(cfg["img_size"], cfg["patch_size"], cfg["embed_dim"])
        self.encoder = MultiwayEncoder(self.vision_embed.num_patches + 1 + 2, cfg)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.vision_embed(images), "A")  # (B, 1 + P, D)

    def text_tokens(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.text_embed(ids), "B", padding)  # (B, L, D)


class MuskModel(nn.Module):
    """``musk.modeling.MUSK``: BEiT-3 + linear heads into the joint space."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim = cfg["embed_dim"]
        self.beit3 = BEiT3(cfg)
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def image_cls(self, images: torch.Tensor) -> torch.Tensor:
        return self.beit3.image_tokens(images)[:, 0]  # (B, D)

    def multiscale_cls(self, images: torch.Tensor, scales: tuple[int, ...] = (1, 2)) -> torch.Tensor:
        """MUSK's ``MultiScaleForward``: CLS at 1x, mean CLS of the 2x chessboard -> (B, 2D)."""
        b, _, size, _ = images.shape
        outs = []
        for scale in scales:
            x = F.interpolate(images.float(), size=size * scale, mode="bicubic").to(images.dtype)
            # 'b c (nh h) (nw w) -> (nh nw b) c h w' with nh = nw = scale
            x = x.view(b, 3, scale, size, scale, size).permute(2, 4, 0, 1, 3, 5)
            x = x.reshape(scale * scale * b, 3, size, size)
            outs.append(torch.cat([self.image_cls(chunk) for chunk in x.split(b)]))
        up = outs[1].view(scales[1] ** 2, b, -1).mean(0)  # '(n b) c -> b n c', mean over n
        return torch.cat([outs[0], up], dim=-1)

    def image_joint(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_head(self.image_cls(images)), dim=-1)

    def text_joint(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        cls = self.beit3.text_tokens(ids, padding)[:, 0]
        return F.normalize(self.language_head(cls), dim=-1)


class XLMRobertaSentencePiece:
    """XLM-R tokenization (fairseq ids) of a sentencepiece model, as MUSK's ``xlm_tokenizer``.

    ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, piece ``i`` -> ``i + 1``;
    a prompt becomes ``<s> pieces[:max_len - 2] </s>`` padded with ``<pad>`` to ``max_len``;
    the padding mask is 1 on padding.
    """

    bos_token_id, pad_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

    def __init__(self, path: str | Path, max_len: int = MAX_TEXT_LEN) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.max_len = max_len

    def ids(self, text: str) -> list[int]:
        return [i + 1 if i != self.sp.unk_id() else self.unk_token_id
                for i in self.sp.encode(text)]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, pads = [], []
        for text in texts:
            ids = [self.bos_token_id, *self.ids(text)[: self.max_len - 2], self.eos_token_id]
            n = len(ids)
            rows.append(ids + [self.pad_token_id] * (self.max_len - n))
            pads.append([0] * n + [1] * (self.max_len - n))
        return torch.tensor(rows), torch.tensor(pads)


class MuskEncoder(TwoEmbeddingEncoder):
    tokenizer_help = ("MUSK's text side needs its sentencepiece tokenizer (tokenizer.spm, in the MUSK "
                      "repository's musk/models/): put it beside the weights or pass "
                      "create_encoder('musk', ..., tokenizer='/path/to/tokenizer.spm')")

    @property
    def joint_dim(self) -> int:
        return self.model.vision_head.out_features

    def mil_embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.multiscale_cls(images)  # (B, 2D)

    def load_tokenizer(self, path: Path) -> XLMRobertaSentencePiece:
        positions = self.model.beit3.encoder.embed_positions.B.num_embeddings
        return XLMRobertaSentencePiece(path, max_len=min(MAX_TEXT_LEN, positions - 2))

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids, padding = self.tokenizer(list(prompts))
        with self.autocast(device):
            return self.model.text_joint(ids.to(device), padding.to(device)).float()  # (P, D)


def convert_musk_state(state: dict[str, Any]) -> dict[str, Any]:
    """The released file (flat; ``model`` / ``module`` wrappers as MUSK's loader accepts)."""
    state = unwrap_state_dict(state, ("model", "module", "state_dict"))
    state = strip_prefixes(state, ("module.",))
    return {k: v for k, v in state.items() if not k.endswith("relative_position_index")}


def build_musk(arch: dict[str, Any] | None = None) -> MuskModel:
    cfg = {**LARGE, **(arch or {})}
    unknown = sorted(set(cfg) - set(LARGE))
    if unknown:
        raise ConfigError(f"musk: unknown architecture options {unknown}; valid: {sorted(LARGE)}")
    return MuskModel(cfg)


@register_encoder("musk")
def create_musk(weights=None, device="cpu", precision=None, arch_overrides=None,
                embedding: str = "mil", tokenizer: str | None = None,
                name: str = "musk", **kw) -> Encoder:
    """MUSK (xiangjx/musk): ``embedding="mil"`` 2048-d multi-scale CLS (default) or
    ``"joint"`` 1024-d normalised image-text embedding; text side (XLM-R sentencepiece)."""
    check_factory_options(name, embedding, kw)
    resolved = resolve_weights("musk", weights, HUB_ID, ("model.safetensors", "pytorch_model.bin"),
                               TOKENIZER_FILES)
    arch = read_arch_overrides(resolved, arch_overrides)
    model = build_musk(arch)
    load_strict(model, convert_musk_state(read_state_dicts(resolved.files)), "musk", resolved.source)
    dim = model.vision_head.out_features
    size = int(arch.get("img_size", LARGE["img_size"]))
    enc = MuskEncoder(
        model, find_tokenizer("MUSK", resolved.folder, tokenizer, TOKENIZER_FILES), embedding, name=name,
        embed_dim=2 * dim if embedding == "mil" else dim,
        preprocessing=Preprocessing(input_size=size, resize="center_crop", interpolation="bicubic",
                                    mean=INCEPTION_MEAN, std=INCEPTION_STD),
        pooling="CLS 1x + mean CLS 2x (ms_aug)" if embedding == "mil"
        else "vision_head(CLS), normalised (joint space)",
        license=LICENSE, hub_id=HUB_ID, precision=precision, default_precision="fp16",
        weights_sha256=resolved.sha256, weights_source=resolved.source,
    )
    return finalize(enc, device)


create_musk_joint = register_encoder("musk_joint")(joint_variant("musk", create_musk))
