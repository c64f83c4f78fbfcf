"""Fixtures of the report tests; the builders live in report_run_builders.py."""
from __future__ import annotations

import numpy as np
import pytest
from report_run_builders import TilingData, write_tiling_and_features


@pytest.fixture(scope="session")
def tiling(tmp_path_factory) -> TilingData:
    return write_tiling_and_features(tmp_path_factory.mktemp("tiling"), np.random.default_rng(1))
