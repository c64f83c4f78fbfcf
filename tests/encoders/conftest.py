"""Fixtures of the encoder tests: tiny models saved once per module, tiles."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _offline_empty_cache(tmp_path, monkeypatch):
    """Every test runs offline against its own empty hub cache (nothing is downloaded)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    torch.set_num_threads(1)


@pytest.fixture
def tiles() -> torch.Tensor:
    """Two random uint8 RGB tiles, channels last (B, H, W, 3), not at the model size."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 240, 240, 3), dtype=torch.uint8, generator=gen)
