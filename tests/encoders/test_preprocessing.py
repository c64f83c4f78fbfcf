"""Preprocessing: layouts, resizing, normalisation, precision contexts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.encoders.base import Preprocessing, preprocess_tiles
from wsi_mil.errors import ConfigError


def test_channels_last_and_channels_first_tiles_give_the_same_input(tiles):
    prep = Preprocessing(input_size=224)
    a = preprocess_tiles(tiles, prep)
    b = preprocess_tiles(tiles.permute(0, 3, 1, 2), prep)
    c = preprocess_tiles(tiles.numpy(), prep)
    assert a.shape == (2, 3, 224, 224) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("resize", ["resize", "center_crop"])
def test_a_constant_tile_is_normalised_with_mean_and_std(resize):
    tile = torch.full((1, 256, 300, 3), 128, dtype=torch.uint8)
    prep = Preprocessing(input_size=224, resize=resize, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = preprocess_tiles(tile, prep)
    assert out.shape == (1, 3, 224, 224)
    expected = torch.tensor([(128 / 255 - 0.5) / 0.5, (128 / 255 - 0.25) / 0.25, 128 / 255])
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), expected, atol=1e-5, rtol=0)


def test_resize_none_keeps_the_tile_size():
    tile = np.zeros((1, 3, 100, 100), dtype=np.uint8)
    out = preprocess_tiles(tile, Preprocessing(input_size=224, resize="none", mean=(0, 0, 0),
                                               std=(1, 1, 1)))
    assert out.shape == (1, 3, 100, 100)


def test_bad_preprocessing_values_are_config_errors():
    with pytest.raises(ConfigError, match="resize"):
        Preprocessing(resize="stretch")
    with pytest.raises(ConfigError, match="interpolation"):
        Preprocessing(interpolation="lanczos")
    with pytest.raises(ConfigError, match="tiles"):
        preprocess_tiles(torch.zeros(2, 4, 5, 5, dtype=torch.uint8), Preprocessing())
