"""The encoder interface every family implements.

An :class:`Encoder` is a frozen ``torch.nn.Module`` that carries everything the
extraction loop needs, so the loop never special-cases a model::

    images = encoder.preprocess(tiles_uint8)   # (B, H, W, 3) or (B, 3, H, W) uint8
    features = encoder(images)                 # (B, encoder.embed_dim) float32

Precision: ``"fp32" | "fp16" | "bf16"``. Weights stay in fp32; ``forward``
runs the model under ``torch.autocast`` with the precision actually used on
the device (:func:`resolve_precision`):

- CUDA: the requested precision, or the model card's recommendation when none
  was asked (``precision=None``); bf16 on a GPU without bf16 runs fp32;
- CPU: fp32, unless a lower precision is asked for explicitly AND the CPU runs it
  natively (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16). Emulated bf16 is several
  times slower than fp32 (issue 12: 243 s vs 33.5 s), so it is never a default.

``encoder.precision`` is the precision used on the encoder's device (what
feature files record); ``encoder.requested_precision`` what was asked (None:
the card's), ``encoder.default_precision`` the card's recommendation.
The returned features are always fp32.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from wsi_mil.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRECISIONS = ("fp32", "fp16", "bf16")
RESIZE_RULES = ("resize", "center_crop", "crop", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 tiles become the model input (the model card's transform).

    ``resize``:

    - ``"resize"``: scale the tile to ``S x S`` (aspect not kept; Hugging Face
      ``size={"height", "width"}``, timm ``crop_mode="squash"``), then centre-crop
      ``input_size`` if ``S > input_size``;
    - ``"center_crop"``: scale the short side to ``S`` (the long side to
      ``int(S * long / short)``, as torchvision ``Resize(int)`` and transformers'
      ``shortest_edge``), then centre-crop ``input_size`` (GigaPath: ``Resize(256)`` +
      ``CenterCrop(224)``; timm ``crop_mode="center"``);
    - ``"crop"``: no resizing, centre-crop ``input_size`` (a processor with
      ``do_resize=False, do_center_crop=True``);
    - ``"none"``: leave the size as is (the model must accept it).

    ``S`` is ``resize_size`` (0 = ``input_size``). uint8 tiles are resized as uint8
    (torchvision's antialiased ``resize``, rounded back to uint8, as transformers'
    image processors and torchvision tensor transforms do), cropped at
    ``floor((H - h) / 2)``, then scaled to [0, 1] and normalised with mean/std.
    """

    input_size: int = 224
    resize: str = "resize"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int = 0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ConfigError(f"resize {self.resize!r} is not one of {RESIZE_RULES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}"
            )
        if self.input_size <= 0:
            raise ConfigError(f"input_size must be > 0, got {self.input_size}")
        if self.resize_size and self.resize_size < self.input_size:
            raise ConfigError(f"resize_size {self.resize_size} must be >= input_size "
                              f"{self.input_size} (or 0)")

    @property
    def scale_size(self) -> int:
        """The size the tile is resized to before the centre crop."""
        return int(self.resize_size or self.input_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}")
    return precision


def cpu_native_precisions() -> tuple[str, ...]:
    """Lower precisions this CPU computes natively (bf16: AVX512-BF16 / AMX; fp16: AMX-FP16)."""
    cpu = getattr(torch, "cpu", None)

    def has(flag: str) -> bool:
        fn = getattr(cpu, flag, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # pragma: no cover - exotic builds
            return False

    out = []
    if has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported"):
        out.append("bf16")
    if has("_is_amx_fp16_supported"):
        out.append("fp16")
    return tuple(out)


def resolve_precision(requested: str | None, default: str, device: torch.device | str) -> str:
    """The precision actually used on ``device`` (see the module docstring)."""
    device_type = torch.device(device).type
    if requested is not None:
        check_precision(requested)
    if device_type == "cuda":
        wanted = requested or default
        if wanted == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "fp32"
        return wanted
    if device_type == "cpu" and requested in ("bf16", "fp16"):
        return requested if requested in cpu_native_precisions() else "fp32"
    return "fp32"


def to_channels_first(tiles: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) (or one tile without B) -> (B, 3, H, W) tensor."""
    if isinstance(tiles, np.ndarray):
        tiles = torch.from_numpy(np.ascontiguousarray(tiles))
    if tiles.ndim == 3:
        tiles = tiles.unsqueeze(0)
    if tiles.ndim != 4:
        raise ConfigError(f"tiles must be (B, H, W, 3) or (B, 3, H, W), got shape {tuple(tiles.shape)}")
    if tiles.shape[-1] == 3 and tiles.shape[1] != 3:
        tiles = tiles.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    if tiles.shape[1] != 3:
        raise ConfigError(f"tiles must have 3 colour channels, got shape {tuple(tiles.shape)}")
    return tiles


def _resize(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (B, 3, H, W) to ``hw``; uint8 stays uint8 (rounded), as torchvision does."""
    if mode == "area":  # no torchvision equivalent: average pooling in float
        y = F.interpolate(x.float(), size=hw, mode="area")
        return y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    interp = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
              "nearest": InterpolationMode.NEAREST}[mode]
    y = tvF.resize(x, list(hw), interpolation=interp, antialias=mode != "nearest")
    if mode == "bicubic" and y.is_floating_point():
        y = y.clamp_(0.0, 1.0)  # bicubic overshoots
    return y


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    if height < size or width < size:
        raise ConfigError(f"cannot centre-crop {size} px from a {height}x{width} image")
    top, left = (height - size) // 2, (width - size) // 2
    return x[..., top:top + size, left:left + size]


def preprocess_tiles(tiles: torch.Tensor | np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """uint8 (or [0, 1] float) tiles -> normalised float32 (B, 3, S, S) on the tiles' device."""
    x = to_channels_first(tiles)  # (B, 3, H, W)
    if x.dtype != torch.uint8:
        x = x.float()
    height, width = x.shape[-2:]
    if prep.resize == "crop":
        x = _center_crop(x, prep.input_size)
    elif prep.resize != "none":
        scale = prep.scale_size
        if prep.resize == "resize":
            target = (scale, scale)
        else:  # short side to `scale`, long side int(scale * long / short)
            short, long = min(height, width), max(height, width)
            new_long = int(scale * long / short)
            target = (scale, new_long) if height <= width else (new_long, scale)
        if target != (height, width):
            x = _resize(x, target, prep.interpolation)
        if x.shape[-2:] != (prep.input_size, prep.input_size):
            x = _center_crop(x, prep.input_size)  # (B, 3, S, S)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


class Encoder(nn.Module):
    """A frozen tile encoder; subclasses implement :meth:`embed`.

    Attributes set by the factories: ``name``, ``embed_dim``, ``preprocessing``,
    ``precision`` (``default_precision``: the model card's recommendation),
    ``pooling`` (which tokens form the embedding), ``license`` (a note, not legal
    advice), ``hub_id`` (default weights), ``weights_sha256`` and
    ``weights_source`` (what was actually loaded).
    """

    has_text: bool = False

    def __init__(
        self,
        *,
        name: str,
        embed_dim: int,
        preprocessing: Preprocessing,
        pooling: str,
        license: str,
        hub_id: str | None = None,
        precision: str | None = "fp32",
        weights_sha256: str | None = None,
        weights_source: str | None = None,
        default_precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = int(embed_dim)
        self.preprocessing = preprocessing
        self.pooling = pooling
        self.license = license
        self.hub_id = hub_id
        self.default_precision = check_precision(default_precision)
        self.requested_precision = None if precision is None else check_precision(precision)
        self.precision = resolve_precision(self.requested_precision, self.default_precision, "cpu")
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source

    # -- the two calls of the extraction loop ---------------------------------
    def preprocess(self, tiles: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) or (B, 3, H, W) -> normalised float32 (B, 3, S, S)."""
        return preprocess_tiles(tiles, self.preprocessing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, S, S) -> (B, embed_dim) float32."""
        with self.autocast(images.device):
            out = self.embed(images)  # (B, D)
        return out.float()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(P,) prompts -> (P, D_joint) text embeddings (CLIP-style encoders only)."""
        raise NotImplementedError(f"encoder {self.name!r} has no text tower")

    @property
    def joint_dim(self) -> int | None:
        """Size of the image-text (joint) space; None without a text side."""
        return self.embed_dim if self.has_text else None

    def encode_image_joint(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, S, S) -> (B, D_joint) image embeddings in the image-text space,
        the ones zero-shot, few-shot and retrieval compare with ``encode_text``.

        For CLIP-style encoders this is the MIL feature itself (``forward``); encoders
        whose MIL feature is another quantity (MUSK's multi-scale CLS, CONCH's
        pre-projection token) override it.
        """
        if not self.has_text:
            raise NotImplementedError(f"encoder {self.name!r} has no image-text space")
        return self.forward(images)

    # -- helpers ---------------------------------------------------------------
    def precision_on(self, device: torch.device | str) -> str:
        """The precision this encoder runs at on ``device``."""
        return resolve_precision(self.requested_precision, self.default_precision, device)

    @property
    def precision_used(self) -> str:
        """The precision on the device the encoder's weights are on (what features record)."""
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return self.precision_on(tensor.device if tensor is not None else "cpu")

    def autocast(self, device: torch.device | str):
        """The autocast context for the precision used on ``device`` (or a no-op)."""
        device_type = torch.device(device).type
        precision = self.precision_on(device)
        if precision == "fp32" or device_type not in ("cuda", "cpu"):
            return nullcontext()
        return torch.autocast(device_type=device_type, dtype=_AUTOCAST_DTYPES[precision])

    def describe(self) -> dict[str, Any]:
        """Plain values to store next to features (h5 attrs, logs)."""
        return {
            "encoder": self.name,
            "embed_dim": self.embed_dim,
            "pooling": self.pooling,
            "precision": self.precision,
            "requested_precision": self.requested_precision or "",
            "default_precision": self.default_precision,
            "weights_sha256": self.weights_sha256 or "",
            "weights_source": self.weights_source or "",
            "hub_id": self.hub_id or "",
            "license": self.license,
            **{k: v for k, v in self.preprocessing.to_dict().items()},
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, embed_dim={self.embed_dim}, "
            f"pooling={self.pooling!r}, precision={self.precision!r}, "
            f"input_size={self.preprocessing.input_size}, "
            f"weights_sha256={(self.weights_sha256 or '')[:12]!r})"
        )


def finalize(encoder: Encoder, device: str | torch.device = "cpu") -> Encoder:
    """Freeze, switch to eval mode and move to ``device``."""
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.to(device)
    encoder.precision = encoder.precision_on(device)
    requested = encoder.requested_precision
    if requested not in (None, encoder.precision):
        logger.warning("encoder {}: {} requested on {} but not supported natively there; running "
                       "{}", encoder.name, requested, torch.device(device).type, encoder.precision)
    return encoder
