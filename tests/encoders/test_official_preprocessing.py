"""Preprocessing equals the official transforms on real H&E tiles.

Tiles are cut from ``tests/data/CMU-1-Small-Region.svs``. Hugging Face
processor configs are compared with ``transformers.AutoImageProcessor`` (the
same ``preprocessor_config.json``), timm models with timm's
``resolve_data_config`` + ``create_transform``, GigaPath with its model card's
``Resize(256, bicubic) -> CenterCrop(224)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, preprocess_tiles
from wsi_mil.encoders.hf_vit import read_preprocessing

SLIDE = Path(__file__).resolve().parents[1] / "data" / "CMU-1-Small-Region.svs"
OPENAI = dict(image_mean=[0.48145466, 0.4578275, 0.40821073],
              image_std=[0.26862954, 0.26130258, 0.27577711])
IMAGENET = dict(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
PROCESSORS = {
    "dinov2_bit_shortest_edge_then_crop": dict(
        image_processor_type="BitImageProcessor", do_resize=True, size={"shortest_edge": 256},
        resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, **IMAGENET),
    "vit_square_resize_bilinear": dict(
        image_processor_type="ViTImageProcessor", do_resize=True,
        size={"height": 224, "width": 224}, resample=2, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5]),
    "clip_shortest_edge_crop": dict(
        image_processor_type="CLIPImageProcessor", do_resize=True, size={"shortest_edge": 224},
        resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True, **OPENAI),
    "clip_legacy_int_sizes": dict(
        image_processor_type="CLIPImageProcessor", do_resize=True, size=224, resample=3,
        do_center_crop=True, crop_size=224, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, **OPENAI),
    "crop_only": dict(
        image_processor_type="BitImageProcessor", do_resize=False, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, **IMAGENET),
}


def real_tiles(size: int, n: int = 4) -> np.ndarray:
    """``n`` RGB uint8 tiles (n, size, size, 3) from tissue regions of the test slide."""
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(SLIDE)) as slide:
        width, height = slide.dimensions
        xs = np.linspace(width * 0.2, width * 0.8 - size, n).astype(int)
        ys = np.linspace(height * 0.2, height * 0.8 - size, n).astype(int)
        tiles = [np.asarray(slide.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))
                 for x, y in zip(xs, ys, strict=True)]
    return np.stack(tiles)


@pytest.mark.parametrize("tile_size", [224, 256, 300])
@pytest.mark.parametrize("config", sorted(PROCESSORS))
def test_hf_processor_configs_match_transformers_auto_image_processor(config, tile_size, tmp_path):
    from transformers import AutoImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PROCESSORS[config]))
    tiles = real_tiles(tile_size)
    ref = AutoImageProcessor.from_pretrained(str(tmp_path))(
        images=list(tiles), return_tensors="pt")["pixel_values"]
    prep = read_preprocessing(tmp_path, Preprocessing())
    ours = preprocess_tiles(tiles, prep)
    assert ours.shape == ref.shape == (len(tiles), 3, 224, 224)
    assert (ours - ref).abs().max().item() <= 1e-3


# One uint8 level after normalisation (std >= 0.2): PIL's bicubic and torchvision's
# antialiased uint8 resize (our path) agree to within one level on real tiles.
ONE_LEVEL = 1 / 255 / 0.2


def _pil_official(tiles: np.ndarray, transform) -> torch.Tensor:
    """A model card's torchvision transform applied, as on the card, to PIL images."""
    from PIL import Image

    return torch.stack([transform(Image.fromarray(t)) for t in tiles])


@pytest.mark.parametrize("tile_size", [224, 256])
def test_gigapath_resizes_to_256_then_centre_crops_224(tmp_path, tile_size):
    from torchvision import transforms as T

    from wsi_mil.encoders import create_encoder
    from wsi_mil.testing import tiny_models as tm

    enc = create_encoder(**tm.save_tiny_timm(tmp_path, "gigapath"))
    prep = enc.preprocessing
    assert (prep.input_size, prep.resize, prep.resize_size, prep.interpolation) == (
        224, "center_crop", 256, "bicubic")
    card = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    tiles = real_tiles(tile_size)
    ref = _pil_official(tiles, card)
    diff = (enc.preprocess(tiles) - ref).abs()
    assert diff.max().item() <= ONE_LEVEL and diff.mean().item() <= 1e-3
    squashed = preprocess_tiles(tiles, Preprocessing(224, "resize", "bicubic"))
    if tile_size == 256:  # the old squash-to-224 is far from the card's transform
        assert (squashed - ref).abs().mean().item() > 0.1


@pytest.mark.parametrize("pretrained_cfg", [
    dict(crop_pct=0.875, crop_mode="center", interpolation="bicubic"),
    dict(crop_pct=0.9, crop_mode="squash", interpolation="bilinear"),
    dict(crop_pct=1.0, crop_mode="center", interpolation="bicubic"),
])
def test_timm_generic_honours_crop_pct_and_crop_mode(pretrained_cfg, tmp_path, monkeypatch):
    """``timm:<name>`` equals ``create_transform(**resolve_data_config(cfg, model))``."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from wsi_mil.encoders import create_encoder
    from wsi_mil.testing import tiny_models as tm

    arch = "vit_small_patch16_224"
    cfg = {**timm.models.get_pretrained_cfg(arch).to_dict(), **pretrained_cfg}
    monkeypatch.setattr(timm.models, "get_pretrained_cfg",
                        lambda name, *a, **k: type("C", (), {"to_dict": lambda self: dict(cfg)})())
    enc = create_encoder(**tm.save_tiny_timm_generic(tmp_path, arch))
    transform = create_transform(**resolve_data_config(cfg, model=enc.model))
    tiles = real_tiles(256)
    ref = _pil_official(tiles, transform)
    ours = enc.preprocess(tiles)
    assert ours.shape == ref.shape == (len(tiles), 3, 224, 224)
    diff = (ours - ref).abs()
    assert diff.max().item() <= ONE_LEVEL and diff.mean().item() <= 1e-3
