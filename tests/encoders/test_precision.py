"""Precision actually used: CPU fp32 unless asked and native; CUDA the model card's."""
from __future__ import annotations

import pytest
import torch

from wsi_mil.encoders import base
from wsi_mil.encoders.base import resolve_precision


@pytest.mark.parametrize("requested, default, native, expected", [
    (None, "bf16", ("bf16",), "fp32"),   # never a CPU default, even where native
    (None, "fp16", (), "fp32"),
    ("fp32", "bf16", ("bf16",), "fp32"),
    ("bf16", "fp32", ("bf16",), "bf16"),  # asked and native
    ("bf16", "fp32", (), "fp32"),         # asked but emulated: 6-7x slower -> fp32
    ("fp16", "fp16", ("bf16",), "fp32"),
    ("fp16", "fp32", ("bf16", "fp16"), "fp16"),
])
def test_cpu_precision(monkeypatch, requested, default, native, expected):
    monkeypatch.setattr(base, "cpu_native_precisions", lambda: native)
    assert resolve_precision(requested, default, "cpu") == expected


@pytest.mark.parametrize("requested, default, expected", [
    (None, "fp16", "fp16"), (None, "bf16", "bf16"), (None, "fp32", "fp32"),
    ("fp32", "fp16", "fp32"), ("fp16", "fp32", "fp16"),
])
def test_cuda_precision_is_the_model_cards_unless_asked(monkeypatch, requested, default, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no bf16 probe without a GPU
    assert resolve_precision(requested, default, "cuda") == expected


def test_bf16_on_a_gpu_without_bf16_runs_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(None, "bf16", "cuda:0") == "fp32"


def test_other_devices_run_fp32():
    assert resolve_precision("bf16", "bf16", "meta") == "fp32"


def test_feature_file_records_the_precision_actually_used(tmp_path, monkeypatch):
    """An encoder built for CPU with its card's fp16 records fp32 in the extraction attrs."""
    import numpy as np

    from wsi_mil.encoders import create_encoder
    from wsi_mil.pipeline import extract_stage
    from wsi_mil.testing import tiny_models as tm

    enc = create_encoder(**tm.save_tiny_timm(tmp_path, "virchow2"), precision=None)
    attrs = extract_stage._expected_attrs(
        enc, {"tile_size": 224, "target_mpp": 0.5, "slide_mpp": 0.25, "dz_level": 0},
        np.zeros((1, 2), dtype=np.int64), "float16", "fast", "dct")
    assert attrs["precision"] == "fp32"
    assert enc.precision_on("cuda") == "fp16"
