"""CONCH (Lu et al., Nature Medicine 2024): CoCa ViT-B/16 at 448 px, image + text.

Our own module with the official key layout of ``MahmoodLab/CONCH``
(``conch.open_clip_custom``, config ``conch_ViT-B-16.json``):

- ``visual.trunk``: timm ``VisionTransformer`` (ViT-B/16, 448 px, all tokens after the
  final norm); ``visual.attn_pool_contrast`` (open_clip ``AttentionalPooler``, 1
  query, 512-d), ``visual.ln_contrast``, ``visual.proj_contrast`` (512 x 512);
  ``visual.attn_pool_caption`` / ``visual.ln_caption`` (256 queries, captioning);
- ``text``: CLIP-style causal text transformer (768-d, 12 layers, context 128) with a
  CLS embedding appended at the end (it sees every non-padding token), ``ln_final``
  on the CLS, ``text_projection`` to 512-d;
- ``text_decoder.*`` (the captioning decoder) and ``logit_scale`` are in the file;
  the decoder is not needed for embeddings and is dropped on load.

Embeddings (``embedding=``): ``"mil"`` (default, 512-d, as CONCH's README for
feature extraction: ``encode_image(proj_contrast=False, normalize=False)``) or
``"joint"`` (512-d, ``proj_contrast=True, normalize=True``: zero-shot / retrieval).
:meth:`ConchEncoder.encode_image_joint` always returns the joint embedding and
:meth:`ConchEncoder.encode_text` the normalised text embedding.

Weights: hub ``MahmoodLab/conch`` (``pytorch_model.bin``, gated) or a local file /
folder. Preprocessing: ``Resize(448, bicubic)`` -> ``CenterCrop(448)``, OpenAI CLIP
mean/std. Tokenizer: CONCH's ``conch_byte_level_bpe_uncased.json`` (shipped with the
``conch`` package, not on the hub): beside the weights, from an installed ``conch``
package, or ``tokenizer=/path/to/conch_byte_level_bpe_uncased.json``.
"""
from __future__ import annotations

import copy
import importlib.util
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_mil.encoders.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Encoder,
    Preprocessing,
    finalize,
)
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

HUB_ID = "MahmoodLab/conch"
LICENSE = "CC-BY-NC-ND-4.0, gated (MahmoodLab/conch): academic non-commercial use"
TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"
POOLER_HEADS = 8
# conch_ViT-B-16.json (the multimodal decoder is not built)
CONCH_CFG: dict[str, Any] = {
    "embed_dim": 512, "embed_dim_caption": 768,
    "vision_cfg": {"image_size": 448, "patch_size": 16, "layers": 12, "width": 768,
                   "num_heads": 12, "mlp_ratio": 4, "attn_pooler_heads": 8,
                   "n_queries_contrast": 1, "n_queries_caption": 256},
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12,
                 "layers": 12, "pad_id": 0},
}


class VisualModel(nn.Module):
    def __init__(self, embed_dim: int, embed_dim_caption: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        from open_clip.transformer import AttentionalPooler
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            embed_dim=cfg["width"], depth=cfg["layers"], num_heads=cfg["num_heads"],
            mlp_ratio=cfg["mlp_ratio"], img_size=cfg["image_size"], patch_size=cfg["patch_size"],
            num_classes=0, dynamic_img_size=True)
        width = self.trunk.num_features
        # CONCH's _build_vision_tower does not pass attn_pooler_heads: VisualModel's default 8
        heads = POOLER_HEADS
        self.attn_pool_contrast = AttentionalPooler(
            d_model=embed_dim, context_dim=width, n_head=heads,
            n_queries=cfg["n_queries_contrast"], norm_layer=nn.LayerNorm)
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width ** -0.5 * torch.randn(embed_dim, embed_dim))
        self.attn_pool_caption = AttentionalPooler(
            d_model=embed_dim_caption, context_dim=width, n_head=heads,
            n_queries=cfg["n_queries_caption"], norm_layer=nn.LayerNorm)
        self.ln_caption = nn.LayerNorm(embed_dim_caption)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """``forward_no_head``: the contrastive token before projection (B, embed_dim)."""
        tokens = self.trunk.forward_features(images)  # (B, 1 + P, W)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(width * 4, width))]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTower(nn.Module):
    def __init__(self, embed_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        width = cfg["width"]
        self.heads = cfg["heads"]
        self.pad_id = cfg.get("pad_id", 0)
        self.context_length = cfg["context_length"]
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim).normal_(std=width ** -0.5))
        self.cls_emb = nn.Parameter(torch.empty(width).normal_(std=0.01))
        self.token_embedding = nn.Embedding(cfg["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, width).normal_(std=0.01))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, self.heads) for _ in range(cfg["layers"]))
        self.ln_final = nn.LayerNorm(width)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, embed_dim), not normalised (the CLS appended at the end)."""
        b, n = text.shape
        seq = n + 1
        x = torch.cat([self.token_embedding(text), self.cls_emb.view(1, 1, -1).expand(b, 1, -1)], 1)
        x = x + self.positional_embedding[:seq]
        causal = torch.full((seq, seq), float("-inf"), device=x.device).triu_(1)
        # CoCa's build_cls_mask: the CLS row sees key 0, and key k >= 1 where token k - 1
        # is not padding (the mask is padded on the left, hence the shift by one)
        cls_row = torch.zeros(b, seq, device=x.device)
        cls_row[:, 1:] = torch.where(text == self.pad_id, float("-inf"), 0.0)
        mask = causal.expand(b, seq, seq).clone()
        mask[:, -1, :] = mask[:, -1, :] + cls_row
        mask = mask.to(x.dtype).repeat_interleave(self.heads, 0)  # (B * heads, seq, seq)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x[:, -1]) @ self.text_projection


class ConchModel(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.text = TextTower(cfg["embed_dim"], cfg["text_cfg"])
        self.visual = VisualModel(cfg["embed_dim"], cfg["embed_dim_caption"], cfg["vision_cfg"])
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def image_joint(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual.pooled(images) @ self.visual.proj_contrast, dim=-1)

    def text_joint(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids[:, :-1]), dim=-1)  # last slot reserved for the CLS


class ConchTokenizer:
    """CONCH's tokenization: ``<start_of_text> ... <end_of_text>`` padded to context - 1,
    plus one ``<pad>`` (the slot the CLS embedding takes)."""

    def __init__(self, path: str | Path, context_length: int) -> None:
        from transformers import PreTrainedTokenizerFast

        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<start_of_text>",
                                           eos_token="<end_of_text>", pad_token="<pad>")
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = self.tok(list(texts), max_length=self.context_length - 1, add_special_tokens=True,
                       return_token_type_ids=False, truncation=True, padding="max_length",
                       return_tensors="pt")
        return F.pad(out["input_ids"], (0, 1), value=self.tok.pad_token_id)


class ConchEncoder(TwoEmbeddingEncoder):
    tokenizer_help = (f"CONCH's text side needs its tokenizer ({TOKENIZER_FILE}, shipped with the conch "
                      "package): install conch, put the file beside the weights, or pass "
                      f"create_encoder('conch', ..., tokenizer='/path/to/{TOKENIZER_FILE}')")

    @property
    def joint_dim(self) -> int:
        return self.model.visual.proj_contrast.shape[1]

    def mil_embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.visual.pooled(images)  # (B, 512)

    def load_tokenizer(self, path: Path) -> ConchTokenizer:
        return ConchTokenizer(path, self.model.text.context_length)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = self.tokenizer(list(prompts)).to(device)
        with self.autocast(device):
            return self.model.text_joint(ids).float()  # (P, 512)


def convert_conch_state(state: dict[str, Any]) -> dict[str, Any]:
    """Released file -> our keys: ``state_dict`` / ``module.`` unwrapped, decoder dropped."""
    state = strip_prefixes(unwrap_state_dict(state, ("state_dict", "model")), ("module.",))
    return {k: v for k, v in state.items() if not k.startswith("text_decoder.")}


def build_conch(arch: dict[str, Any] | None = None) -> ConchModel:
    cfg = copy.deepcopy(CONCH_CFG)
    for key, value in (arch or {}).items():
        if key in ("multimodal_cfg",):
            continue  # the captioning decoder is not built
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update({k: v for k, v in value.items()
                             if k not in ("attentional_pool_caption", "attentional_pool_contrast",
                                          "output_tokens", "embed_cls")})
        elif key in cfg:
            cfg[key] = value
        else:
            raise ConfigError(f"conch: unknown architecture option {key!r}; valid: {sorted(cfg)}")
    return ConchModel(cfg)


def _package_tokenizers() -> list[Path]:
    """Where the conch package ships the tokenizer, if it is installed."""
    spec = importlib.util.find_spec("conch")
    roots = (spec.submodule_search_locations or []) if spec else []
    return [Path(r) / "open_clip_custom" / "tokenizers" / TOKENIZER_FILE for r in roots]


@register_encoder("conch")
def create_conch(weights=None, device="cpu", precision=None, arch_overrides=None,
                 embedding: str = "mil", tokenizer: str | None = None,
                 name: str = "conch", **kw) -> Encoder:
    """CONCH (MahmoodLab/conch, CoCa ViT-B/16 at 448 px): ``embedding="mil"`` 512-d
    pre-projection token (default) or ``"joint"`` 512-d normalised; text side."""
    check_factory_options(name, embedding, kw)
    resolved = resolve_weights("conch", weights, HUB_ID, ("pytorch_model.bin", "model.safetensors"),
                               ("meta.yaml", TOKENIZER_FILE))
    arch = read_arch_overrides(resolved, arch_overrides)
    model = build_conch(arch)
    load_strict(model, convert_conch_state(read_state_dicts(resolved.files)), "conch",
                resolved.source)
    size = int(model.visual.trunk.patch_embed.img_size[0])
    enc = ConchEncoder(
        model, find_tokenizer("CONCH", resolved.folder, tokenizer, (TOKENIZER_FILE,), _package_tokenizers()),
        embedding, name=name,
        embed_dim=int(model.visual.proj_contrast.shape[1]),
        preprocessing=Preprocessing(input_size=size, resize="center_crop", interpolation="bicubic",
                                    mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
        pooling="attn_pool_contrast + ln_contrast (before projection)" if embedding == "mil"
        else "proj_contrast(attn_pool_contrast), normalised (joint space)",
        license=LICENSE, hub_id=HUB_ID, precision=precision, default_precision="fp32",
        weights_sha256=resolved.sha256, weights_source=resolved.source,
    )
    return finalize(enc, device)


create_conch_joint = register_encoder("conch_joint")(joint_variant("conch", create_conch))
