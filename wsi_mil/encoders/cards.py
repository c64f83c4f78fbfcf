"""What each registered encoder is, without loading it: the table ``wsi-mil encoders`` can print.

Per encoder: embedding size(s) (the extracted feature, and the image-text space
where there is one), input size, preprocessing, precision on CPU and on CUDA
(``precision=null``), default weights, licence note and text side. The cards are
checked against the encoders built from tiny official-layout checkpoints
(``tests/encoders/test_cards.py``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderCard:
    name: str
    feature_dim: int
    joint_dim: int | None  # image-text space (None: no text side)
    input_size: int
    preprocessing: str
    cuda_precision: str  # model card's recommendation (CPU: always fp32 by default)
    weights: str
    license: str

    @property
    def has_text(self) -> bool:
        return self.joint_dim is not None


_NC = "non-commercial"
CARDS: dict[str, EncoderCard] = {c.name: c for c in (
    EncoderCard("histo_stats", 60, None, 224, "resize 224 bilinear", "fp32", "none (no weights)",
                "Apache-2.0"),
    EncoderCard("phikon", 768, None, 224, "preprocessor_config (resize 224 bilinear)", "fp32",
                "owkin/phikon", f"Owkin {_NC}"),
    EncoderCard("phikon_v2", 1024, None, 224, "preprocessor_config (resize 224 bicubic)", "fp32",
                "owkin/phikon-v2", f"Owkin {_NC}"),
    EncoderCard("uni", 1024, None, 224, "short side 224 bicubic", "fp32", "MahmoodLab/UNI",
                f"CC-BY-NC-ND-4.0, gated, {_NC}"),
    EncoderCard("uni2_h", 1536, None, 224, "short side 224 bicubic", "bf16", "MahmoodLab/UNI2-h",
                f"CC-BY-NC-ND-4.0, gated, {_NC}"),
    EncoderCard("virchow2", 2560, None, 224, "short side 224 bicubic", "fp16", "paige-ai/Virchow2",
                f"CC-BY-NC-ND-4.0, gated, {_NC}"),
    EncoderCard("h_optimus_0", 1536, None, 224, "resize 224 bicubic", "fp16",
                "bioptimus/H-optimus-0", "Apache-2.0, gated"),
    EncoderCard("gigapath", 1536, None, 224, "short side 256 bicubic, centre crop 224", "fp32",
                "prov-gigapath/prov-gigapath", "Apache-2.0 + research-only terms, gated"),
    EncoderCard("ctranspath", 768, None, 224, "resize 224 bilinear", "fp32",
                "local ctranspath.pth (no hub copy)", "GPL-3.0 code; weights research use"),
    EncoderCard("resnet50", 2048, None, 224, "resize 224 bilinear", "fp32",
                "timm/resnet50.tv_in1k", "BSD-3-Clause"),
    EncoderCard("resnet50_trunc", 1024, None, 224, "resize 224 bilinear", "fp32",
                "timm/resnet50.tv_in1k", "BSD-3-Clause"),
    EncoderCard("plip", 512, 512, 224, "preprocessor_config (short side 224 bicubic, crop 224)",
                "fp32", "vinid/plip", "research use"),
    EncoderCard("biomedclip", 512, 512, 224, "resize 224 bicubic", "fp32",
                "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "MIT"),
    EncoderCard("unimed_clip", 512, 512, 224, "resize 224 bicubic", "fp32",
                "local unimed_clip_vit_b16.pt", f"CC-BY-NC-4.0, {_NC}"),
    EncoderCard("musk", 2048, 1024, 384, "short side 384 bicubic, centre crop 384", "fp16",
                "xiangjx/musk", f"CC-BY-NC-ND-4.0, gated, {_NC}"),
    EncoderCard("musk_joint", 1024, 1024, 384, "short side 384 bicubic, centre crop 384", "fp16",
                "xiangjx/musk", f"CC-BY-NC-ND-4.0, gated, {_NC}"),
    EncoderCard("conch", 512, 512, 448, "short side 448 bicubic, centre crop 448", "fp32",
                "MahmoodLab/conch", f"CC-BY-NC-ND-4.0, gated, {_NC}"),
    EncoderCard("conch_joint", 512, 512, 448, "short side 448 bicubic, centre crop 448", "fp32",
                "MahmoodLab/conch", f"CC-BY-NC-ND-4.0, gated, {_NC}"),
)}


def format_cards(names: list[str] | None = None) -> str:
    """A plain-text table of the cards (generic ``prefix:<id>`` forms are listed by name)."""
    rows = [("encoder", "dim", "joint", "input", "preprocessing", "precision cpu/cuda", "weights",
             "licence", "text")]
    for name in names or sorted(CARDS):
        card = CARDS.get(name)
        if card is None:
            rows.append((name, "-", "-", "-", "from the model's config", "fp32/fp32",
                         "weights= or hub id", "see the model card", "?"))
            continue
        rows.append((name, str(card.feature_dim or "-"), str(card.joint_dim or "-"),
                     str(card.input_size), card.preprocessing, f"fp32/{card.cuda_precision}",
                     card.weights, card.license, "yes" if card.has_text else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
