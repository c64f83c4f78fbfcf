"""Fixtures shared by every test folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA_DIR = Path(__file__).parent / "data"
CMU_SLIDE = DATA_DIR / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def cmu_slide_path() -> Path:
    """The real Aperio slide CMU-1-Small-Region.svs (CC0, see tests/data/README.md)."""
    assert CMU_SLIDE.exists(), CMU_SLIDE
    return CMU_SLIDE


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: tests never depend on global random state."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
