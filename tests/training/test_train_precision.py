"""precision=bf16: the heads' matmuls under autocast in both engines, recorded; bad values are named errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import wsi_mil.encoders.base as encoder_base
from wsi_mil.cli.main import main
from wsi_mil.cv.engine import CVSettings, run_cv
from wsi_mil.cv.settings import apply_protocol
from wsi_mil.data.bags import BagStore
from wsi_mil.data.cohort import read_cohort
from wsi_mil.data.folds import make_fold_plan
from wsi_mil.errors import ConfigError
from wsi_mil.models import create_model
from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort
from wsi_mil.training.fit import FitParams, Targets, fit, predict, train_autocast


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory):
    syn = write_synthetic_cohort(tmp_path_factory.mktemp("bf16"), n_patients=16, dim=16, n_tiles=(6, 30), seed=3)
    cohort = read_cohort(syn.cohort_csv, "classification")
    return syn, cohort, BagStore.from_dir(syn.features_dir, cohort.slide_ids)


def test_bad_precisions_are_named_errors(cohort_store, tmp_path, capsys):
    with pytest.raises(ConfigError, match="loss scaling"):
        CVSettings("classification", "abmil", precision="fp16")
    with pytest.raises(ConfigError, match="precision 'half'"):
        FitParams("abmil", precision="half")
    syn = cohort_store[0]
    with pytest.raises(SystemExit) as err:
        main(["cv", f"cohort={syn.cohort_csv}", f"features_dir={syn.features_dir}", f"output_dir={tmp_path}",
              "mode=kfold", "outer_folds=2", "epochs=1", "precision=float16"])
    assert err.value.code == 2
    assert "precision 'float16'" in capsys.readouterr().err


def test_bf16_runs_the_head_in_bfloat16_and_stays_close_to_fp32(cohort_store):
    _, cohort, store = cohort_store
    head = create_model("abmil", 16, 1)
    x, mask = torch.randn(2, 9, 16), torch.ones(2, 9, dtype=torch.bool)
    with train_autocast("bf16", "cpu"):
        assert head(x, mask).dtype == torch.bfloat16
    with train_autocast("fp32", "cpu"):
        assert head(x, mask).dtype == torch.float32
    targets = Targets.from_cohort(cohort)
    train, val = np.arange(0, 24), np.arange(24, len(cohort))
    scores = {}
    for precision in ("fp32", "bf16"):
        params = FitParams("abmil", epochs=4, batch_size=4, n_tiles=12, seed=2, precision=precision)
        res = fit(store, targets, train, params, val_idx=val)
        scores[precision] = predict(res.model, store, val, "classification", 12, "random", 2, 4,
                                    precision=precision)
    diff = np.abs(scores["bf16"] - scores["fp32"])
    assert diff.max() > 0  # bf16 rounding did happen
    assert diff.max() < 0.05  # and training followed the same path


def test_batched_and_loop_agree_under_bf16_and_the_run_records_it(cohort_store, tmp_path, monkeypatch):
    _, cohort, store = cohort_store
    monkeypatch.setattr(encoder_base, "resolve_precision", lambda requested, default, device: requested)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=1)
    out = {}
    for engine in ("batched", "loop"):
        settings = CVSettings("classification", "abmil", mode="kfold", epochs=3, batch_size=4, n_tiles=12,
                              precision="bf16", engine=engine)
        out[engine] = run_cv(cohort, store, plan, settings, tmp_path / engine)
        summary = json.loads((tmp_path / engine / "summary.json").read_text())
        assert summary["precision"] == "bf16"
    # the same per-model arithmetic with bf16 rounding in different matmul kernels (bmm vs mm)
    np.testing.assert_allclose(out["batched"].predictions.score, out["loop"].predictions.score, atol=2e-2)


def test_a_device_without_native_bf16_trains_in_fp32_and_says_so(cohort_store, tmp_path, monkeypatch):
    from loguru import logger

    _, cohort, store = cohort_store
    monkeypatch.setattr(encoder_base, "resolve_precision", lambda requested, default, device: "fp32")
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        settings = CVSettings("classification", "meanpool", mode="kfold", epochs=1, batch_size=4, n_tiles=12,
                              precision="bf16")
        run_cv(cohort, store, make_fold_plan(cohort, 2, 0, 1, seed=1), settings, tmp_path / "run")
    finally:
        logger.remove(sink)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["precision"] == "fp32"
    assert any("no native bf16" in m for m in messages)


def test_reference_protocol_trains_in_fp32():
    settings, changes = apply_protocol(CVSettings("classification", "abmil", precision="bf16",
                                                  protocol="reference"))
    assert settings.precision == "fp32" and any(c.startswith("precision='fp32'") for c in changes)


@pytest.mark.parametrize("model", ["abmil", "chowder", "dsmil", "meanpool"])
@pytest.mark.parametrize("packed", [True, False])
def test_bf16_input_cast_once_equals_autocast_cast(model, packed):
    """run_models casts the batch to bfloat16 once, before repeating it per row of models: the
    outputs equal autocast casting the repeated float32 batch in the heads' first layers, bit for bit."""
    from wsi_mil.models.base import trusted_inputs
    from wsi_mil.training.stacked import StackedHeads
    from wsi_mil.training.stacked_batches import StackedBatch, fold_rows, repeat_rows, run_models

    torch.manual_seed(0)
    rows, streams, bags, dim = 2, 3, 4, 16
    stacked = StackedHeads([create_model(model, dim, 2) for _ in range(rows * streams)])
    sizes = np.array([[3, 5, 1, 4], [2, 2, 6, 3], [5, 1, 1, 2]])
    if packed and stacked.packable:
        x = torch.zeros(streams, int(sizes.sum(1).max()), dim)
        for s in range(streams):
            x[s, : sizes[s].sum()] = torch.randn(int(sizes[s].sum()), dim)
        batch = StackedBatch(x, sizes=sizes)
    else:
        mask = torch.arange(6) < torch.from_numpy(sizes)[..., None]  # (S, B, N)
        batch = StackedBatch(torch.randn(streams, bags, 6, dim) * mask[..., None], mask=mask)
    seen = []  # the dtype of what each stacked Linear receives
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
             for m in stacked.modules() if type(m).__name__ == "FoldedLinear"]
    with trusted_inputs():
        out = run_models(stacked, batch, (0, rows), (0, streams), streams, "bf16")
        assert seen and set(seen) == {torch.bfloat16}  # the first layers too: the batch came cast
        for h in hooks:
            h.remove()
        assert batch.input("bf16").dtype == torch.bfloat16 and batch.input("fp32") is batch.x
        with train_autocast("bf16", "cpu"):  # the float32 batch, cast by autocast in each first layer
            if batch.sizes is None:
                ref = stacked(fold_rows(batch.x, rows), fold_rows(batch.mask, rows))
            else:
                ref = stacked.forward_packed(repeat_rows(batch.x, rows), batch.packing(rows))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.reshape(ref.shape), ref)
